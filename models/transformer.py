"""A decoder-only transformer language model (nanoGPT's, modernised): token embedding, blocks of
[RMSNorm, causal self-attention with rotary positions, residual; RMSNorm, GELU MLP, residual],
final RMSNorm, output head (or the embedding transposed). Packed rows and a key-value cache for
decoding; models/nnx_transformer.py is the same model in Flax NNX, built from the helpers here.

Inputs, keyword arguments of __call__ (both APIs):
    tokens       int (batch, length)
    segment_ids  int (batch, length): which document of a packed row each token is in; 0 is
                 padding. Default all ones (one document a row).
    positions    int (batch, length): each token's position in its document, for the rotary
                 embedding; must be < max_len. Default the token's slot: arange(length), or
                 cache["index"] + arange(length) with a cache.
    cache        None, or a dict from init_cache (see there): the tokens are written at its slots
                 [index, index + length) and attend every slot; (logits, the cache with index
                 advanced by length) is returned. Prefill with the prompt, then one token a call
                 (static shapes: inside jax.lax.while_loop).
    train        dropout on.
Returns float32 logits (batch, length, vocab_size).

Query i attends key j iff they are in the same document (segment id), that document is not padding
(segment 0), and j's slot in the row (or cache) is not after i's. A padding token attends only
itself, so that no row of the attention is empty (no NaN anywhere).

The mask is a boolean array given to jax.nn.dot_product_attention, never a pad token id. Parameter
names: params/embed/embedding, params/blocks/attention_norm/scale,
params/blocks/attention/{query,key,value,out}/kernel, params/blocks/mlp_norm/scale,
params/blocks/mlp/{up,down}/kernel, params/final_norm/scale, params/head/kernel (not with
tie_embeddings). The blocks' parameters are stacked, a leading axis of num_layers, and scanned
over (jax.lax.scan): rolled under `remat`, where it saves memory, unrolled without, where it is
faster (models/remat.py; its list of names: NAMES). Sharding annotations (Megatron-style, mesh axes
"fsdp" and "model"; the layer axis None): q/k/v and MLP-in kernels ("fsdp", "model"),
attention-out and MLP-out kernels ("model", "fsdp"); the
vocabulary dimension is not split over "model" (257, the bytes and an end-of-document token, is
prime: no axis size divides it), so the embedding is (None, "fsdp") and the head ("fsdp", None);
norm scales are left to the trainer's fsdp rule.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from models.remat import check_remat, remat_policy, unrolled

# The activations a block tags for config.remat's list of names (models/remat.py).
NAMES = ("query", "key", "value", "attention", "mlp_hidden")

INIT_STD = 0.02  # GPT-2's initialisation of embeddings and kernels


# The pieces both APIs share, so that linen and NNX compute the same thing.

def check_fields(vocab_size, num_layers, num_heads, embed_dim, mlp_dim, max_len, dropout_rate,
                 rope_base):
    sizes = dict(vocab_size=vocab_size, num_layers=num_layers, num_heads=num_heads,
                 embed_dim=embed_dim, max_len=max_len, **({} if mlp_dim is None else
                                                           dict(mlp_dim=mlp_dim)))
    bad = {name: size for name, size in sizes.items()
           if isinstance(size, bool) or not isinstance(size, int) or size <= 0}
    if bad:
        raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in bad.items())}: vocab_size, "
                         f"num_layers, num_heads, embed_dim, mlp_dim (or None) and max_len must be "
                         f"positive integers")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} does not divide by num_heads={num_heads}; "
                         f"give an embed_dim that is a multiple of num_heads")
    if (embed_dim // num_heads) % 2:
        raise ValueError(f"the head dimension embed_dim / num_heads = {embed_dim // num_heads} is "
                         f"odd; rotary position embedding needs it even")
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"dropout_rate={dropout_rate}; use a value in [0, 1)")
    if not rope_base > 0:
        raise ValueError(f"rope_base={rope_base}; use a positive number (10000.0 is usual)")


def make_cache(num_layers, num_heads, head_dim, max_len, batch_size, length, dtype):
    """The empty key-value cache: `length` slots of each row, all padding (segment 0). A call
    writes its tokens at slots [index, index + tokens), which must stay within `length`: past the
    end, dynamic_update_slice would silently write the last slots instead."""
    if length > max_len:
        raise ValueError(f"a cache of length {length} is longer than max_len={max_len}, the "
                         f"longest sequence the model is meant for")
    shape = (num_layers, batch_size, length, num_heads, head_dim)
    return {"keys": jnp.zeros(shape, dtype), "values": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch_size, length), jnp.int32),
            "index": jnp.zeros((), jnp.int32)}


def prepare(tokens, segment_ids, positions, cache, max_len):
    """(positions, mask, cache) for a call: defaults filled in, this call's segment ids written
    into the cache, and the attention mask (batch, 1, queries, keys)."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens of shape {tokens.shape}; give (batch, length) token ids")
    batch, length = tokens.shape
    slots = cache["segment_ids"].shape[1] if cache is not None else length
    if max(length, slots) > max_len:  # shapes are static: this check costs nothing at run time
        raise ValueError(f"a sequence of length {max(length, slots)} is longer than "
                         f"max_len={max_len}")
    if length > slots:
        raise ValueError(f"{length} tokens do not fit a cache of {slots} slots")
    if segment_ids is None:
        segment_ids = jnp.ones((batch, length), jnp.int32)
    segment_ids = jnp.asarray(segment_ids, jnp.int32)
    start = 0 if cache is None else cache["index"]
    query_slots = start + jnp.arange(length, dtype=jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(query_slots, (batch, length))
    if cache is None:
        key_segments = segment_ids
    else:
        key_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, start))
        cache = {**cache, "segment_ids": key_segments}
    key_slots = jnp.arange(slots, dtype=jnp.int32)
    same = segment_ids[:, :, None] == key_segments[:, None, :]
    real = (segment_ids != 0)[:, :, None]
    causal = key_slots[None, None, :] <= query_slots[None, :, None]
    itself = key_slots[None, None, :] == query_slots[None, :, None]  # padding: no empty softmax row
    mask = (same & real & causal) | itself
    return jnp.asarray(positions), mask[:, None], cache


def finish(cache, length):
    return {**cache, "index": cache["index"] + length}


def rotary(x, positions, base):
    """Rotary position embedding of x (batch, length, heads, head_dim) at `positions` (batch,
    length): the two halves of each head rotated by position * base^(-2i/head_dim), in float32."""
    half = x.shape[-1] // 2
    frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    # (batch, length, 1 for the heads, half)
    angles = positions.astype(jnp.float32)[..., None, None] * frequencies
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attend(query, key, value, mask, cached, index, layer):
    """Attention of (batch, length, heads, head_dim) queries; with `cached` (the cache's keys and
    values of every layer), this `layer`'s keys and values are written into it at slot `index`,
    in place, and the queries attend all its slots. Returns (output, cached)."""
    if cached is not None:
        keys, values = (jax.lax.dynamic_update_slice(into, new[None].astype(into.dtype),
                                                     (layer, 0, index, 0, 0))
                        for into, new in zip(cached, (key, value)))
        cached = (keys, values)
        # dot_product_attention wants one dtype for query, key and value.
        key, value = keys[layer].astype(query.dtype), values[layer].astype(query.dtype)
    # implementation=None is XLA's on every platform in this JAX; "cudnn" is GPU flash attention.
    out = jax.nn.dot_product_attention(query, key, value, mask=mask)
    return checkpoint_name(out, "attention"), cached


def initializer(partitioning, axes, residual_layers=0):
    """N(0, 0.02^2) (GPT-2), wrapped with the API's partitioning over mesh `axes`; for an output
    projection into the residual stream (residual_layers: num_layers) the std is divided by
    sqrt(2 * num_layers), so that the stream's variance does not grow with depth."""
    std = INIT_STD / math.sqrt(2 * residual_layers) if residual_layers else INIT_STD
    return partitioning(jax.nn.initializers.normal(std), axes)


# Megatron-style axes: the first matmul of attention and MLP split by output (heads, hidden units)
# over "model", the second by input, so each pair needs one all-reduce; "fsdp" on the other axis.
IN_AXES, OUT_AXES = ("fsdp", "model"), ("model", "fsdp")
EMBED_AXES, HEAD_AXES = (None, "fsdp"), ("fsdp", None)


class Attention(nn.Module):
    num_heads: int
    num_layers: int
    rope_base: float
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, x, positions, mask, cached, index, layer):
        batch, length, width = x.shape
        heads = (batch, length, self.num_heads, width // self.num_heads)

        def project(name):
            return checkpoint_name(nn.Dense(
                width, use_bias=False, kernel_init=initializer(nn.with_partitioning, IN_AXES),
                dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x).reshape(heads), name)

        query = rotary(project("query"), positions, self.rope_base)
        key = rotary(project("key"), positions, self.rope_base)
        out, cached = attend(query, key, project("value"), mask, cached, index, layer)
        out = nn.Dense(width, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="out", kernel_init=initializer(nn.with_partitioning, OUT_AXES,
                                                           self.num_layers)
                       )(out.reshape(batch, length, width))
        return out, cached


class MLP(nn.Module):
    mlp_dim: int
    num_layers: int
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.mlp_dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="up", kernel_init=initializer(nn.with_partitioning, IN_AXES))(x)
        return nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="down",
                        kernel_init=initializer(nn.with_partitioning, OUT_AXES, self.num_layers)
                        )(jax.nn.gelu(checkpoint_name(h, "mlp_hidden")))


class Block(nn.Module):
    """One block, scanned over the layers (Transformer): carries (x, the cache's keys and values),
    takes its layer's number."""
    num_heads: int
    num_layers: int
    mlp_dim: int
    dropout_rate: float
    rope_base: float
    dtype: str
    param_dtype: str
    train: bool

    @nn.compact
    def __call__(self, carried, positions, mask, index, layer):
        x, cached = carried
        # Norms in float32 whatever the dtype: bfloat16 statistics cost accuracy.
        h = nn.RMSNorm(dtype=jnp.float32, param_dtype=self.param_dtype, name="attention_norm"
                       )(x).astype(self.dtype)
        h, cached = Attention(self.num_heads, self.num_layers, self.rope_base, self.dtype,
                              self.param_dtype, name="attention")(h, positions, mask, cached,
                                                                  index, layer)
        x = x + nn.Dropout(self.dropout_rate, deterministic=not self.train)(h)
        h = nn.RMSNorm(dtype=jnp.float32, param_dtype=self.param_dtype, name="mlp_norm"
                       )(x).astype(self.dtype)
        h = MLP(self.mlp_dim, self.num_layers, self.dtype, self.param_dtype, name="mlp")(h)
        return (x + nn.Dropout(self.dropout_rate, deterministic=not self.train)(h), cached), None


class Transformer(nn.Module):
    vocab_size: int = 257
    num_layers: int = 4
    num_heads: int = 4
    embed_dim: int = 128
    mlp_dim: int | None = None  # None: 4 * embed_dim
    max_len: int = 1024  # the longest sequence the model is meant for: positions < max_len
    dropout_rate: float = 0.0
    tie_embeddings: bool = False  # the output head is the embedding matrix transposed
    rope_base: float = 10000.0
    dtype: str = "float32"  # computation (set by config.precision)
    param_dtype: str = "float32"  # parameters (set by config.precision)
    remat: str | tuple = "none"  # what each block keeps for the backward pass (config.remat)
    # The scan over blocks unrolled (the trainer's FLOP count sets True); None: unless remat is on.
    scan_unroll: bool | None = None

    def __post_init__(self):
        check_fields(self.vocab_size, self.num_layers, self.num_heads, self.embed_dim,
                     self.mlp_dim, self.max_len, self.dropout_rate, self.rope_base)
        check_remat(self.remat, NAMES, "the transformer")
        super().__post_init__()

    @nn.nowrap
    def init_cache(self, batch_size: int, length: int) -> dict:
        """An empty cache of `length` slots a row: {"keys", "values": (num_layers, batch_size,
        length, num_heads, head_dim) of dtype, "segment_ids": (batch_size, length) int32,
        "index": int32 scalar, the next slot to write}. Needs no parameters."""
        return make_cache(self.num_layers, self.num_heads, self.embed_dim // self.num_heads,
                          self.max_len, batch_size, length, self.dtype)

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, cache=None, train: bool = False):
        positions, mask, new_cache = prepare(tokens, segment_ids, positions, cache, self.max_len)
        embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="embed",
                         embedding_init=initializer(nn.with_partitioning, EMBED_AXES))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(embed(tokens))
        unroll = unrolled(self.scan_unroll, self.remat)
        # prevent_cse off in a rolled scan, which keeps the recomputation apart by itself (and
        # runs faster without the barrier); unrolled, only the barrier keeps XLA from merging it.
        block = Block if self.remat == "none" else nn.remat(
            Block, policy=remat_policy(self.remat), prevent_cse=unroll)
        # One Block's parameters stacked over the layers (axis 0, not split over the mesh), each
        # layer initialised and dropped out with keys of its own; the cache is carried whole and
        # written in place at each layer's index.
        blocks = nn.scan(block, variable_axes={"params": 0},
                         split_rngs={"params": True, "dropout": True},
                         in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0),
                         length=self.num_layers, unroll=self.num_layers if unroll else 1,
                         metadata_params={nn.PARTITION_NAME: None})
        cached = None if cache is None else (new_cache["keys"], new_cache["values"])
        (x, cached), _ = blocks(
            self.num_heads, self.num_layers, self.mlp_dim or 4 * self.embed_dim,
            self.dropout_rate, self.rope_base, self.dtype, self.param_dtype, train,
            name="blocks")((x, cached), positions, mask, None if cache is None
                           else cache["index"], jnp.arange(self.num_layers))
        x = nn.RMSNorm(dtype=jnp.float32, param_dtype=self.param_dtype, name="final_norm"
                       )(x).astype(self.dtype)
        if self.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="head",
                              kernel_init=initializer(nn.with_partitioning, HEAD_AXES))(x)
        logits = logits.astype(jnp.float32)  # the loss in float32
        if cache is None:
            return logits
        keys, values = cached
        return logits, finish({**new_cache, "keys": keys, "values": values}, tokens.shape[1])


Model = Transformer
