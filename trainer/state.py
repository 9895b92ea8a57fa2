"""The training state, and how the trainer calls a model.

TrainState: params, optimizer state, the model's other variables (BatchNorm statistics, or any
mutable collection it keeps), step, RNG key, the non-finite counters and, where asked for, the
moving average of the parameters.
"""
import dataclasses
import functools
import inspect
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training import train_state

# How a linen module's __call__ is told whether it trains, in the order looked for.
MODE_ARGUMENTS = ("train", "training", "deterministic")


class TrainState(train_state.TrainState):
    model_state: Any = flax.struct.field(default_factory=dict)  # every collection but "params"
    rng: jax.Array = None  # dropout keys are folded from it and the step: reproducible on resume
    nonfinite_updates: jax.Array = None  # updates skipped for a non-finite loss or gradient
    first_nonfinite_step: jax.Array = None  # the step of the first one, -1 if none
    ema_params: Any = None  # config.ema_decay: the moving average of params (None: not kept)


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity: a model may hold lists
class ModelApply:
    """`model.apply`, called as (variables, inputs, train, **apply_kwargs) whatever the model's own
    convention: `train=`, `training=`, `deterministic=` (negated), or none (a model that behaves
    the same in training and evaluation)."""
    model: nn.Module

    @functools.cached_property
    def mode_argument(self):
        parameters = inspect.signature(type(self.model).__call__).parameters
        return next((name for name in MODE_ARGUMENTS if name in parameters), None)

    def mode(self, train):
        if self.mode_argument is None:
            return {}
        return {self.mode_argument: (not train) if self.mode_argument == "deterministic" else train}

    def __call__(self, variables, inputs, train, **kwargs):
        return self.model.apply(variables, inputs, **self.mode(train), **kwargs)

    def init(self, rngs, inputs):
        return self.model.init(rngs, inputs, **self.mode(False))


def create_train_state(model, tx, example_inputs, seed, shardings=None, ema=False) -> TrainState:
    """Initialises the model; `ema`: with a moving average of the parameters, starting at them.

    `shardings`: a function from the state's abstract form (jax.eval_shape) to where each of its
    arrays goes (Parallel.state_shardings); None: JAX's default device. Jitted with those as
    out_shardings, each device computes only its own shards: a sharded state is never whole on
    one device (and Flax's eager init would compile dozens of small programs).
    """
    apply = ModelApply(model)

    def init(key):
        params_key, dropout_key, state_key = jax.random.split(key, 3)
        variables = dict(apply.init({"params": params_key, "dropout": dropout_key}, example_inputs))
        params = variables.pop("params", {})
        # What a model sows for inspection is not state: carried, it would grow every step.
        variables.pop("intermediates", None)
        return TrainState.create(apply_fn=apply, params=params, tx=tx, model_state=variables,
                                 rng=state_key, nonfinite_updates=jnp.zeros((), jnp.int32),
                                 first_nonfinite_step=jnp.full((), -1, jnp.int32),
                                 ema_params=jax.tree.map(jnp.copy, params) if ema else None)

    key = jax.random.PRNGKey(seed)
    placement = shardings(jax.eval_shape(init, key)) if shardings else None
    return jax.jit(init, out_shardings=placement)(key)
