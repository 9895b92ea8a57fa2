"""A multi-layer perceptron."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from models.remat import check_remat, remat_policy

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "gelu": nn.gelu, "sigmoid": nn.sigmoid}
NAMES = ("dense",)  # each hidden layer's output before its activation (config.remat)


class MLP(nn.Module):
    """Dense layers of `features` sizes; `activation` between them, none after the last.

    `init_gain` > 0 draws kernels from N(0, (gain / sqrt(fan_in))^2), the classic initialisation
    (5/3 is tanh's gain); 0 keeps Flax's default (LeCun normal).

    `remat` (config.remat, models/remat.py) applies to each hidden layer, Dense and activation: a
    layer's output is the next one's input and kept whatever the policy, so what it can spare is
    the pre-activation (measured in docs/speed.md#remat). Layers of different widths are not
    scanned: the parameters are Dense_0, Dense_1, ... whatever `remat` says.
    """
    features: Sequence[int] = (512, 512, 10)
    activation: str = "relu"
    init_gain: float = 0.0
    dtype: str = "float32"  # computation (set by config.precision)
    param_dtype: str = "float32"  # parameters (set by config.precision)
    remat: str | tuple = "none"  # what each hidden layer keeps for the backward pass

    def __post_init__(self):
        if not all(isinstance(f, int) and f > 0 for f in self.features):
            raise ValueError(f"features={self.features!r}; use a sequence of positive layer sizes")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; use one of {sorted(ACTIVATIONS)}")
        check_remat(self.remat, NAMES, "the MLP")
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        del train  # no dropout or BatchNorm here
        kernel_init = (nn.initializers.variance_scaling(self.init_gain**2, "fan_in", "normal")
                       if self.init_gain else nn.linear.default_kernel_init)
        def hidden(dense, x):
            return ACTIVATIONS[self.activation](checkpoint_name(dense(x), "dense"))

        if self.remat != "none":
            hidden = nn.remat(hidden, policy=remat_policy(self.remat))
        x = inputs.reshape(inputs.shape[0], -1).astype(self.dtype)
        *widths, outputs = self.features
        for i, size in enumerate(widths):
            x = hidden(nn.Dense(size, kernel_init=kernel_init, dtype=self.dtype,
                                param_dtype=self.param_dtype, name=f"Dense_{i}"), x)
        x = nn.Dense(outputs, kernel_init=kernel_init, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=f"Dense_{len(widths)}")(x)
        return x.astype(jnp.float32)  # the loss in float32


Model = MLP
