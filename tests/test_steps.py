import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import xor_mlp
from configs.base import get_base_config
from trainer import batching
from trainer.checkpoint import Checkpoints
from trainer.optim import create_optimizer
from trainer.parallel import Parallel
from trainer.state import create_train_state
from trainer.evaluation import evaluate
from trainer.model import LinenModel
from trainer.metrics import Metrics
from trainer.steps import eval_step, train_step
from trainer.runners import step_args
from trainer.model import build as build_model
from trainer.setup import build
from trainer.tasks import classification


def scale(images):
    return images.astype(jnp.float32) / 255


def make_state(seed=0, dropout_rate=0.0):
    model = build_model(ml_collections.ConfigDict(dict(
        name="cnn", conv_features=(4, 8), dense_features=(16,), dropout_rate=dropout_rate)))
    tx, _ = create_optimizer(get_base_config().optimizer, steps_per_epoch=10, total_steps=100)
    return create_train_state(model, tx, jnp.zeros((1, 28, 28, 1)), seed)


def fake_batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.integers(0, 256, (n, 28, 28, 1)).astype(np.uint8),
            "targets": rng.integers(0, 10, (n,)).astype(np.int32)}


STEP_FNS = dict(task=classification, prepare_inputs=scale)
METRICS = Metrics(classification, ("loss", "accuracy"))
train = jax.jit(functools.partial(train_step, **STEP_FNS))
evaluate_batch = jax.jit(functools.partial(eval_step, metrics=METRICS, **STEP_FNS))


def test_train_step_learns_and_updates_batch_stats():
    state, batch = make_state(), fake_batch()
    first_loss = None
    for _ in range(30):
        new_state, metrics = train(state, batch)
        first_loss = first_loss or float(metrics.compute()["loss"])
        state = new_state
    assert int(state.step) == 30
    assert float(metrics.compute()["loss"]) < 0.7 * first_loss
    assert not np.allclose(state.model_state["batch_stats"]["BatchNorm_0"]["mean"], 0)


def test_train_step_is_reproducible_with_dropout():
    state, batch = make_state(dropout_rate=0.5), fake_batch()
    a, _ = train(state, batch)
    b, _ = train(state, batch)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a.params, b.params))


def test_eval_counts_every_example_once_with_padding():
    state, split = make_state(), fake_batch(n=10, seed=1)
    outputs, _ = state.model.apply(state.params, state.model_state, scale(split["inputs"]), False)
    expected_accuracy = float(np.mean(np.argmax(outputs, -1) == split["targets"]))
    batches = list(batching.eval_batches(split, 4))
    assert [int(b["mask"].sum()) for b in batches] == [4, 4, 2]
    parallel = Parallel("jit")
    metrics = evaluate(evaluate_batch, state, batching.eval_batches(split, 4), parallel, METRICS)
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)
    assert metrics == evaluate(evaluate_batch, state, batching.eval_batches(split, 10), parallel,
                               METRICS)


def test_epoch_order_is_a_seeded_permutation():
    a = np.asarray(batching.epoch_order(seed=3, epoch=0, num_examples=100))
    assert sorted(a.tolist()) == list(range(100))
    assert a.tolist() == np.asarray(batching.epoch_order(3, 0, 100)).tolist()
    assert a.tolist() != np.asarray(batching.epoch_order(3, 1, 100)).tolist()
    assert a.tolist() != np.asarray(batching.epoch_order(4, 0, 100)).tolist()


def test_checkpoint_round_trip_and_retention(tmp_path):
    state = make_state()
    checkpoints = Checkpoints(str(tmp_path), keep=2)
    for _ in range(3):
        state, _ = train(state, fake_batch())
        checkpoints.save(state)
    checkpoints.wait()
    assert checkpoints.latest_step() == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]
    restored, _ = Checkpoints(str(tmp_path), keep=2).restore(make_state(seed=1))
    for name in ("params", "opt_state", "model_state", "step", "rng"):
        same = jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)),
                            getattr(state, name), getattr(restored, name))
        assert jax.tree.all(same), name


def mlp_state(seed=0, features=(32, 10)):
    model = build_model(ml_collections.ConfigDict(dict(name="mlp", features=features)))
    tx, _ = create_optimizer(get_base_config().optimizer, steps_per_epoch=10, total_steps=100)
    return create_train_state(model, tx, jnp.zeros((1, 28, 28, 1)), seed)


@pytest.mark.parametrize("unrolled", [False, True])
def test_grad_accumulation_gives_the_update_of_the_whole_batch(unrolled):
    """Without BatchNorm or dropout, 4 microbatches make the update of one batch, to float32
    rounding; and the logged metrics are those of the whole batch."""
    batch = fake_batch(64)
    one = jax.jit(functools.partial(train_step, **STEP_FNS))
    four = jax.jit(functools.partial(train_step, grad_accum_steps=4, unroll_accumulation=unrolled,
                                     **STEP_FNS))
    state_one = state_four = mlp_state()
    for _ in range(5):
        state_one, metrics_one = one(state_one, batch)
        state_four, metrics_four = four(state_four, batch)
    for a, b in zip(jax.tree.leaves(state_one.params), jax.tree.leaves(state_four.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not jax.tree.all(jax.tree.map(np.array_equal, state_one.params, mlp_state().params))
    np.testing.assert_allclose(metrics_one.compute()["loss"], metrics_four.compute()["loss"],
                               rtol=1e-5)
    assert metrics_one.compute()["accuracy"] == metrics_four.compute()["accuracy"]


def test_on_the_cpu_the_microbatches_are_not_a_loop():
    """XLA's CPU backend runs convolutions inside a loop about 8x slower (docs/speed.md): there
    the train step unrolls its microbatches."""
    config = xor_mlp.get_config()
    config.grad_accum_steps = 2
    setup = build(config)
    step = jax.jit(functools.partial(train_step, **step_args(config, setup)))
    lowered = step.lower(setup.state, setup.parallel.put_batch(next(setup.train_batches(0))))
    assert "while" not in lowered.as_text()


def test_ema_follows_the_parameters():
    model = build_model(ml_collections.ConfigDict(dict(name="mlp", features=(32, 10))))
    tx, _ = create_optimizer(get_base_config().optimizer, steps_per_epoch=10, total_steps=100)
    state = create_train_state(model, tx, jnp.zeros((1, 28, 28, 1)), 0, ema=True)
    step = jax.jit(functools.partial(train_step, ema_decay=0.9, **STEP_FNS))
    new_state, _ = step(state, fake_batch())
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.ema_params, new_state.params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(new_state.ema_params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    assert not jax.tree.all(jax.tree.map(np.array_equal, new_state.ema_params, new_state.params))


class Sowing(nn.Module):
    """Sows its hidden activations, as models written for inspection do."""

    @nn.compact
    def __call__(self, x):
        hidden = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        self.sow("intermediates", "hidden", hidden)
        return nn.Dense(10)(hidden)


def test_what_a_model_sows_is_not_carried_as_state():
    tx, _ = create_optimizer(get_base_config().optimizer, steps_per_epoch=10, total_steps=100)
    state = create_train_state(LinenModel(Sowing()), tx, jnp.zeros((1, 28, 28, 1)), 0)
    assert "intermediates" not in state.model_state
    for _ in range(2):
        state, _ = train(state, fake_batch())  # the same compiled step: the state does not grow
    assert int(state.step) == 2 and "intermediates" not in state.model_state
