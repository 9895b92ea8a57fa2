"""config.precision: what the models compute in and keep their parameters in, the optimizer state
following them, and float16's dynamic loss scale (an overflow lowers the scale and skips the step,
no NaN stop), resumed bit for bit."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, files
from trainer import api, parts
from trainer.checkpoint import CheckpointMismatch
from trainer.errors import ConfigError
from trainer.setup import build

MNIST = str(REPO.parent / "shared" / "data" / "mnist")
MODELS = {"configs/mnist_cnn.py": dict(conv_features=(4, 8), dense_features=(16,)),
          "configs/mnist_cnn_nnx.py": dict(conv_features=(4, 8), dense_features=(16,),
                                           image_shape=(8, 8, 1))}


def dtypes(tree):
    return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def images():
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (64, 8, 8, 1)).astype(np.uint8)
    labels = rng.integers(0, 10, 64).astype(np.int32)
    return (inputs, labels), (inputs[:32], labels[:32])


@pytest.mark.parametrize("config", list(MODELS))
@pytest.mark.parametrize("precision, kept, computed", [
    ("float32", "float32", "f32"), ("mixed_bfloat16", "float32", "bf16"),
    ("bfloat16", "bfloat16", "bf16"), ("mixed_float16", "float32", "f16")])
def test_each_precision_sets_the_models_dtypes_and_the_optimizer_state_follows(
        config, precision, kept, computed):
    resolved, objects = api.resolved(config, dict(model=MODELS[config], precision=precision, batch_size=16,
                                            evals=None, best_metric="",
                                            validation=dict(fraction=0.0)),
                               dict(model=None, dataset=images(), task=None, optimizer=None,
                                    writers=None))
    with parts.given(objects):
        state = build(resolved, abstract=True).state  # shapes and dtypes, nothing computed
    assert dtypes(state.params) == {kept}
    assert dtypes(state.opt_state) == {kept}  # Adam's moments, as the parameters
    assert dtypes(state.model_state) == {"float32"}  # BatchNorm statistics stay float32
    forward = str(jax.make_jaxpr(lambda p, s, x: state.model.apply(p, s, x, False))(
        state.params, state.model_state, jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)))
    assert "conv_general_dilated" in forward and f"{computed}[2,8,8,4]" in forward
    assert (state.loss_scale is not None) == (precision == "mixed_float16")


def huge_targets():
    """A regression whose loss, scaled by float16's starting loss scale (2^16), sends gradients
    past float16's largest number (65504) in the backward pass: the scale must come down first."""
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(256, 4)).astype(np.float32)
    targets = (inputs @ rng.normal(size=(4, 1)) * 300).astype(np.float32)
    return (inputs, targets), (inputs[:64], targets[:64])


def fit_huge(workdir, num_steps, precision="mixed_float16"):
    return api.fit("configs/poly_regression.py", workdir, dataset=huge_targets(), num_steps=num_steps,
                   batch_size=32, precision=precision, model=dict(features=(16, 1)),
                   log_every_steps=5, checkpoint_every_steps=10, plots=False, evals=None,
                   best_metric="", early_stopping=dict(metric=""))


def test_a_float16_overflow_lowers_the_scale_and_the_run_goes_on_and_resumes_bitwise(tmp_path):
    straight = fit_huge(tmp_path / "straight", 20)
    scale = straight.state.loss_scale
    assert float(scale.scale) < 2.0**16  # halved at each overflow
    logged = [row["train/loss_scale"] for row in straight.history if "train/loss" in row]
    assert logged == sorted(logged, reverse=True) and logged[-1] == float(scale.scale)
    assert int(straight.state.nonfinite_updates) == 0  # no NaN stop, none counted
    assert all(np.isfinite(value) for value in straight.final.values())
    halfway = api.load(tmp_path / "straight", step=10, dataset=huge_targets())
    assert any(not np.array_equal(a, b) for a, b in zip(  # steps 11 to 20 were applied
        jax.tree.leaves(straight.state.params), jax.tree.leaves(halfway.state.params)))
    # The same 20 steps in two calls: the scale and its count come back from the checkpoint.
    fit_huge(tmp_path / "resumed", 10)
    resumed = fit_huge(tmp_path / "resumed", 20)
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class NoDtypes(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("overrides, message", [
    (dict(precision="half"), "config.precision='half' is invalid"),
    (dict(precision="bfloat16", dtype="bfloat16"), "config.dtype='bfloat16' is the older name of "
                                                   "precision='mixed_bfloat16'"),
    (dict(precision="bfloat16", model=NoDtypes), "config.precision='bfloat16' needs a model with a "
                                                 "field `dtype`"),
])
def test_a_precision_that_cannot_be_is_one_line_and_nothing_is_written(overrides, message,
                                                                       tmp_path):
    with pytest.raises(ConfigError) as raised:
        api.fit("configs/mnist_mlp.py", tmp_path / "run", dataset=dict(data_dir=MNIST),
                **overrides)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_float16_attention_that_the_cpu_cannot_compile_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as raised:
        api.fit("configs/shakespeare_lm.py", tmp_path / "run", dataset=dict(
            path=str(REPO.parent / "shared" / "data" / "shakespeare")), precision="mixed_float16")
    assert str(raised.value) == (
        "config.precision='mixed_float16': this model's float16 computation cannot be compiled "
        "for cpu (The precision 'F16_F16_F32' is not supported by dot_general on CPU); use "
        "precision='mixed_bfloat16' here.")
    assert not (tmp_path / "run").exists()


def test_a_resume_in_another_precision_is_refused_and_its_checkpoints_stay(tmp_path):
    """Orbax would cast the saved arrays to the dtype asked for, which their checksums would then
    take for damage: the dtypes are compared first, and the change named."""
    fit_huge(tmp_path / "run", 10, precision="float32")
    before = files(tmp_path / "run" / "checkpoints")
    with pytest.raises(CheckpointMismatch) as refused:
        api.fit("configs/poly_regression.py", tmp_path / "run", dataset=huge_targets(),
                num_steps=20, batch_size=32, precision="bfloat16", model=dict(features=(16, 1)),
                log_every_steps=5, checkpoint_every_steps=10, plots=False, evals=None,
                best_metric="", early_stopping=dict(metric=""), resume_with_changes=True)
    message = str(refused.value)
    assert "is float32 there and bfloat16 in the config" in message and "precision" in message
    assert "\n" not in message
    assert files(tmp_path / "run" / "checkpoints") == before
    assert not (tmp_path / "run" / "damaged_checkpoints").exists()


def test_a_float32_run_is_fine_tuned_in_bfloat16(tmp_path):
    """Read as saved (its checksums verified), converted to the fresh run's dtype; a learning
    rate of 1e-30 leaves the converted values as they are in bfloat16."""
    source = fit_huge(tmp_path / "source", 10, precision="float32")
    tuned = api.fit("configs/poly_regression.py", tmp_path / "tuned", dataset=huge_targets(),
                    num_steps=1, batch_size=32, precision="bfloat16", model=dict(features=(16, 1)),
                    optimizer=dict(learning_rate=1e-30), plots=False, evals=None, best_metric="",
                    early_stopping=dict(metric=""), init_from=str(tmp_path / "source"))
    for loaded, saved in zip(jax.tree.leaves(tuned.state.params),
                             jax.tree.leaves(source.state.params)):
        assert loaded.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(saved.astype(jnp.bfloat16)))
