"""Augmentation of training images on the host, in the pipeline's workers, and normalisation on
the device.

An example's randomness comes from the generator it is handed, drawn from (seed, epoch, index)
by the pipeline, so neither the worker that reads it nor the number of workers changes a bit.
"""
import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random crop after zero padding by `crop_padding` pixels, then a random horizontal flip,
    then `transform(example, rng) -> example` of your own; examples are {"inputs": (height,
    width, channels) image, "targets": ...}."""
    crop_padding: int = 0
    flip: bool = False
    transform: Callable | None = None

    def __call__(self, example, rng: np.random.Generator):
        image = example["inputs"]
        if self.crop_padding:
            pad = self.crop_padding
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
            top, left = rng.integers(0, 2 * pad + 1, size=2)
            image = padded[top:top + image.shape[0], left:left + image.shape[1]]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        example = {**example, "inputs": np.ascontiguousarray(image)}
        return self.transform(example, rng) if self.transform else example


def normalized(prepare_inputs, mean, std):
    """prepare_inputs followed by (x - mean) / std per channel (in prepare_inputs' units)."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return lambda inputs: (prepare_inputs(inputs) - mean) / std
