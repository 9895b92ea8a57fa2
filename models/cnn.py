"""A convolutional network: conv blocks (conv, optional BatchNorm, ReLU, pool), then a dense head."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class CNN(nn.Module):
    conv_features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    batch_norm: bool = True
    pool: str = "avg"  # "avg" or "max", 2x2 with stride 2
    dense_features: Sequence[int] = (256,)
    num_classes: int = 10
    dropout_rate: float = 0.0
    axis_name: str | None = None  # set by the trainer under pmap: BatchNorm statistics over devices
    dtype: str = "float32"  # computation (set by config.precision)
    param_dtype: str = "float32"  # parameters (set by config.precision)

    def __post_init__(self):
        sizes = (*self.conv_features, *self.dense_features, self.num_classes, self.kernel_size)
        if not all(isinstance(f, int) and f > 0 for f in sizes):
            raise ValueError("conv_features, dense_features, num_classes and kernel_size must be "
                             "positive integers")
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool={self.pool!r}; use 'avg' or 'max'")
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate={self.dropout_rate}; use a value in [0, 1)")
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        x = inputs.astype(self.dtype)  # (batch, height, width, channels)
        pool = nn.avg_pool if self.pool == "avg" else nn.max_pool
        for features in self.conv_features:
            x = nn.Conv(features, (self.kernel_size, self.kernel_size),
                        use_bias=not self.batch_norm, dtype=self.dtype,
                        param_dtype=self.param_dtype)(x)
            if self.batch_norm:  # in float32 whatever the dtype: bfloat16 statistics cost accuracy
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=jnp.float32,
                                 param_dtype=self.param_dtype, axis_name=self.axis_name
                                 )(x).astype(self.dtype)
            x = pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for features in self.dense_features:
            x = nn.relu(nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype
                        )(x).astype(jnp.float32)


Model = CNN
