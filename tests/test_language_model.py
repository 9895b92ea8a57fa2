"""The language-model task in the trainer: one mean over the real tokens of the global batch (also
across microbatches), its metrics, and generation's settings checked."""
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer import generation, steps, tasks
from trainer.errors import ConfigError
from trainer.model import LinenModel
from trainer.state import create_train_state

VOCAB, LENGTH = 11, 8

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TokenModel(nn.Module):
    """Logits for each position from its token and its position alone: enough to have gradients."""

    @nn.compact
    def __call__(self, tokens, positions=None):
        x = nn.Embed(VOCAB, 16)(tokens) + nn.Embed(LENGTH, 16)(positions)
        return nn.Dense(VOCAB)(nn.tanh(x))


def packed_batch(rows=4, seed=0):
    """Rows of very different numbers of real targets: row i keeps 2 * i + 1 of them."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (rows, LENGTH)).astype(np.int32)
    targets = np.full((rows, LENGTH, 2), -1, np.int32)
    for i in range(rows):
        kept = min(2 * i + 1, LENGTH)
        targets[i, :kept, 0] = rng.integers(0, VOCAB, kept)
        targets[i, :kept, 1] = 1 + (np.arange(kept) % 2)  # bytes: 1 or 2 a token
    targets[targets[..., 0] < 0, 1] = 0
    positions = np.broadcast_to(np.arange(LENGTH, dtype=np.int32), (rows, LENGTH))
    return {"inputs": {"tokens": tokens, "positions": positions}, "targets": targets}


def fresh_state():
    batch = packed_batch()
    return create_train_state(LinenModel(TokenModel()), optax.sgd(0.1), batch["inputs"], seed=0)


def step(state, batch, grad_accum_steps):
    return jax.jit(lambda s, b: steps.train_step(
        s, b, task=tasks.language_model, prepare_inputs=lambda x: x,
        grad_accum_steps=grad_accum_steps, unroll_accumulation=True))(state, batch)


def test_the_loss_is_one_mean_over_the_real_tokens_of_the_batch():
    state, batch = fresh_state(), packed_batch()
    logits = state.model.apply(state.params, {}, batch["inputs"], False)[0]
    per_token = optax.softmax_cross_entropy_with_integer_labels(
        logits, np.maximum(batch["targets"][..., 0], 0))
    real = batch["targets"][..., 0] >= 0
    expected = float(jnp.sum(jnp.where(real, per_token, 0.0)) / real.sum())
    mean_of_row_means = float(np.mean([per_token[i][real[i]].mean() for i in range(len(real))]))
    assert abs(expected - mean_of_row_means) > 1e-3  # the batch tells the two apart

    _, metrics = step(state, batch, 1)
    computed = metrics.compute()
    np.testing.assert_allclose(computed["loss"], expected, rtol=1e-6)
    np.testing.assert_allclose(computed["perplexity"], math.exp(expected), rtol=1e-6)
    nats = float(jnp.sum(jnp.where(real, per_token, 0.0)))
    np.testing.assert_allclose(computed["bits_per_byte"],
                               nats / batch["targets"][..., 1].sum() / math.log(2), rtol=1e-6)
    assert computed["tokens"] == real.sum()
    correct = (np.argmax(logits, -1) == batch["targets"][..., 0]) & real
    np.testing.assert_allclose(computed["accuracy"], correct.sum() / real.sum(), rtol=1e-6)


def test_microbatches_weigh_tokens_as_the_whole_batch_does():
    """Microbatch j holds rows j, j + k, ...: with k = 2 one holds rows of 1 and 5 real tokens,
    the other 3 and 7, so a mean of microbatch means would weigh the tokens unequally."""
    state, batch = fresh_state(), packed_batch()
    whole, whole_metrics = step(state, batch, 1)
    split, split_metrics = step(state, batch, 2)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(split.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(whole_metrics.compute()["loss"], split_metrics.compute()["loss"],
                               rtol=1e-6)


@pytest.mark.parametrize("settings, message", [
    (dict(prompts=[[]]), "at least one character"),
    (dict(prompts=[[1] * 9]), "9 tokens long and the model's context is 8"),
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(temperature=-1.0), "temperature=-1.0"),
    (dict(top_k=-2), "top_k=-2"),
    (dict(top_p=0.0), "top_p=0.0"),
])
def test_generation_settings_are_checked(settings, message):
    arguments = dict(prompts=[[1, 2]], max_new_tokens=4, context=LENGTH, temperature=1.0,
                     top_k=0, top_p=1.0)
    arguments.update(settings)
    with pytest.raises(ConfigError, match=message):
        generation.check_settings(**arguments)


def test_top_k_and_top_p_keep_the_most_likely_tokens():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda **s: np.isfinite(generation.filtered_logits(logits, 1.0, **s))[0].tolist()
    assert kept(top_k=2, top_p=1.0) == [True, True, False, False]
    assert kept(top_k=0, top_p=0.5) == [True, False, False, False]
    assert kept(top_k=0, top_p=0.8) == [True, True, False, False]
    assert kept(top_k=0, top_p=0.81) == [True, True, True, False]


def test_train_step_flops_are_those_of_the_transformer_and_the_peaks_are_by_device_kind():
    """XLA's count of one step of configs/shakespeare_lm.py against the transformer's (PaLM's
    6 N + 12 L d S per token, N the matmul parameters): within 5 % (norms, softmax, the update),
    as the check reports it (the compiled step) and as MFU takes it (the lowered one)."""
    from trainer import api, hardware, preflight  # pylint: disable=import-outside-toplevel
    from trainer.setup import build  # pylint: disable=import-outside-toplevel
    config, _ = api.resolved("configs/shakespeare_lm.py", dict(dataset=dict(
        path=os.path.join(REPO, "..", "shared", "data", "shakespeare"))), dict.fromkeys(
        ("model", "dataset", "task", "optimizer", "writers")))
    layers, width, length, vocabulary, batch = 4, 128, 64, 257, 12
    tokens = batch * length
    counted = (6 * (layers * 12 * width**2 + width * vocabulary) + 12 * layers * width * length)
    setup = build(config, abstract=True)
    assert preflight.report(config, setup).flops == pytest.approx(counted * tokens, rel=0.05)
    assert preflight.step_flops(config, setup, per_device=False)[0] == pytest.approx(
        counted * tokens, rel=0.05)
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert hardware.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert hardware.peak_flops("TPU v5 lite") == 197e12 and hardware.peak_flops("cpu") is None
