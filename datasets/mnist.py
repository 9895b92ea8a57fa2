"""MNIST from a folder of the four IDX files, else from TensorFlow Datasets.

Resolution order, first that applies:
  1. `data_dir`: a folder with the four standard IDX files (gzip-compressed or not).
  2. A TFDS `mnist` already prepared in `tfds_data_dir` (or TFDS's default folder), read
     with `tfds.data_source`, which needs no TensorFlow.
  3. Where TensorFlow is installed: TFDS downloads and prepares it (needs the network).
Images are NHWC, (N, 28, 28, 1), and stay uint8 (47 MB for the training split); `prepare_inputs`
scales them to [0, 1] on the device.
"""
import gzip
import importlib.util
import os

import numpy as np

from datasets import DataError, Dataset, scale_to_unit
from datasets.tfds import prepared_builder

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: uint8 data with 3 dimensions / 1 dimension


def load(data_dir="", tfds_data_dir="") -> Dataset:
    if data_dir:
        splits = {name: read_idx_split(data_dir, *files) for name, files in FILES.items()}
    else:
        splits = read_tfds(tfds_data_dir or None)
    return Dataset(train=splits["train"], test=splits["test"], prepare_inputs=scale_to_unit)


def find_file(folder, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise DataError(
        f"MNIST file {stem}.gz (or {stem}) is missing from config.dataset.data_dir={folder!r}. "
        f"The folder needs the four IDX files: {', '.join(s for pair in FILES.values() for s in pair)}.")


def read_idx(path, magic, item_shape_dims):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for truncated or non-gzip files
        raise DataError(f"cannot read MNIST file {path}: {e}. Replace it with a good copy.") from e
    header_size = 4 + 4 * (1 + item_shape_dims)
    if len(data) < header_size or int.from_bytes(data[:4], "big") != magic:
        raise DataError(
            f"{path} is not an IDX file of the expected kind (magic number "
            f"{int.from_bytes(data[:4], 'big') if len(data) >= 4 else 'missing'}, expected {magic}). "
            f"Check that the file is the right one of the four MNIST files.")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(1 + item_shape_dims))
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{path} is truncated or damaged: {len(data)} bytes for shape {shape}, "
                        f"expected {expected}. Replace it with a good copy.")
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def read_idx_split(folder, images_stem, labels_stem):
    if not os.path.isdir(folder):
        raise DataError(f"config.dataset.data_dir={folder!r} is not a folder. Point it at the folder "
                        f"that holds the four MNIST IDX files.")
    images = read_idx(find_file(folder, images_stem), IMAGES_MAGIC, 2)
    labels = read_idx(find_file(folder, labels_stem), LABELS_MAGIC, 0)
    if len(images) != len(labels):
        raise DataError(f"{images_stem} has {len(images)} images but {labels_stem} has "
                        f"{len(labels)} labels in {folder}. Replace them with a matching pair.")
    return {"inputs": images[..., None], "targets": labels.astype(np.int32)}  # NHWC, as TFDS has it


def read_tfds(tfds_data_dir):
    ways = ("Give it one of three ways: (1) config.dataset.data_dir=FOLDER with the four IDX "
            "files (train-images-idx3-ubyte.gz, ...); (2) a TFDS 'mnist' already prepared in "
            "array_record format under config.dataset.tfds_data_dir (or TFDS's default folder); "
            "(3) install TensorFlow (pip install -e .[tf]) on a machine with internet access, so "
            "TFDS can download and prepare it.")
    try:
        prepared_builder("mnist", tfds_data_dir, ways)
    except DataError:
        if importlib.util.find_spec("tensorflow") is None:
            raise
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        tfds.builder("mnist", data_dir=tfds_data_dir).download_and_prepare(
            file_format="array_record")
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    sources = tfds.data_source("mnist", data_dir=tfds_data_dir, download=False)
    return {split: records_to_arrays(sources[split]) for split in ("train", "test")}


def records_to_arrays(source):
    records = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(r["image"], np.uint8).reshape(28, 28, 1) for r in records])
    labels = np.array([r["label"] for r in records], np.int32)
    return {"inputs": images, "targets": labels}
