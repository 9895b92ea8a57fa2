"""ArrayRecord shards of serialized examples: `data_dir/<split>-*.array_record`.

Each record is one example, a msgpack map: {"image": PNG or JPEG bytes, "label": int}, or, where
reading speed matters more than disk space, the raw pixels, {"pixels": uint8 bytes, "shape":
[height, width, channels], "label": int}, which need no decoding. scripts/prepare_data.py writes
them from an image folder or the MNIST IDX files. Records are read by index (random access) and
decoded in the pipeline's workers.
"""
import glob
import os

import msgpack
import numpy as np

from datasets import OPENING, DataError, Dataset, images, scale_to_unit


def encode(image, label):
    """One record: `image` as encoded bytes (PNG or JPEG), or as a (height, width, channels) uint8
    array, stored as its raw pixels; and its integer label."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"a raw image is a (height, width, channels) uint8 array, not "
                             f"{image.dtype} of shape {image.shape}")
        return msgpack.packb({"pixels": image.tobytes(), "shape": list(image.shape),
                              "label": int(label)})
    return msgpack.packb({"image": image, "label": int(label)})


def decode(record, channels):
    example = msgpack.unpackb(record)
    if "pixels" in example:
        inputs = np.frombuffer(example["pixels"], np.uint8).reshape(example["shape"])
    else:
        inputs = images.decode(example["image"], channels, None, "in an ArrayRecord file")
    return {"inputs": inputs, "targets": np.int32(example["label"])}


def channels_of(record, name):
    example = msgpack.unpackb(record)
    if "pixels" in example:
        return example["shape"][-1]
    return images.header(example["image"], name)[0]


def records_in(path):
    from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=g-import-not-at-top
    reader = ArrayRecordReader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


class ArrayRecordSource:
    """Random access over the shards of a split; each process opens its own reader."""

    def __init__(self, files):
        self.files = tuple(files)
        self.reader = None
        self.length = len(self.open())
        self.channels = channels_of(self.reader[0], self.files[0])
        self.ends = np.cumsum([records_in(path) for path in self.files])

    def open(self):
        if self.reader is None:  # every read asks: the lock only while it is not open yet
            with OPENING:
                if self.reader is None:
                    from array_record.python.array_record_data_source import ArrayRecordDataSource  # pylint: disable=g-import-not-at-top
                    self.reader = ArrayRecordDataSource(list(self.files))
        return self.reader

    def __getstate__(self):
        return {**self.__dict__, "reader": None}  # opened again in the worker

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        """Many records in one read (the pipeline reads a batch at a time)."""
        try:
            return [decode(record, self.channels) for record in self.open().__getitems__(indices)]
        except Exception as e:  # pylint: disable=broad-except  (Riegeli's or msgpack's: changed)
            shards = sorted({self.shard_of(i) for i in indices})
            raise DataError(f"cannot read records of the ArrayRecord shard(s) {', '.join(shards)} "
                            f"({str(e).splitlines()[0][:200]}): cut short or changed since they "
                            f"were written? Write them again with scripts/prepare_data.py.") from e

    def shard_of(self, index):
        """The file that holds record `index` (the shards hold consecutive records)."""
        return self.files[int(np.searchsorted(self.ends, index, side="right"))]


def split_files(data_dir, split):
    files = sorted(glob.glob(os.path.join(data_dir, f"{split}-*.array_record")))
    if not files:
        raise DataError(f"no ArrayRecord shards {split}-*.array_record in config.dataset.data_dir="
                        f"{data_dir!r}. Write them with scripts/prepare_data.py.")
    return files


def load(data_dir, train_split="train", test_split="test") -> Dataset:
    if not os.path.isdir(data_dir):
        raise DataError(f"config.dataset.data_dir={data_dir!r} is not a folder. Point it at the "
                        f"folder of ArrayRecord shards.")
    try:
        train, test = (ArrayRecordSource(split_files(data_dir, split))
                       for split in (train_split, test_split))
    except (OSError, ValueError, msgpack.UnpackException) as e:
        raise DataError(f"the ArrayRecord shards in {data_dir} cannot be read ({e}). Write them "
                        f"again with scripts/prepare_data.py.") from e
    return Dataset(train=train, test=test, prepare_inputs=scale_to_unit)
