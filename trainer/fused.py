"""Many train steps in one jitted call, on a training split held in device memory.

The same step as the per-step path (train_step_into), on the same batches (the epoch's order from
batching.epoch_order, put on the device once an epoch), inside a lax.fori_loop whose trip count is
an argument: one compile serves every chunk length, and the host is visited only between chunks.
"""
from jax import lax

from trainer import batching
from trainer.steps import train_step_into


def train_steps(state, data, order, metrics, start_step, num_steps, *, steps_per_epoch, batch_size,
                batch_sharding=None, axis_name=None, **step_args):
    """`num_steps` steps from `start_step`, all within the epoch whose permutation is `order`;
    returns (state, merged metrics).

    `data` is the whole training split on every device. Under jit, `batch_sharding` splits each
    gathered batch over the devices; under pmap (`axis_name`) each device gathers its own rows.
    `step_args` go to the train step.
    """
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
        return train_step_into(state, metrics, batch, axis_name=axis_name, **step_args)

    return lax.fori_loop(0, num_steps, one_step, (state, metrics))
