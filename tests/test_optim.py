import jax
import jax.numpy as jnp
import optax
import pytest

from configs.base import get_base_config
from trainer.errors import ConfigError
from trainer.optim import create_optimizer, frozen_parameters


def optimizer_config(**fields):
    config = get_base_config().optimizer
    config.update(fields)
    return config


@pytest.mark.parametrize("schedule, checks", [
    ("constant", {0: 0.1, 99: 0.1}),
    ("cosine", {0: 0.1, 50: 0.05, 100: 0.0}),
    ("warmup_cosine", {0: 0.0, 5: 0.05, 10: 0.1, 100: 0.0}),
    ("step", {0: 0.1, 19: 0.1, 20: 0.05, 40: 0.025}),  # decay_every_epochs=2, 10 steps an epoch
])
def test_schedules(schedule, checks):
    config = optimizer_config(learning_rate=0.1, schedule=schedule, warmup_steps=10,
                              decay_every_epochs=2, decay_rate=0.5)
    _, lr = create_optimizer(config, steps_per_epoch=10, total_steps=100)
    for step, expected in checks.items():
        assert float(lr(step)) == pytest.approx(expected, abs=1e-6), step


def updates(config, grads, params, steps=1):
    tx, _ = create_optimizer(config, steps_per_epoch=10, total_steps=100)
    state = tx.init(params)
    for _ in range(steps):
        update, state = tx.update(grads, state, params)
    return update


def test_sgd_momentum_and_nesterov():
    params, grads = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    plain = updates(optimizer_config(name="sgd", learning_rate=1.0), grads, params, steps=2)
    heavy = updates(optimizer_config(name="sgd", learning_rate=1.0, momentum=0.9), grads, params, 2)
    nesterov = updates(optimizer_config(name="sgd", learning_rate=1.0, momentum=0.9, nesterov=True),
                       grads, params, 2)
    assert float(plain["w"][0]) == pytest.approx(-1.0)
    assert float(heavy["w"][0]) == pytest.approx(-1.9)
    assert float(nesterov["w"][0]) == pytest.approx(-(0.9 * 1.9 + 1))


def test_clipping_bounds_the_update():
    config = optimizer_config(name="sgd", learning_rate=1.0, grad_clip_norm=1.0)
    update = updates(config, {"w": jnp.full(4, 10.0)}, {"w": jnp.zeros(4)})
    assert float(optax.tree.norm(update)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_weight_decay_shrinks_weights_without_gradient(name):
    config = optimizer_config(name=name, learning_rate=0.1, weight_decay=0.5)
    update = updates(config, {"w": jnp.zeros(2)}, {"w": jnp.ones(2)})
    assert float(update["w"][0]) < 0


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_frozen_parameters_get_no_update_not_even_decay_or_clipping(name):
    config = optimizer_config(name=name, learning_rate=0.1, weight_decay=0.5, grad_clip_norm=1.0,
                              frozen="params/Conv_.*")
    params = {"Conv_0": {"kernel": jnp.ones(3)}, "Conv_1": {"kernel": jnp.ones(2)},
              "Dense_0": {"kernel": jnp.ones(2)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 10.0), params)
    update = updates(config, grads, params, steps=2)
    assert jnp.all(update["Conv_0"]["kernel"] == 0) and jnp.all(update["Conv_1"]["kernel"] == 0)
    assert jnp.all(update["Dense_0"]["kernel"] < 0)
    # clipping sees only the parameters that train: their update is that of the model without
    # the frozen ones
    alone = updates(optimizer_config(name=name, learning_rate=0.1, weight_decay=0.5,
                                     grad_clip_norm=1.0), {"Dense_0": grads["Dense_0"]},
                    {"Dense_0": params["Dense_0"]}, steps=2)
    assert jnp.array_equal(update["Dense_0"]["kernel"], alone["Dense_0"]["kernel"])


def test_a_frozen_regex_must_match_a_whole_parameter_path_and_not_all():
    params = {"Conv_0": {"kernel": jnp.ones(3)}, "Dense_0": {"kernel": jnp.ones(2)}}
    assert frozen_parameters(optimizer_config(frozen="params/Dense_0/.*"), params) == [
        "params/Dense_0/kernel"]
    assert frozen_parameters(optimizer_config(frozen=""), params) == []
    with pytest.raises(ConfigError, match=r"config.optimizer.frozen='Dense_0' matches no parameter "
                                          r"\(the whole path must match\); the parameters are "
                                          r"params/Conv_0/kernel, params/Dense_0/kernel\."):
        frozen_parameters(optimizer_config(frozen="Dense_0"), params)
    with pytest.raises(ConfigError, match=r"matches every parameter, so nothing would train"):
        frozen_parameters(optimizer_config(frozen="params/.*"), params)
