"""The fused path (many steps a call, data in device memory) computes what the per-step path
computes; mixed precision; prefetching."""
import json

import jax
import numpy as np

from configs import mnist_cnn
from trainer import batching
from trainer.loop import train_and_evaluate
from trainer.timetable import Timetable


def short_cnn(mnist_dir, steps, **fields):
    config = mnist_cnn.get_config()
    config.dataset.data_dir = mnist_dir
    config.model.conv_features = (8, 16)
    config.num_steps, config.log_every_steps, config.checkpoint_every_steps = 60, 25, 40
    config.plots, config.steps = False, steps
    config.update(fields)
    return config


def test_fused_steps_compute_what_per_step_computes(mnist_dir, tmp_path):
    """The same batches and updates, to float rounding; with plain SGD, whose updates do not
    amplify a last-bit difference as Adam's division by its second moment does where that is near
    zero (with Adam the two paths' parameters were 4x the tolerance below apart after 60 steps, on
    MNIST less the validation split; with SGD 0.004x)."""
    runs = {}
    for steps in ("per_step", "fused"):
        config = short_cnn(mnist_dir, steps)
        config.optimizer.update(dict(name="sgd", learning_rate=0.01))
        state, metrics, *_ = train_and_evaluate(config, str(tmp_path / steps))
        logged = [json.loads(line) for line in (tmp_path / steps / "metrics.jsonl").open()]
        runs[steps] = state, metrics, [(e["step"], e["train/loss"]) for e in logged
                                       if "train/loss" in e]
    (per_step, per_step_eval, per_step_log), (fused, fused_eval, fused_log) = runs.values()
    for part in ("params", "model_state", "opt_state"):  # same batches, same updates
        close = jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-5),
                             getattr(per_step, part), getattr(fused, part))
        assert jax.tree.all(close), part
    assert int(fused.step) == 60
    assert [s for s, _ in fused_log] == [s for s, _ in per_step_log] == [25, 50, 60]
    np.testing.assert_allclose([l for _, l in fused_log], [l for _, l in per_step_log], rtol=1e-5)
    assert fused_eval["test/accuracy"] == per_step_eval["test/accuracy"]


def test_fused_chunks_stop_at_every_boundary(mnist_dir):
    config = short_cnn(mnist_dir, "fused", num_steps=1000, eval_every_steps=30)
    timetable = Timetable.from_config(config, steps_per_epoch=468, total_steps=1000)
    visited, step = [], 0
    while step < 1000:
        step = timetable.next_boundary(step)
        assert timetable.events_at(step), step  # the loop has something to do at each boundary
        visited.append(step)
    assert visited == [25, 30, 40, 50, 60, 75, 80, 90, 100, 120, 125, 150] + visited[12:]
    assert 468 in visited and 936 in visited and visited[-1] == 1000


def test_bfloat16_computes_in_bf16_with_float32_parameters(mnist_dir, tmp_path):
    config = short_cnn(mnist_dir, "per_step", dtype="bfloat16", num_steps=200)
    state, metrics, *_ = train_and_evaluate(config, str(tmp_path))
    assert metrics["test/accuracy"] > 0.9
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state, state.model_state))
              if x.ndim}
    assert dtypes == {np.dtype("float32")}
    outputs = jax.eval_shape(
        lambda p: state.model.module.apply({"params": p, **state.model_state},
                                           np.zeros((2, 28, 28, 1), np.float32), train=False,
                                           capture_intermediates=True), state.params)
    conv_output = outputs[1]["intermediates"]["Conv_0"]["__call__"][0]
    assert conv_output.dtype == jax.numpy.bfloat16


def test_prefetch_keeps_two_batches_ahead():
    put = []
    batches = batching.prefetch(iter(range(10)), lambda b: put.append(b) or b, size=2)
    assert next(batches) == 0 and put == [0, 1, 2]
    assert list(batches) == list(range(1, 10))
