"""The streaming input pipeline, on Grain: random-access source -> the order of (seed, epoch) ->
this process's rows of each global batch -> read, decode, augment in worker processes -> batch.
trainer/batching.py then prefetches the batches to the device.

Nothing here holds state worth saving: the order is a function of (seed, epoch), the position in
it is the step, and an example's augmentation is drawn from (seed, epoch, index), so a resumed run,
or a run with another number of workers, reads the same batches bit for bit. Grain runs the map
functions in spawned worker processes: this module imports no JAX.
"""
import dataclasses
import os
from typing import Callable

import grain
import numpy as np

from trainer import batching


def default_workers():
    """One worker a core but one, at most 8: the trainer's own thread keeps a core."""
    return min(8, max(1, (os.cpu_count() or 2) - 1))


@dataclasses.dataclass(frozen=True)
class TrainExample:
    """Position in this process's stream of training examples -> the example, augmented."""
    source: object
    order: dict  # batching.train_indices' keywords
    augment: Callable | None

    def __call__(self, position):
        rows = self.order["batch_size"] // self.order["process_count"]
        step, row = divmod(position, rows)
        epoch, indices = batching.train_indices(step, num_examples=len(self.source), **self.order)
        index = int(indices[row])
        example = self.source[index]
        if self.augment is None:
            return example
        return self.augment(example, np.random.default_rng([self.order["seed"], epoch, index]))


@dataclasses.dataclass(frozen=True)
class EvalExample:
    source: object
    indices: np.ndarray
    mask: np.ndarray

    def __call__(self, position):
        return {**self.source[int(self.indices[position])], "mask": self.mask[position]}


def iterate(dataset, workers, buffer):
    """The batches of a MapDataset of batches, read `workers` processes wide (0: in this one).
    Closing the generator (or dropping it) ends the workers and frees their shared memory."""
    stream = dataset.to_iter_dataset()
    if workers:
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=buffer))
    iterator = iter(stream)
    try:
        yield from iterator
    finally:
        iterator.close()


def train_batches(source, start_step, end_step, *, augment, workers, buffer, **order):
    """This process's rows of the batches of steps [start_step, end_step). `order`:
    batching.train_indices' keywords but num_examples."""
    rows = order["batch_size"] // order["process_count"]
    positions = grain.MapDataset.range(start_step * rows, end_step * rows)
    return iterate(positions.map(TrainExample(source, order, augment)).batch(rows), workers, buffer)


def eval_batches(source, batch_size, process_index, process_count, *, workers, buffer):
    """Every example once, padded and masked as batching.eval_batches does for arrays."""
    pairs = list(batching.eval_indices(len(source), batch_size, process_index, process_count))
    indices, mask = np.concatenate([i for i, _ in pairs]), np.concatenate([m for _, m in pairs])
    rows = batch_size // process_count
    examples = grain.MapDataset.range(len(indices)).map(EvalExample(source, indices, mask))
    return iterate(examples.batch(rows), workers, buffer)
