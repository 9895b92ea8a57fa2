"""The transformer language model of models/transformer.py written in Flax NNX: the same layers,
parameter shapes, initialisers and sharding annotations, and the same masking, rotary embedding and
key-value cache (the helpers of models/transformer.py), so the same quality. Inputs, outputs and
the cache are as described there.

Parameter names are NNX attribute paths, the linen model's: params/embed/embedding,
params/blocks/attention_norm/scale, params/blocks/attention/{query,key,value,out}/kernel,
params/blocks/mlp_norm/scale, params/blocks/mlp/{up,down}/kernel, params/final_norm/scale,
params/head/kernel (not with tie_embeddings). `blocks` is one Block whose parameters are stacked
over the layers (made by nnx.vmap), and scanned over (jax.lax.scan of the block's pure state),
with `remat` as in linen.

Built outside the trainer, build it under `nnx.use_eager_sharding(False)` (as trainer/model.py
does) or inside a mesh with axes "fsdp" and "model": NNX's eager sharding otherwise asks for a mesh
to place the annotated parameters on.

The `train` argument of __call__ decides whether dropout is on, as in linen (the trainer passes it
and sets the module's mode alike). One dropout stream serves every layer: streams of the same name
held by several layers would be reseeded alike by the trainer, and draw the same masks; its key
split over the layers.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from jax.ad_checkpoint import checkpoint_name

from models.remat import check_remat, remat_policy, unrolled
from models.transformer import (EMBED_AXES, HEAD_AXES, IN_AXES, OUT_AXES, NAMES, attend,
                                check_fields, finish, initializer, make_cache, prepare, rotary)


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

    def __call__(self, x, positions, mask, cached, index, layer):
        batch, length, width = x.shape
        heads = (batch, length, self.num_heads, width // self.num_heads)

        def project(name):
            return checkpoint_name(getattr(self, name)(x).reshape(heads), name)

        query = rotary(project("query"), positions, self.rope_base)
        key = rotary(project("key"), positions, self.rope_base)
        out, cached = attend(query, key, project("value"), mask, cached, index, layer)
        return self.out(out.reshape(batch, length, width)), cached


class MLP(nnx.Module):
    def __init__(self, embed_dim, mlp_dim, num_layers, dtypes, rngs):
        self.up = linear(embed_dim, mlp_dim, IN_AXES, dtypes, rngs)
        self.down = linear(mlp_dim, embed_dim, OUT_AXES, dtypes, rngs, num_layers)

    def __call__(self, x):
        return self.down(jax.nn.gelu(checkpoint_name(self.up(x), "mlp_hidden")))


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

    def __call__(self, x, positions, mask, cached, index, layer, dropout):
        """`dropout`: x, which of the block's two -> x dropped out (or not)."""
        h, cached = self.attention(self.attention_norm(x).astype(self.dtype), positions, mask,
                                   cached, index, layer)
        x = x + dropout(h, 0)
        return x + dropout(self.mlp(self.mlp_norm(x).astype(self.dtype)), 1), cached


class Transformer(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs, vocab_size: int = 257, num_layers: int = 4,
                 num_heads: int = 4, embed_dim: int = 128, mlp_dim: int | None = None,
                 max_len: int = 1024, dropout_rate: float = 0.0, tie_embeddings: bool = False,
                 rope_base: float = 10000.0, dtype=jnp.float32, param_dtype=jnp.float32,
                 remat: str | tuple = "none", scan_unroll: bool | None = None):
        """`mlp_dim` None: 4 * embed_dim; `max_len`: the longest sequence the model is meant for
        (positions < max_len); `tie_embeddings`: the output head is the embedding transposed;
        `dtype`, `param_dtype`: of computation and parameters (set by config.precision);
        `remat`: what each block keeps for the backward pass (config.remat, models/remat.py);
        `scan_unroll`: the scan over blocks unrolled (the trainer's FLOP count sets True); None:
        unless remat is on."""
        check_fields(vocab_size, num_layers, num_heads, embed_dim, mlp_dim, max_len, dropout_rate,
                     rope_base)
        check_remat(remat, NAMES, "the transformer")
        self.remat, self.scan_unroll = remat, scan_unroll
        self.num_layers, self.num_heads, self.max_len = num_layers, num_heads, max_len
        self.head_dim, self.dtype = embed_dim // num_heads, dtype
        dtypes = dict(dtype=dtype, param_dtype=param_dtype)
        self.embed = nnx.Embed(vocab_size, embed_dim, **dtypes, rngs=rngs,
                               embedding_init=initializer(nnx.with_partitioning, EMBED_AXES))
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

        # One Block, its parameters stacked over the layers (axis 0, None in their annotations),
        # each layer initialised with keys of its own.
        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(axis_size=num_layers, transform_metadata={nnx.PARTITION_NAME: None})
        def blocks(rngs):
            return Block(embed_dim, num_heads, num_layers, mlp_dim or 4 * embed_dim, rope_base,
                         dtypes, rngs)

        self.blocks = blocks(rngs)
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

        dropped = train and self.dropout.rate > 0
        # Two keys a layer, one for each of a block's dropouts (none drawn where none is used).
        keys = (jax.random.split(self.dropout.rngs(), (self.num_layers, 2)) if dropped else
                jnp.zeros((self.num_layers, 0), jnp.uint32))
        x = self.dropout(self.embed(tokens), deterministic=not dropped)
        graphdef, stacked = nnx.split(self.blocks)
        index = None if cache is None else cache["index"]
        cached = None if cache is None else (new_cache["keys"], new_cache["values"])

        def block(carried, layer):
            """As linen's scanned Block: carries (x, the whole cache), takes a layer's parameters,
            number and dropout keys."""
            (x, cached), (state, number, layer_keys) = carried, layer

            def dropout(h, which):
                return self.dropout(h, deterministic=not dropped,
                                    rngs=layer_keys[which] if dropped else None)
            return nnx.merge(graphdef, state)(x, positions, mask, cached, index, number,
                                              dropout), None

        unroll = unrolled(self.scan_unroll, self.remat)
        if self.remat != "none":  # prevent_cse as in linen (models/transformer.py)
            block = jax.checkpoint(block, policy=remat_policy(self.remat), prevent_cse=unroll)
        (x, cached), _ = jax.lax.scan(block, (x, cached),
                                      (stacked, jnp.arange(self.num_layers), keys),
                                      unroll=True if unroll else 1)
        x = self.final_norm(x).astype(self.dtype)
        logits = self.embed.attend(x) if self.head is None else self.head(x)
        logits = logits.astype(jnp.float32)  # the loss in float32
        if cache is None:
            return logits
        keys, values = cached
        return logits, finish({**new_cache, "keys": keys, "values": values}, tokens.shape[1])


Model = Transformer
