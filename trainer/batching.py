"""Which examples make each batch, and this process's share of it.

The training order is a permutation drawn from (seed, epoch) alone and the data position is the
step, so a resumed run sees exactly the batches an uninterrupted one would, and every path (fused
on the device, host batches of in-memory arrays, the streaming pipeline) sees the same ones. Each
process takes its own rows of every global batch. NumPy only: Grain's worker processes run it.
"""
import collections
import functools

import numpy as np


@functools.lru_cache(maxsize=2)
def epoch_order(seed, epoch, num_examples, order=None):
    """The training split's rows in `epoch`: a permutation, or `order(seed, epoch)` where the
    data set orders its own (datasets.Dataset.order: a mixture's weighted interleaving)."""
    if order is not None:
        return np.asarray(order(seed, epoch), np.int32)
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


def train_indices(step, *, seed, num_examples, batch_size, steps_per_epoch, process_index=0,
                  process_count=1, order=None):
    """(epoch, the indices of this process's rows of the global batch of `step`)."""
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    rows = batch_size // process_count
    start = step_in_epoch * batch_size + process_index * rows
    return epoch, epoch_order(seed, epoch, num_examples, order)[start:start + rows]


def eval_indices(num_examples, batch_size, process_index=0, process_count=1):
    """Every example exactly once: for each global batch, this process's (indices, mask); the last
    batch is padded with the last example, masked out."""
    rows = batch_size // process_count
    for start in range(0, num_examples, batch_size):
        positions = np.arange(start + process_index * rows, start + (process_index + 1) * rows)
        yield np.minimum(positions, num_examples - 1), positions < num_examples


def take(split, indices):
    return {name: array[indices] for name, array in split.items()}


def train_batches(split, start_step, end_step, **order):
    """This process's rows of the batches of steps [start_step, end_step) of in-memory arrays; the
    last partial batch of an epoch is dropped. `order`: train_indices' keywords."""
    for step in range(start_step, end_step):
        yield take(split, train_indices(step, num_examples=len(split["targets"]), **order)[1])


def eval_batches(split, batch_size, process_index=0, process_count=1):
    for indices, mask in eval_indices(len(split["targets"]), batch_size, process_index,
                                      process_count):
        yield {**take(split, indices), "mask": mask}


def prefetch(batches, put, size=2):
    """Puts `size` batches on the device ahead of the one in use, so the transfer of the next
    overlaps the step on this one (device_put is asynchronous)."""
    queue = collections.deque()
    for batch in batches:
        queue.append(put(batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
