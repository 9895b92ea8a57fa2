"""The streaming input pipeline, on Grain: random-access source -> the order of (seed, epoch) ->
this process's rows of each global batch -> read, decode, augment in worker processes -> batch.
trainer/batching.py then prefetches the batches to the device.

Nothing here holds state worth saving: the order is a function of (seed, epoch), the position in
it is the step, and an example's augmentation is drawn from (seed, epoch, index), so a resumed run,
or a run with another number of workers, reads the same batches bit for bit. Grain runs the map
functions in spawned worker processes: this module imports no JAX.
"""
import atexit
import dataclasses
import gc
import multiprocessing
import os
import threading
from typing import Callable

import grain
import numpy as np
from absl import logging
from grain._src.python.ipc import shared_memory_array as grain_shared_memory

from datasets import DataError
from trainer import batching


def default_workers():
    """One worker a core but one, at most 8: the trainer's own thread keeps a core."""
    return min(8, max(1, (os.cpu_count() or 2) - 1))


def read(source, indices):
    """The examples at `indices`, in one call where the source reads many at once."""
    indices = [int(i) for i in indices]
    many = getattr(source, "__getitems__", None)
    return many(indices) if many else [source[i] for i in indices]


def stack(examples):
    return {name: np.stack([e[name] for e in examples]) for name in examples[0]}


@dataclasses.dataclass(frozen=True)
class TrainBatch:
    """Step -> this process's rows of its global batch, read and augmented. A map call a batch,
    not an example: Grain's own cost per element is then paid once a batch."""
    source: object
    order: dict  # batching.train_indices' keywords
    augment: Callable | None

    def __call__(self, step):
        epoch, indices = batching.train_indices(step, num_examples=len(self.source), **self.order)
        try:
            examples = read(self.source, indices)
        except DataError as e:
            raise DataError(f"reading the batch of step {step + 1}: {e}") from e
        if self.augment is not None:
            examples = [self.augment(e, np.random.default_rng([self.order["seed"], epoch, index]))
                        for e, index in zip(examples, indices)]
        return stack(examples)


@dataclasses.dataclass(frozen=True)
class EvalBatch:
    source: object
    batches: list  # of (indices, mask) from batching.eval_indices

    def __call__(self, number):
        indices, mask = self.batches[number]
        return {**stack(read(self.source, indices)), "mask": mask}


def start_worker(worker_index, worker_count):
    """Workers take the cores the training leaves idle: at full priority they would slow the
    step they feed where cores are few (measured on 2 CPU cores, docs/speed.md). And a worker
    ends with the trainer, even one killed by SIGKILL: Grain stops its workers only from the
    trainer, so an orphan would live on, holding the trainer's stdout and stderr open."""
    del worker_index, worker_count
    os.nice(10)
    threading.Thread(target=exit_with_parent, daemon=True).start()


def exit_with_parent():
    # Returns when the parent's end of multiprocessing's pipe to this worker closes, as it does
    # when the parent dies, by any signal.
    multiprocessing.parent_process().join()
    os._exit(1)


# How often the workers are started again without a batch read in between, before a worker's
# death is taken as the data's (one that dies on the same batch each time) and raised.
RESTARTS = 3


def iterate(batch, start, end, workers, buffer):
    """batch(i) for i in [start, end), read `workers` processes wide (0: in this one), each
    `buffer` batches ahead. A worker that dies (SIGKILL, the OOM killer) ends Grain's iterator:
    the workers are started again from the next batch, which, a function of its number alone,
    is the one they would have read. Closing the generator (or dropping it) ends the workers and
    frees their shared memory."""
    restarts = 0
    while start < end:
        try:
            for value in stream(grain.MapDataset.range(start, end).map(batch), workers, buffer):
                yield value
                start, restarts = start + 1, 0
        except RuntimeError as e:
            if "Worker process was terminated unexpectedly" not in str(e):
                raise
            cause = str(e).splitlines()[0]
            if restarts == RESTARTS:
                raise DataError(
                    f"the data workers ended unexpectedly {RESTARTS + 1} times in a row, reading "
                    f"ahead from batch {start} ({cause}): a batch that kills its reader, or too "
                    f"little memory (set fewer config.pipeline.workers or a smaller "
                    f"config.pipeline.buffer)") from e
            restarts += 1
            logging.warning("A data worker process ended unexpectedly (%s); starting the workers "
                            "again from batch %d.", cause, start)


def stream(dataset, workers, buffer):
    """The elements of a MapDataset, read `workers` processes wide, each `buffer` ahead."""
    # Grain's default reads 500 elements ahead in 16 threads: 500 batches here, so data that
    # broke mid-run was seen ~500 steps late, and as much memory held. `buffer` batches in as
    # many threads read as fast on 2 cores (docs/speed.md#streaming).
    stream = dataset.to_iter_dataset(grain.ReadOptions(num_threads=buffer,
                                                       prefetch_buffer_size=buffer))
    if workers:
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=buffer), worker_init_fn=start_worker)
    iterator = iter(stream)
    atexit.register(unlink_freed_batches)  # once: registering the same function again is a no-op
    try:
        yield from iterator
    finally:
        iterator.close()


def unlink_freed_batches():
    """Batches come from the workers in shared memory, which Grain unlinks when their arrays are
    freed, in a thread of its own. At the end of an evaluation its last batches are still held in
    reference cycles (seen: a frame of Grain's prefetch thread), and a process that ends then
    would report them as leaked shared_memory objects: at exit, this frees them and waits for
    Grain's thread to unlink them."""
    gc.collect()
    pool = getattr(grain_shared_memory.SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        pool.apply(int)  # a no-op queued behind every unlink: it returns when they are done


def train_batches(source, start_step, end_step, *, augment, workers, buffer, **order):
    """This process's rows of the batches of steps [start_step, end_step). `order`:
    batching.train_indices' keywords but num_examples."""
    return iterate(TrainBatch(source, order, augment), start_step, end_step, workers, buffer)


def eval_batches(source, batch_size, process_index, process_count, *, workers, buffer):
    """Every example once, padded and masked as batching.eval_batches does for arrays."""
    batches = list(batching.eval_indices(len(source), batch_size, process_index, process_count))
    return iterate(EvalBatch(source, batches), 0, len(batches), workers, buffer)
