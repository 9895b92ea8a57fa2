"""Many train steps in one jitted call, on a training split held in device memory.

The same step as the per-step path (train_step_into), on the same batches (batching.epoch_order
drawn on the device), inside a lax.fori_loop whose trip count is an argument: one compile serves
every chunk length, and the host is visited only at log, eval and checkpoint boundaries.
"""
import jax
from jax import lax

from trainer import batching
from trainer.steps import train_step_into


def train_steps(state, data, metrics, start_step, num_steps, *, seed, steps_per_epoch, batch_size,
                task, prepare_inputs, batch_sharding=None, axis_name=None):
    """`num_steps` steps from `start_step`, all within one epoch; returns (state, merged metrics).

    `data` is the whole training split on every device. Under jit, `batch_sharding` splits each
    gathered batch over the devices; under pmap (`axis_name`) each device gathers its own rows.
    """
    num_examples = data["targets"].shape[0]
    order = batching.epoch_order(seed, start_step // steps_per_epoch, num_examples)
    rows_per_device = batch_size // (lax.psum(1, axis_name) if axis_name else 1)

    def one_step(i, carry):
        state, metrics = carry
        first_row = ((start_step + i) % steps_per_epoch) * batch_size
        if axis_name:
            first_row += lax.axis_index(axis_name) * rows_per_device
        rows = lax.dynamic_slice_in_dim(order, first_row, rows_per_device)
        batch = batching.take(data, rows)
        if batch_sharding is not None:
            batch = lax.with_sharding_constraint(batch, batch_sharding)
        return train_step_into(state, metrics, batch, task=task, prepare_inputs=prepare_inputs,
                               axis_name=axis_name)

    return lax.fori_loop(0, num_steps, one_step, (state, metrics))
