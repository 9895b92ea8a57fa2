"""A multi-layer perceptron."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "gelu": nn.gelu, "sigmoid": nn.sigmoid}


class MLP(nn.Module):
    """Dense layers of `features` sizes; `activation` between them, none after the last.

    `init_gain` > 0 draws kernels from N(0, (gain / sqrt(fan_in))^2), the classic initialisation
    (5/3 is tanh's gain); 0 keeps Flax's default (LeCun normal).
    """
    features: Sequence[int] = (512, 512, 10)
    activation: str = "relu"
    init_gain: float = 0.0
    dtype: str = "float32"  # computation (set by config.precision)
    param_dtype: str = "float32"  # parameters (set by config.precision)

    def __post_init__(self):
        if not all(isinstance(f, int) and f > 0 for f in self.features):
            raise ValueError(f"features={self.features!r}; use a sequence of positive layer sizes")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; use one of {sorted(ACTIVATIONS)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        del train  # no dropout or BatchNorm here
        kernel_init = (nn.initializers.variance_scaling(self.init_gain**2, "fan_in", "normal")
                       if self.init_gain else nn.linear.default_kernel_init)
        x = inputs.reshape(inputs.shape[0], -1).astype(self.dtype)
        for i, size in enumerate(self.features):
            x = nn.Dense(size, kernel_init=kernel_init, dtype=self.dtype,
                         param_dtype=self.param_dtype)(x)
            if i < len(self.features) - 1:
                x = ACTIVATIONS[self.activation](x)
        return x.astype(jnp.float32)  # the loss in float32


Model = MLP
