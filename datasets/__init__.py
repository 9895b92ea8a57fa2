"""Data sets, found by name: `get_dataset(config.dataset)`.

A data set module exposes `load(config) -> Dataset`. Splits are in-memory NumPy arrays in their raw
form (MNIST stays uint8); `prepare_inputs` turns raw inputs into model inputs and runs inside the
jitted step, on the device, so raw arrays are what crosses to the device.
"""
import dataclasses
import importlib
from typing import Callable

import numpy as np

# Short names for the data sets that ship with the project; anything else is "module:function".
REGISTRY = {
    "mnist": "datasets.mnist:load",
    "xor": "datasets.synthetic:load_xor",
    "polynomial": "datasets.synthetic:load_polynomial",
}


class DataError(Exception):
    """Data that cannot be found or read; the message says which files and how to fix it."""


def identity(inputs):
    return inputs


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: dict[str, np.ndarray]  # {"inputs": ..., "targets": ...}, first axis = examples
    test: dict[str, np.ndarray]
    prepare_inputs: Callable = identity  # raw inputs -> model inputs; traced inside the step
    decode_outputs: Callable = identity  # model outputs -> the targets' natural units

    @property
    def num_train(self) -> int:
        return len(self.train["targets"])


def get_dataset(config) -> Dataset:
    name = config.name
    target = REGISTRY.get(name, name)
    if ":" not in target:
        raise DataError(
            f"config.dataset.name={name!r} is not a known data set. Use one of "
            f"{sorted(REGISTRY)}, or 'package.module:function' for your own loader.")
    module_name, function_name = target.split(":", 1)
    try:
        loader = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as e:
        raise DataError(f"config.dataset.name={name!r}: cannot import {target!r} ({e}).") from e
    return loader(config)
