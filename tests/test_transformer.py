"""The transformer language model, linen (models/transformer.py) and NNX
(models/nnx_transformer.py): packed documents kept apart bitwise, key-value cache decoding equal
to a full forward pass, rotary positions relative, the two APIs the same model, dropout only in
training, the sharding annotations, and remat keeping the parameters and gradients. Tiny models,
called with Flax's own APIs."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax import nnx
from flax.nnx import spmd
from jax.sharding import PartitionSpec as P

from models import nnx_transformer, transformer

TINY = dict(vocab_size=40, num_layers=2, num_heads=2, embed_dim=32, max_len=64)
APIS = ["linen", "nnx"]


class Built:
    """A model of either API behind one interface: __call__(tokens, train=False, key=None,
    **inputs), jitted (compiling once a shape is quicker than running op by op), and params, a
    nested dict of the same names in both."""

    def __init__(self, api, **fields):
        fields = {**TINY, **fields}
        if api == "linen":
            self.module = transformer.Transformer(**fields)
            self.variables = nn.meta.unbox(jax.jit(self.module.init)(
                jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
            self.params = self.variables["params"]
            self.apply = jax.jit(lambda variables, tokens, inputs, train, key: self.module.apply(
                variables, tokens, train=train, rngs={"dropout": key}, **inputs),
                static_argnames="train")
        else:
            with nnx.use_eager_sharding(False):  # as trainer/model.py builds it
                self.module = nnx_transformer.Transformer(rngs=nnx.Rngs(params=0, dropout=1),
                                                          **fields)
            self.params = nnx.to_pure_dict(nnx.state(self.module, nnx.Param))
            self.apply = nnx.jit(lambda module, tokens, inputs, train: module(
                tokens, train=train, **inputs), static_argnames="train")
        self.api = api

    def __call__(self, tokens, train=False, key=None, **inputs):
        if self.api == "linen":
            key = jax.random.PRNGKey(1) if key is None else key
            return self.apply(self.variables, tokens, inputs, train, key)
        return self.apply(self.module, tokens, inputs, train)

    def traced(self, tokens, **inputs):
        """The model in evaluation mode, not jitted: for calls inside a function of one's own."""
        if self.api == "linen":
            return self.module.apply(self.variables, tokens, **inputs)
        return self.module(tokens, **inputs)

    def init_cache(self, batch_size, length):
        return self.module.init_cache(batch_size, length)


def flat(tree):
    return {"/".join(map(str, (getattr(k, "key", getattr(k, "idx", k)) for k in path))): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def tokens_like(shape, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, TINY["vocab_size"])


# A packed row: three documents (3, 4 and 6 tokens), positions restarting at 0, 3 slots of padding.
SEGMENTS = np.array([1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 0, 0, 0])
POSITIONS = np.array([0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 0, 0])


@pytest.mark.parametrize("api", APIS)
def test_packed_documents_do_not_see_each_other(api):
    model = Built(api)
    # The second row is all padding: it must give finite logits (no empty softmax row).
    segment_ids = jnp.asarray(np.stack([SEGMENTS, np.zeros_like(SEGMENTS)]))
    positions = jnp.asarray(np.stack([POSITIONS, POSITIONS]))
    tokens = tokens_like(segment_ids.shape)
    logits = model(tokens, segment_ids=segment_ids, positions=positions)
    assert logits.shape == (2, 16, TINY["vocab_size"]) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()

    changed = tokens.at[0, 3:7].set((tokens[0, 3:7] + 1) % TINY["vocab_size"])  # document 2
    other = model(changed, segment_ids=segment_ids, positions=positions)
    elsewhere = np.ones((2, 16), bool)
    elsewhere[0, 3:7] = False
    np.testing.assert_array_equal(np.asarray(other)[elsewhere], np.asarray(logits)[elsewhere])
    assert not np.allclose(other[0, 3:7], logits[0, 3:7])

    padding = tokens.at[0, 14].set((tokens[0, 14] + 1) % TINY["vocab_size"])  # attends only itself
    other = model(padding, segment_ids=segment_ids, positions=positions)
    elsewhere = np.ones((2, 16), bool)
    elsewhere[0, 14] = False
    np.testing.assert_array_equal(np.asarray(other)[elsewhere], np.asarray(logits)[elsewhere])

    for document in (1, 2, 3):  # each alone in a row of its own, at positions from 0
        slots = np.flatnonzero(SEGMENTS == document)
        alone = model(tokens[:1, slots])
        np.testing.assert_allclose(alone[0], logits[0, slots], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("api", APIS)
def test_rotary_positions_are_relative(api):
    model = Built(api)
    tokens = tokens_like((2, 10))
    positions = jnp.broadcast_to(jnp.arange(10), (2, 10))
    logits = model(tokens, positions=positions)
    # Attention scores depend on the distance between positions only: a shift is rounding away.
    np.testing.assert_allclose(model(tokens, positions=positions + 7), logits, atol=1e-5)
    # Other distances (small at initialisation, whose attention is nearly uniform) are not.
    assert np.abs(model(tokens, positions=2 * positions) - logits).max() > 1e-4


@pytest.mark.parametrize("api, remat", [("linen", "none"), ("nnx", "none"), ("linen", "full"),
                                        ("nnx", "full")])
def test_cache_decoding_equals_the_full_forward_pass(api, remat):
    """The cache is carried through the scan over blocks, unrolled (remat none) or rolled."""
    model = Built(api, remat=remat)
    length, prompt, pad = 12, 5, 3
    # Row 0 one document; row 1 left-padded: 3 padding slots, then positions from 0.
    segment_ids = jnp.asarray([[1] * length, [0] * pad + [1] * (length - pad)], jnp.int32)
    positions = jnp.asarray([list(range(length)), [0] * pad + list(range(length - pad))],
                            jnp.int32)
    tokens = tokens_like((2, length), seed=3)
    full = model(tokens, segment_ids=segment_ids, positions=positions)

    @jax.jit
    def decode(tokens, segment_ids, positions):
        # More slots than tokens: the empty ones (segment 0) must not be attended.
        cache = model.init_cache(2, length + 4)
        first, cache = model.traced(tokens[:, :prompt], segment_ids=segment_ids[:, :prompt],
                                    positions=positions[:, :prompt], cache=cache)
        steps = jnp.zeros((2, length, TINY["vocab_size"]), jnp.float32)
        steps = jax.lax.dynamic_update_slice(steps, first, (0, 0, 0))

        def step(carry):  # teacher-forced: the given token at each slot
            t, cache, steps = carry
            take = lambda x: jax.lax.dynamic_slice_in_dim(x, t, 1, axis=1)
            logits, cache = model.traced(take(tokens), segment_ids=take(segment_ids),
                                         positions=take(positions), cache=cache)
            return t + 1, cache, jax.lax.dynamic_update_slice(steps, logits, (0, t, 0))

        _, cache, steps = jax.lax.while_loop(lambda carry: carry[0] < length, step,
                                             (jnp.int32(prompt), cache, steps))
        return steps, cache

    steps, cache = decode(tokens, segment_ids, positions)
    np.testing.assert_allclose(steps, full, rtol=1e-5, atol=1e-5)
    assert int(cache["index"]) == length
    np.testing.assert_array_equal(cache["segment_ids"][:, :length], segment_ids)
    assert not cache["segment_ids"][:, length:].any()


def test_init_cache_needs_no_parameters():
    fields = dict(TINY, dtype="bfloat16")
    linen = transformer.Transformer(**fields).init_cache(3, 16)  # an unbound module
    with nnx.use_eager_sharding(False):
        built = nnx_transformer.Transformer(rngs=nnx.Rngs(0), **dict(fields, dtype=jnp.bfloat16))
    for cache in (linen, built.init_cache(3, 16)):
        assert cache["keys"].shape == cache["values"].shape == (2, 3, 16, 2, 16)
        assert cache["keys"].dtype == jnp.bfloat16
        assert cache["segment_ids"].shape == (3, 16) and cache["segment_ids"].dtype == jnp.int32
        assert cache["index"].shape == () and cache["index"].dtype == jnp.int32


@pytest.mark.parametrize("api", APIS)
def test_bfloat16_computes_with_float32_parameters_and_logits(api):
    model = Built(api, dtype="bfloat16" if api == "linen" else jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(model.params)} == {jnp.dtype(jnp.float32)}
    tokens = tokens_like((2, 8))
    logits = model(tokens)
    assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
    step, cache = model(tokens, cache=model.init_cache(2, 8))
    assert step.dtype == jnp.float32 and cache["keys"].dtype == jnp.bfloat16
    np.testing.assert_allclose(step, logits, atol=0.05)


def test_linen_and_nnx_are_the_same_model():
    linen, built = Built("linen"), Built("nnx")
    shapes = {name: leaf.shape for name, leaf in flat(linen.params).items()}
    assert shapes == {name: leaf.shape for name, leaf in flat(built.params).items()}
    v, e, m, layers = TINY["vocab_size"], TINY["embed_dim"], 4 * TINY["embed_dim"], 2
    assert sum(np.prod(s) for s in shapes.values()) == 2 * v * e + layers * (
        4 * e * e + 2 * e * m + 2 * e) + e
    assert shapes["blocks/attention/query/kernel"] == (layers, e, e)  # stacked over the layers
    # The same initialisers: each kernel's spread alike (GPT-2's, residual outputs scaled down).
    for name in ("blocks/attention/query/kernel", "blocks/mlp/down/kernel", "embed/embedding"):
        stds = [float(np.std(flat(model.params)[name])) for model in (linen, built)]
        expected = 0.02 / (2 if name.endswith("down/kernel") else 1)  # sqrt(2 * 2 layers)
        assert stds == pytest.approx([expected] * 2, rel=0.1)
    # NNX given linen's parameters computes linen's logits.
    state = nnx.state(built.module, nnx.Param)
    nnx.replace_by_pure_dict(state, linen.params)
    nnx.update(built.module, state)
    tokens = tokens_like((2, 10))
    np.testing.assert_allclose(built(tokens), linen(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("api", APIS)
def test_dropout_only_in_training(api):
    tokens = tokens_like((2, 10))
    model = Built(api, dropout_rate=0.5)
    assert not np.allclose(model(tokens, train=True), model(tokens))
    np.testing.assert_array_equal(model(tokens), model(tokens, train=False))
    model = Built(api)  # dropout_rate 0: training changes nothing
    np.testing.assert_array_equal(model(tokens, train=True), model(tokens))


@pytest.mark.parametrize("api", APIS)
def test_tied_embeddings_have_no_head(api):
    model = Built(api, tie_embeddings=True)
    assert "head" not in model.params
    assert sum(x.size for x in jax.tree.leaves(model.params)) == sum(
        x.size for x in jax.tree.leaves(Built(api).params)) - TINY["embed_dim"] * TINY["vocab_size"]
    assert model(tokens_like((2, 6))).shape == (2, 6, TINY["vocab_size"])


@pytest.mark.parametrize("fields, message", [
    (dict(num_layers=0), "positive integers"),
    (dict(vocab_size=2.5), "positive integers"),
    (dict(mlp_dim=-1), "positive integers"),
    (dict(embed_dim=30, num_heads=4), "does not divide by num_heads"),
    (dict(embed_dim=36, num_heads=4), "odd"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(rope_base=0.0), "rope_base"),
])
def test_bad_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        transformer.Transformer(**{**TINY, **fields})
    with pytest.raises(ValueError, match=message):
        nnx_transformer.Transformer(rngs=nnx.Rngs(0), **{**TINY, **fields})


@pytest.mark.parametrize("api", APIS)
def test_longer_than_max_len_is_refused(api):
    model = Built(api, max_len=8)
    with pytest.raises(ValueError, match="max_len=8"):
        model(tokens_like((1, 9)))
    with pytest.raises(ValueError, match="max_len=8"):
        model.init_cache(1, 9)


EXPECTED_SPECS = {  # the blocks' layer axis first, not split
    "blocks/attention/query/kernel": P(None, "fsdp", "model"),
    "blocks/attention/value/kernel": P(None, "fsdp", "model"),
    "blocks/attention/out/kernel": P(None, "model", "fsdp"),
    "blocks/mlp/up/kernel": P(None, "fsdp", "model"),
    "blocks/mlp/down/kernel": P(None, "model", "fsdp"),
    "embed/embedding": P(None, "fsdp"),
    "head/kernel": P("fsdp", None),
    "final_norm/scale": P(),  # left to the trainer's fsdp rule
}


def test_sharding_annotations():
    example = jnp.zeros((1, 8), jnp.int32)
    module = transformer.Transformer(**TINY)
    boxed = jax.eval_shape(module.init, jax.random.PRNGKey(0), example)
    linen = flat(nn.get_partition_spec(boxed)["params"])

    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: nnx_transformer.Transformer(rngs=nnx.Rngs(0), **TINY))
    built = {"/".join(map(str, path)): spmd.get_var_pspec(v) or P()
             for path, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    assert built == linen
    for name, spec in EXPECTED_SPECS.items():
        assert linen[name] == spec, name


@pytest.mark.parametrize("api", APIS)
def test_remat_keeps_the_parameters_and_the_gradients(api):
    """Each remat setting: the same parameters (it is no state), and the same gradients within
    float32 rounding (a recomputed activation may be summed in another order)."""
    tokens = tokens_like((2, 12))

    def gradients(remat):
        model = Built(api, remat=remat)
        if api == "linen":
            return model.params, jax.jit(jax.grad(lambda p: model.module.apply(
                {"params": p}, tokens).sum()))(model.params)
        grads = nnx.jit(nnx.grad(lambda module: module(tokens).sum()))(model.module)
        return model.params, nnx.to_pure_dict(grads)

    params, expected = gradients("none")
    for remat in ("full", "offload"):  # offload: dots, kept on the host
        kept, found = gradients(remat)
        assert jax.tree.all(jax.tree.map(np.array_equal, kept, params)), remat
        for a, b in zip(jax.tree.leaves(found), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=str(remat))


@pytest.mark.parametrize("remat, message", [
    ("sometimes", "remat='sometimes'; use one of none, full, dots, offload, or a tuple of the "
                  "transformer's activation names: query, key, value, attention, mlp_hidden"),
    (("attention", "logits"), "the transformer tags no activation named 'logits' for remat"),
])
def test_bad_remat(remat, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        transformer.Transformer(**TINY, remat=remat)
    with pytest.raises(ValueError, match=re.escape(message)):
        nnx_transformer.Transformer(rngs=nnx.Rngs(0), **TINY, remat=remat)
