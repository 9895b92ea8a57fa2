"""Data sets. A data set module exposes `load(**fields) -> Dataset`, the fields of `config.dataset`
(all but `name`) as keyword arguments; the trainer finds it by name (trainer/parts.py).

A split is either in-memory NumPy arrays, {"inputs": ..., "targets": ...} with examples along the
first axis (MNIST, XOR, the polynomial: the fused on-device path needs these), or a `Source`,
read example by example by the streaming pipeline (TFDS, ArrayRecord, image folders). Either way
examples are in their raw form (images NHWC uint8); `prepare_inputs` turns raw inputs into model
inputs inside the jitted step, on the device.
"""
import dataclasses
import threading
from typing import Callable, Protocol, Union

import numpy as np


class DataError(Exception):
    """Data that cannot be found or read; the message says which files and how to fix it."""


OPENING = threading.Lock()  # see Source


class Source(Protocol):
    """Random access to a split, example by example. It is pickled into the pipeline's worker
    processes: open files lazily there, not in __init__, and under `OPENING`: Grain's threads in a
    worker all read at once as it starts, and the first import of a reading library from several
    threads at once can deadlock (TFDS and etils import lazily, under locks of their own)."""

    def __len__(self) -> int:
        ...

    def __getitem__(self, index: int) -> dict:
        """{"inputs": array, "targets": array or number} of example `index`, decoded.
        A source may also offer `__getitems__(indices)`, a list of them read at once, and
        `num_classes`, the number of classes of its integer labels where it knows it (the
        trainer checks that a classifier has an output for each)."""


Split = Union[dict, Source]


def identity(inputs):
    return inputs


def scale_to_unit(images):
    """uint8 images to float32 in [0, 1]; traced inside the step, so it runs on the device."""
    return images.astype(np.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    prepare_inputs: Callable = identity  # raw inputs -> model inputs; traced inside the step
    decode_outputs: Callable = identity  # model outputs (and targets) -> natural units
    # A split of the data set's own for choosing the model (a TFDS `validation`, a `val/`
    # folder); else config.validation.fraction carves one from train (trainer/setup.py).
    validation: Union[Split, None] = None
    tokenizer: object = None  # text data sets' (datasets/tokenizers.py): vocabulary, decoding
    # (seed, epoch) -> the training rows of that epoch in order, as many as train has: for data
    # that orders its own (a mixture of sources by weight, datasets/text.py). None: a permutation
    # drawn from (seed, epoch) (trainer/batching.py).
    order: Union[Callable, None] = None

    @property
    def num_train(self) -> int:
        return num_examples(self.train)


def in_memory(split) -> bool:
    return isinstance(split, dict)


def num_examples(split) -> int:
    return len(split["targets"]) if in_memory(split) else len(split)


def examples(split, indices) -> dict:
    """The examples at `indices` as arrays, {"inputs": (n, ...), "targets": (n, ...)}."""
    if in_memory(split):
        return {name: array[np.asarray(indices)] for name, array in split.items()}
    read = [split[int(i)] for i in indices]
    return {name: np.stack([np.asarray(e[name]) for e in read]) for name in ("inputs", "targets")}


def validation_indices(count, fraction, seed):
    """The examples of a split of `count` that a validation split of `fraction` takes, sorted:
    drawn with `seed` from the count alone, so the same for every device, process, worker count
    and path."""
    held = np.random.default_rng([seed, count]).permutation(count)[:round(fraction * count)]
    return np.sort(held)


def subset(split, indices):
    """The examples at `indices` of a split, as a split of their own (the same kind)."""
    indices = np.asarray(indices, dtype=np.int64)
    if in_memory(split):
        return {name: array[indices] for name, array in split.items()}
    return Subset(split, indices)


@dataclasses.dataclass(frozen=True, eq=False)
class Subset:
    """Some examples of a streamed split, by index: a validation split carved from train, the
    training examples left, the first K of a split. Pickled into the workers with its source."""
    source: Source
    indices: np.ndarray

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.source[int(self.indices[index])]

    def __getitems__(self, indices):
        chosen = [int(self.indices[i]) for i in indices]
        if hasattr(self.source, "__getitems__"):
            return self.source.__getitems__(chosen)
        return [self.source[i] for i in chosen]

    @property
    def num_classes(self):
        return getattr(self.source, "num_classes", None)


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """In-memory arrays read example by example, for the pipeline (augmentation on the host)."""
    split: dict

    def __len__(self):
        return num_examples(self.split)

    def __getitem__(self, index):
        return {name: array[index] for name, array in self.split.items()}
