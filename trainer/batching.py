"""Batches from in-memory splits. The training order is a function of (seed, epoch) alone, so a
resumed run sees exactly the batches the uninterrupted run would have seen, and the per-step (host)
and fused (device) paths see the same batches."""
import collections

import jax
import numpy as np


def epoch_order(seed, epoch, num_examples):
    """The permutation of the training split in `epoch`; traceable, so the fused path draws it on
    the device."""
    return jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), num_examples)


def take(split, indices):
    return {name: array[indices] for name, array in split.items()}


def train_batches(split, seed, batch_size, start_step, end_step):
    """Host batches for steps [start_step, end_step); the last partial batch of an epoch is dropped."""
    steps_per_epoch = len(split["targets"]) // batch_size
    order = None
    for step in range(start_step, end_step):
        epoch, index = divmod(step, steps_per_epoch)
        if order is None or index == 0:
            order = np.asarray(epoch_order(seed, epoch, len(split["targets"])))
        yield take(split, order[index * batch_size:(index + 1) * batch_size])


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


def eval_batches(split, batch_size):
    """Every example exactly once; the last batch is padded to full size and masked."""
    num_examples = len(split["targets"])
    for start in range(0, num_examples, batch_size):
        indices = np.arange(start, start + batch_size)
        batch = take(split, np.minimum(indices, num_examples - 1))
        batch["mask"] = indices < num_examples
        yield batch
