"""XOR: the four points of the classic two-input MLP; train and test are the same four."""
import numpy as np

from datasets import Dataset


def load() -> Dataset:
    inputs = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    targets = np.array([[0], [1], [1], [0]], np.float32)
    split = {"inputs": inputs, "targets": targets}
    return Dataset(train=split, test=split)
