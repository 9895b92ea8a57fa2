import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from trainer.errors import ConfigError
from trainer.model import build as build_model


def build(**fields):
    """The linen Module config.model names."""
    return build_model(ml_collections.ConfigDict(fields)).module


def test_cnn_with_batchnorm_and_dropout():
    model = build(name="cnn", conv_features=(4, 8), dense_features=(16,), dropout_rate=0.5)
    images = jnp.ones((2, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), images, train=False)
    assert set(variables) == {"params", "batch_stats"}
    logits = model.apply(variables, images, train=False)
    assert logits.shape == (2, 10)
    outputs, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.PRNGKey(1)})
    assert outputs.shape == (2, 10) and "batch_stats" in updates


def test_mlp_init_gain_sets_the_kernel_scale():
    model = build(name="mlp", features=(4096, 1), activation="tanh", init_gain=5 / 3)
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 64)))["params"]
    assert float(params["Dense_0"]["kernel"].std()) == pytest.approx(5 / 3 / 8, rel=0.02)


def test_model_from_a_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "__init__.py").write_text("")
    (tmp_path / "my_project" / "my_model.py").write_text(textwrap.dedent("""
        import flax.linen as nn
        class Model(nn.Module):
            width: int = 3
            @nn.compact
            def __call__(self, x, train=False):
                return nn.Dense(self.width)(x)
        class Wide(Model):
            width: int = 64
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build(name="my_project.my_model", width=5).width == 5
    assert build(name="my_project.my_model:Wide").width == 64


@pytest.mark.parametrize("fields, message", [
    ({"name": "resnet9000"}, "not a model"),
    ({"name": "mlp", "depth": 3}, "config.model.depth is not an argument of model 'mlp'"),
    ({"name": "mlp", "activation": "swish"}, "activation='swish'"),
    ({"name": "cnn", "pool": "median"}, "pool='median'"),
    ({"name": "cnn", "dropout_rate": 1.5}, "dropout_rate"),
])
def test_bad_model_configs(fields, message):
    with pytest.raises(ConfigError, match=message):
        build(**fields)
