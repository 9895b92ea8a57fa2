"""The CNN of models/cnn.py written in Flax NNX: conv blocks (conv, optional BatchNorm, ReLU, pool),
then a dense head. The same layers, initialisers and BatchNorm settings, so the same accuracy and
speed (configs/mnist_cnn_nnx.py)."""
from typing import Sequence

import jax.numpy as jnp
from flax import nnx


class CNN(nnx.Module):
    """`image_shape`: (height, width, channels) of the inputs, which NNX layers are built for."""

    def __init__(self, *, rngs: nnx.Rngs, image_shape: Sequence[int] = (28, 28, 1),
                 conv_features: Sequence[int] = (32, 64), kernel_size: int = 3,
                 batch_norm: bool = True, pool: str = "avg", dense_features: Sequence[int] = (256,),
                 num_classes: int = 10, dropout_rate: float = 0.0, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        """`dtype`, `param_dtype`: of computation and parameters (set by config.precision)."""
        sizes = (*image_shape, *conv_features, *dense_features, num_classes, kernel_size)
        if len(image_shape) != 3 or not all(isinstance(f, int) and f > 0 for f in sizes):
            raise ValueError("image_shape (height, width, channels), conv_features, dense_features, "
                             "num_classes and kernel_size must be positive integers")
        if pool not in ("avg", "max"):
            raise ValueError(f"pool={pool!r}; use 'avg' or 'max'")
        if not 0 <= dropout_rate < 1:
            raise ValueError(f"dropout_rate={dropout_rate}; use a value in [0, 1)")
        self.dtype, self.pool = dtype, nnx.avg_pool if pool == "avg" else nnx.max_pool
        height, width, channels = image_shape
        self.convs, self.norms = nnx.List(), nnx.List()
        for features in conv_features:
            self.convs.append(nnx.Conv(channels, features, (kernel_size, kernel_size),
                                       use_bias=not batch_norm, dtype=dtype,
                                       param_dtype=param_dtype, rngs=rngs))
            # BatchNorm in float32 whatever the dtype: bfloat16 statistics cost accuracy.
            self.norms.append(nnx.BatchNorm(features, momentum=0.9, dtype=jnp.float32,
                                            param_dtype=param_dtype, rngs=rngs)
                              if batch_norm else None)
            channels, height, width = features, height // 2, width // 2
        self.dense, inputs = nnx.List(), height * width * channels
        for features in dense_features:
            self.dense.append(nnx.Linear(inputs, features, dtype=dtype, param_dtype=param_dtype,
                                         rngs=rngs))
            inputs = features
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.head = nnx.Linear(inputs, num_classes, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)

    def __call__(self, inputs):
        x = inputs.astype(self.dtype)  # (batch, height, width, channels)
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)
            if norm is not None:
                x = norm(x).astype(self.dtype)
            x = self.pool(nnx.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for dense in self.dense:
            x = self.dropout(nnx.relu(dense(x)))
        return self.head(x).astype(jnp.float32)


Model = CNN
