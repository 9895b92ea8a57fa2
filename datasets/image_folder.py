"""A folder of images, one subfolder per class: `data_dir/<split>/<class>/*.png|jpg|jpeg`.

Splits: train/ and test/, and a validation split of its own where data_dir holds val/ (another
name: `validation_split`; "" for none).

Classes are the subfolder names of the training split, sorted (label 0 is the first). Images are
decoded with Pillow in the pipeline's workers, to (height, width, channels) uint8: grey images
get one channel, the others three (RGB); all must have one size, or give `image_size`.
"""
import concurrent.futures
import dataclasses
import os

import numpy as np

from datasets import DataError, Dataset, images, scale_to_unit

EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class ImageFolderSource:
    files: tuple
    labels: np.ndarray
    channels: int
    size: tuple  # (height, width)
    num_classes: int | None = None  # the class folders of the training split

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        return {"inputs": images.decode(self.files[index], self.channels, self.size,
                                        self.files[index]),
                "targets": self.labels[index]}


def list_split(folder, classes):
    """(files, labels) of a split folder, classes in the given order."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder} is not a folder. config.dataset.data_dir must hold one folder "
                        f"per split (train, test), each with one subfolder per class.")
    files, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        found = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(EXTENSIONS)) if (
            os.path.isdir(class_dir)) else []
        if not found:
            raise DataError(f"the class folder {class_dir} holds no images ({', '.join(EXTENSIONS)}). "
                            f"Add images to it or remove it.")
        files += [os.path.join(class_dir, f) for f in found]
        labels += [label] * len(found)
    return tuple(files), np.array(labels, np.int32)


def load(data_dir, train_split="train", test_split="test", validation_split="val",
         image_size=None) -> Dataset:
    if not os.path.isdir(data_dir):
        raise DataError(f"config.dataset.data_dir={data_dir!r} is not a folder. Point it at the "
                        f"folder that holds {train_split}/ and {test_split}/.")
    train_dir = os.path.join(data_dir, train_split)
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(
        os.path.join(train_dir, d))) if os.path.isdir(train_dir) else []
    if not classes:
        raise DataError(f"{train_dir} has no class folders: it must hold one subfolder of images "
                        f"per class.")
    own = validation_split and os.path.isdir(os.path.join(data_dir, validation_split))
    splits = {split: list_split(os.path.join(data_dir, split), classes)
              for split in (train_split, test_split, *([validation_split] if own else []))}
    # Every header is read now (in threads), so that a file that is no image stops the run before
    # anything is written, not in the middle of an epoch.
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        headers = {split: list(pool.map(lambda path: images.header(path, path), files))
                   for split, (files, _) in splits.items()}
    first_file, (channels, first_size) = splits[train_split][0][0], headers[train_split][0]
    size = tuple(image_size) if image_size else first_size
    for split, (files, _) in splits.items():
        for path, (_, other) in zip(files, headers[split]):
            if not image_size and other != size:
                raise DataError(f"{path} is {other[1]}x{other[0]} pixels and {first_file} "
                                f"{size[1]}x{size[0]}: give config.dataset.image_size="
                                f"(HEIGHT, WIDTH) to resize them to one size.")
    train, test, validation = (
        ImageFolderSource(*splits[split], channels, size, len(classes)) if split in splits else None
        for split in (train_split, test_split, validation_split))
    return Dataset(train=train, test=test, validation=validation, prepare_inputs=scale_to_unit)
