"""The training state: params, optimizer state, BatchNorm statistics, step and RNG key."""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax.training import train_state


class TrainState(train_state.TrainState):
    batch_stats: Any = flax.struct.field(default_factory=dict)
    rng: jax.Array = None  # dropout keys are folded from it and the step: reproducible on resume
    nonfinite_updates: jax.Array = None  # updates skipped for a non-finite loss or gradient
    first_nonfinite_step: jax.Array = None  # the step of the first one, -1 if none


def create_train_state(model, tx, example_inputs, seed, sharding=None) -> TrainState:
    """Initialises the model, its arrays placed by `sharding` (default: JAX's default device).

    Jitted, since Flax's eager init compiles dozens of small programs.
    """

    @functools.partial(jax.jit, out_shardings=sharding)
    def init(key):
        params_key, dropout_key, state_key = jax.random.split(key, 3)
        variables = model.init({"params": params_key, "dropout": dropout_key}, example_inputs,
                               train=False)
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}), rng=state_key,
                                 nonfinite_updates=jnp.zeros((), jnp.int32),
                                 first_nonfinite_step=jnp.full((), -1, jnp.int32))

    return init(jax.random.PRNGKey(seed))
