"""A noisy cubic: y = x^3 - 2x^2 + x - 2 + N(0, 1) for x uniform on [-10, 10]."""
import numpy as np

from datasets import Dataset


def cubic(x):
    return x**3 - 2 * x**2 + x - 2


def load(num_train=1000, num_test=1000, seed=0) -> Dataset:
    """`num_train` and `num_test` points drawn with `seed`.

    Inputs are kept in their natural units and standardised on the device; targets are stored
    standardised (the loss is in those units) and `decode_outputs` maps predictions back. The
    statistics are the training split's; the test split is an independent draw.
    """
    rng = np.random.default_rng(seed)

    def draw(n):
        x = rng.uniform(-10, 10, size=(n, 1))
        return x, cubic(x) + rng.normal(0, 1, size=(n, 1))

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    x_mean, x_std = np.float32(x_train.mean()), np.float32(x_train.std())
    y_mean, y_std = y_train.mean(), y_train.std()

    def split(x, y):
        return {"inputs": x.astype(np.float32), "targets": ((y - y_mean) / y_std).astype(np.float32)}

    return Dataset(train=split(x_train, y_train), test=split(x_test, y_test),
                   prepare_inputs=lambda x: (x - x_mean) / x_std,
                   decode_outputs=lambda y: y * y_std + y_mean)
