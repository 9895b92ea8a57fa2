"""Writes ArrayRecord shards for the streaming pipeline (datasets/array_record.py), from an image
folder (`<split>/<class>/*.png|jpg`) or from the four MNIST IDX files, with a progress bar.

    python scripts/prepare_data.py --from_mnist=../shared/data/mnist --out=data/mnist_records
    python scripts/prepare_data.py --from_images=data/photos --out=data/photo_records --shards=8
    python scripts/prepare_data.py --from_mnist=../shared/data/mnist --out=DIR --encoding=raw

--encoding: `png` (the default; an image folder's files are kept as they are, PNG or JPEG) or
`raw`, the pixels as training reads them: nothing for the workers to decode. MNIST takes 21 MB raw
against 25 MB as PNG (ArrayRecord compresses its chunks either way) and reads 7x faster
(docs/speed.md); large photos take far more space raw than as JPEG.

Then train on them: --config.dataset.name=array_record --config.dataset.data_dir=OUT. The shards
are written to a temporary folder renamed to --out when complete; an --out that exists is refused.
"""
import os
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

import numpy as np  # pylint: disable=wrong-import-position
import tqdm  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position
from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=wrong-import-position

from datasets import DataError, array_record, image_folder, images, mnist  # pylint: disable=wrong-import-position
from trainer.errors import fail  # pylint: disable=wrong-import-position

FROM_MNIST = flags.DEFINE_string("from_mnist", None, "A folder of the four MNIST IDX files.")
FROM_IMAGES = flags.DEFINE_string("from_images", None, "An image folder: <split>/<class>/*.png.")
OUT = flags.DEFINE_string("out", None, "The folder to write (it must not exist).")
SHARDS = flags.DEFINE_integer("shards", 4, "Shards per split.", lower_bound=1)
SPLITS = flags.DEFINE_list("splits", ["train", "test"], "Image folder: the split folders.")
ENCODING = flags.DEFINE_enum("encoding", "png", ["png", "raw"],
                             "How images are stored: png (an image folder's own files) or raw "
                             "pixels: nothing to decode, about 7x faster to read; MNIST takes 21 "
                             "MB raw and 25 MB as PNG, photos far more raw than as JPEG.")


def mnist_records(folder, raw):
    """{split: (count, records)} of the IDX files, in their order."""
    for split, files in mnist.FILES.items():
        arrays = mnist.read_idx_split(folder, *files)
        yield split, len(arrays["targets"]), (
            array_record.encode(image if raw else images.encode_png(image), label)
            for image, label in zip(arrays["inputs"], arrays["targets"]))


def folder_records(folder, splits, raw):
    """{split: (count, records)} of an image folder: the files' own bytes, not decoded again, or
    (raw) their pixels as training reads them."""
    data = image_folder.load(folder, *splits)
    for split, source in zip(splits, (data.train, data.test)):
        yield split, len(source), (
            array_record.encode(source[i]["inputs"] if raw else
                                pathlib.Path(source.files[i]).read_bytes(), source.labels[i])
            for i in range(len(source)))


def write_split(out, split, count, records, shards):
    """Contiguous shards: example i of the split is record i of the shards in name order."""
    bounds = np.linspace(0, count, shards + 1).astype(int)
    records = iter(records)
    with tqdm.tqdm(total=count, desc=split, unit="example") as bar:
        for shard in range(shards):
            writer = ArrayRecordWriter(
                os.path.join(out, f"{split}-{shard:05d}-of-{shards:05d}.array_record"),
                "group_size:1")  # one record a chunk: fast reads by index
            for _ in range(bounds[shard], bounds[shard + 1]):
                writer.write(next(records))
                bar.update(1)
            writer.close()


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; flags are written --name=value.")
    if bool(FROM_MNIST.value) == bool(FROM_IMAGES.value) or not OUT.value:
        fail("give --out=FOLDER and one of --from_mnist=FOLDER or --from_images=FOLDER.")
    out = os.path.abspath(OUT.value)
    if os.path.exists(out):
        fail(f"--out={OUT.value} exists; give a new folder (nothing was written).")
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        raw = ENCODING.value == "raw"
        splits = (mnist_records(FROM_MNIST.value, raw) if FROM_MNIST.value
                  else folder_records(FROM_IMAGES.value, SPLITS.value, raw))
        for split, count, records in splits:
            os.makedirs(partial, exist_ok=True)
            write_split(partial, split, count, records, SHARDS.value)
    except DataError as e:
        shutil.rmtree(partial, ignore_errors=True)
        fail(str(e))
    os.rename(partial, out)
    print(out)


if __name__ == "__main__":
    app.run(main)
