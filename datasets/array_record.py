"""ArrayRecord shards of serialized examples: `data_dir/<split>-*.array_record`.

Each record is one example, a msgpack map {"image": PNG or JPEG bytes, "label": int};
scripts/prepare_data.py writes them from an image folder or the MNIST IDX files. Records are read
by index (random access) and decoded in the pipeline's workers.
"""
import glob
import os

import msgpack
import numpy as np

from datasets import DataError, Dataset, images, scale_to_unit


def encode(image_bytes, label):
    """One record: an encoded image (PNG or JPEG bytes) and its integer label."""
    return msgpack.packb({"image": image_bytes, "label": int(label)})


def decode(record, channels):
    example = msgpack.unpackb(record)
    return {"inputs": images.decode(example["image"], channels, None, "in an ArrayRecord file"),
            "targets": np.int32(example["label"])}


class ArrayRecordSource:
    """Random access over the shards of a split; each process opens its own reader."""

    def __init__(self, files):
        self.files = tuple(files)
        self.reader = None
        self.length = len(self.open())
        self.channels, _ = images.header(msgpack.unpackb(self.reader[0])["image"], self.files[0])

    def open(self):
        if self.reader is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource  # pylint: disable=g-import-not-at-top
            self.reader = ArrayRecordDataSource(list(self.files))
        return self.reader

    def __getstate__(self):
        return {**self.__dict__, "reader": None}  # opened again in the worker

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return decode(self.open()[index], self.channels)

    def __getitems__(self, indices):
        """Many records in one read (the pipeline reads a batch at a time)."""
        return [decode(record, self.channels) for record in self.open().__getitems__(indices)]


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
