"""The transformer language model of models/transformer.py written in Flax NNX: the same layers,
parameter shapes, initialisers and sharding annotations, and the same masking, rotary embedding and
key-value cache (the helpers of models/transformer.py), so the same quality. Inputs, outputs and
the cache are as described there.

Parameter names are NNX attribute paths: params/embed/embedding, params/blocks/0/attention_norm/
scale, params/blocks/0/attention/{query,key,value,out}/kernel, params/blocks/0/mlp_norm/scale,
params/blocks/0/mlp/{up,down}/kernel, params/final_norm/scale, params/head/kernel (not with
tie_embeddings).

Built outside the trainer, build it under `nnx.use_eager_sharding(False)` (as trainer/model.py
does) or inside a mesh with axes "fsdp" and "model": NNX's eager sharding otherwise asks for a mesh
to place the annotated parameters on.

The `train` argument of __call__ decides whether dropout is on, as in linen (the trainer passes it
and sets the module's mode alike). One dropout stream serves every layer: streams of the same name
held by several layers would be reseeded alike by the trainer, and draw the same masks.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from models.transformer import (EMBED_AXES, HEAD_AXES, IN_AXES, OUT_AXES, attend, check_fields,
                                finish, initializer, make_cache, prepare, rotary)


def linear(inputs, outputs, axes, dtypes, rngs, residual_layers=0):
    """`dtypes`: dict(dtype=computation, param_dtype=parameters), given to every layer."""
    return nnx.Linear(inputs, outputs, use_bias=False, **dtypes, rngs=rngs,
                      kernel_init=initializer(nnx.with_partitioning, axes, residual_layers))


class Attention(nnx.Module):
    def __init__(self, embed_dim, num_heads, num_layers, rope_base, dtypes, rngs):
        self.num_heads, self.rope_base = num_heads, rope_base
        self.query = linear(embed_dim, embed_dim, IN_AXES, dtypes, rngs)
        self.key = linear(embed_dim, embed_dim, IN_AXES, dtypes, rngs)
        self.value = linear(embed_dim, embed_dim, IN_AXES, dtypes, rngs)
        self.out = linear(embed_dim, embed_dim, OUT_AXES, dtypes, rngs, num_layers)

    def __call__(self, x, positions, mask, cache, layer):
        batch, length, width = x.shape
        heads = (batch, length, self.num_heads, width // self.num_heads)
        query = rotary(self.query(x).reshape(heads), positions, self.rope_base)
        key = rotary(self.key(x).reshape(heads), positions, self.rope_base)
        out, cache = attend(query, key, self.value(x).reshape(heads), mask, cache, layer)
        return self.out(out.reshape(batch, length, width)), cache


class MLP(nnx.Module):
    def __init__(self, embed_dim, mlp_dim, num_layers, dtypes, rngs):
        self.up = linear(embed_dim, mlp_dim, IN_AXES, dtypes, rngs)
        self.down = linear(mlp_dim, embed_dim, OUT_AXES, dtypes, rngs, num_layers)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
    def __init__(self, embed_dim, num_heads, num_layers, mlp_dim, rope_base, dtypes, rngs):
        self.dtype = dtypes["dtype"]
        # Norms in float32 whatever the dtype: bfloat16 statistics cost accuracy.
        self.attention_norm = nnx.RMSNorm(embed_dim, dtype=jnp.float32,
                                          param_dtype=dtypes["param_dtype"], rngs=rngs)
        self.attention = Attention(embed_dim, num_heads, num_layers, rope_base, dtypes, rngs)
        self.mlp_norm = nnx.RMSNorm(embed_dim, dtype=jnp.float32,
                                    param_dtype=dtypes["param_dtype"], rngs=rngs)
        self.mlp = MLP(embed_dim, mlp_dim, num_layers, dtypes, rngs)

    def __call__(self, x, positions, mask, cache, layer, dropout):
        h, cache = self.attention(self.attention_norm(x).astype(self.dtype), positions, mask,
                                  cache, layer)
        x = x + dropout(h)
        return x + dropout(self.mlp(self.mlp_norm(x).astype(self.dtype))), cache


class Transformer(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs, vocab_size: int = 257, num_layers: int = 4,
                 num_heads: int = 4, embed_dim: int = 128, mlp_dim: int | None = None,
                 max_len: int = 1024, dropout_rate: float = 0.0, tie_embeddings: bool = False,
                 rope_base: float = 10000.0, dtype=jnp.float32, param_dtype=jnp.float32):
        """`mlp_dim` None: 4 * embed_dim; `max_len`: the longest sequence the model is meant for
        (positions < max_len); `tie_embeddings`: the output head is the embedding transposed;
        `dtype`, `param_dtype`: of computation and parameters (set by config.precision)."""
        check_fields(vocab_size, num_layers, num_heads, embed_dim, mlp_dim, max_len, dropout_rate,
                     rope_base)
        self.num_layers, self.num_heads, self.max_len = num_layers, num_heads, max_len
        self.head_dim, self.dtype = embed_dim // num_heads, dtype
        dtypes = dict(dtype=dtype, param_dtype=param_dtype)
        self.embed = nnx.Embed(vocab_size, embed_dim, **dtypes, rngs=rngs,
                               embedding_init=initializer(nnx.with_partitioning, EMBED_AXES))
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.blocks = nnx.List([Block(embed_dim, num_heads, num_layers, mlp_dim or 4 * embed_dim,
                                      rope_base, dtypes, rngs) for _ in range(num_layers)])
        self.final_norm = nnx.RMSNorm(embed_dim, dtype=jnp.float32, param_dtype=param_dtype,
                                      rngs=rngs)
        self.head = (None if tie_embeddings else
                     linear(embed_dim, vocab_size, HEAD_AXES, dtypes, rngs))

    def init_cache(self, batch_size: int, length: int) -> dict:
        """An empty cache of `length` slots a row (models/transformer.py's init_cache)."""
        return make_cache(self.num_layers, self.num_heads, self.head_dim, self.max_len, batch_size,
                          length, self.dtype)

    def __call__(self, tokens, segment_ids=None, positions=None, cache=None, train: bool = False):
        positions, mask, new_cache = prepare(tokens, segment_ids, positions, cache, self.max_len)

        def dropout(x):
            return self.dropout(x, deterministic=not train)

        x = dropout(self.embed(tokens))
        for layer, block in enumerate(self.blocks):
            x, new_cache = block(x, positions, mask, new_cache, layer, dropout)
        x = self.final_norm(x).astype(self.dtype)
        logits = self.embed.attend(x) if self.head is None else self.head(x)
        logits = logits.astype(jnp.float32)  # the loss in float32
        return logits if cache is None else (logits, finish(new_cache, tokens.shape[1]))


Model = Transformer
