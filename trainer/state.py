"""The training state: everything a step changes and a checkpoint holds.

params and the optimizer state, the model's other variables (BatchNorm statistics, or any
collection it keeps: trainer/model.py), the step, the RNG key dropout keys are folded from, the
non-finite counters and, where asked for, the moving average of the parameters. The model and the
optimizer ride along as static parts: they are code, not arrays.
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training.dynamic_scale import DynamicScale


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # every collection of the model but its parameters
    rng: jax.Array  # dropout keys are folded from it and the step: reproducible on resume
    nonfinite_updates: jax.Array  # updates skipped for a non-finite loss or gradient
    first_nonfinite_step: jax.Array  # the step of the first one, -1 if none
    ema_params: Any = None  # config.ema_decay: the moving average of params (None: not kept)
    # config.precision="mixed_float16": Flax's DynamicScale, the loss scale and its count of
    # finite steps (None: no loss scaling)
    loss_scale: Any = None
    model: Any = flax.struct.field(pytree_node=False, default=None)  # a trainer.model.Model
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)

    def apply_gradients(self, *, grads, **changes):
        """The state after one update by `grads`, the step counted; `changes`: other fields."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state, **changes)


def create_train_state(model, tx, example_inputs, seed, shardings=None, ema=False,
                       loss_scaling=False, abstract=False) -> TrainState:
    """Initialises `model` (trainer.model.Model); `ema`: with a moving average of the parameters,
    starting at them; `loss_scaling`: with a dynamic loss scale (float16), starting at Flax's
    2^16. `abstract`: the state's shapes, dtypes and shardings only (jax.ShapeDtypeStruct),
    nothing allocated or computed.

    `shardings`: a function from the state's abstract form (jax.eval_shape) and the model's own
    sharding annotations to where each of its arrays goes (Parallel.state_shardings); None: JAX's
    default device. Jitted with those as out_shardings, each device computes only its own shards:
    a sharded state is never whole on one device (and Flax's eager init would compile dozens of
    small programs).
    """
    def init(key):
        params_key, dropout_key, state_key = jax.random.split(key, 3)
        params, model_state = model.init(params_key, dropout_key, example_inputs)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          model_state=model_state, rng=state_key,
                          nonfinite_updates=jnp.zeros((), jnp.int32),
                          first_nonfinite_step=jnp.full((), -1, jnp.int32),
                          ema_params=jax.tree.map(jnp.copy, params) if ema else None,
                          loss_scale=DynamicScale(fin_steps=jnp.zeros((), jnp.int32),
                                                  scale=jnp.asarray(2.0**16, jnp.float32))
                          if loss_scaling else None,
                          model=model, tx=tx)

    key = jax.random.PRNGKey(seed)
    shapes = jax.eval_shape(init, key)
    placement = shardings(shapes, model.annotations(example_inputs)) if shardings else None
    if abstract:
        return jax.tree.map(lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where),
                            shapes, placement or jax.tree.map(lambda _: None, shapes))
    return jax.jit(init, out_shardings=placement)(key)
