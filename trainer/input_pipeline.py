"""The streaming input pipeline, on Grain: random-access source -> the order of (seed, epoch) ->
this process's rows of each global batch -> read, decode, augment in worker processes -> batch.
trainer/batching.py then prefetches the batches to the device.

Nothing here holds state worth saving: the order is a function of (seed, epoch), the position in
it is the step, and an example's augmentation is drawn from (seed, epoch, index), so a resumed run,
or a run with another number of workers, reads the same batches bit for bit. Grain runs the map
functions in spawned worker processes: this module imports no JAX.

The workers never run the user's main script again (workers_skip_main), and the trainer never
waits on Grain itself: a thread of its own (Feeder) takes Grain's batches, and the trainer's waits
for them end at a stop signal (WaitInterrupted) and at a worker that failed to start.
"""
import atexit
import contextlib
import dataclasses
import functools
import gc
import multiprocessing
import multiprocessing.spawn
import os
import queue
import select
import signal
import sys
import threading
import time
import traceback
from typing import Callable

import grain
import numpy as np
from absl import logging
from grain._src.python.ipc import shared_memory_array as grain_shared_memory

from datasets import DataError
from trainer import batching
from trainer.errors import ConfigError, setting


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
    # Ctrl-C reaches every process of the terminal's group: the trainer stops and ends its
    # workers; a worker's own KeyboardInterrupt would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=exit_with_parent, daemon=True).start()


def exit_with_parent():
    # Returns when the parent's end of multiprocessing's pipe to this worker closes, as it does
    # when the parent dies, by any signal.
    multiprocessing.parent_process().join()
    os._exit(1)


# Grain names its worker processes so (grain/_src/python/dataset/transformations/
# process_prefetch.py).
WORKER_NAME = "grain-process-prefetch"


def without_main(get_preparation_data):
    """multiprocessing.spawn.get_preparation_data, but for Grain's workers without the main
    module: a spawned process otherwise runs the user's main script again as it starts, and a
    script without `if __name__ == "__main__":` then trains again in every worker (and the
    worker dies of multiprocessing's "bootstrapping phase" RuntimeError while the trainer waits
    for it). What the workers run lives in modules they import; cloudpickle sends what the main
    script defined (a source, a transform) by value."""
    @functools.wraps(get_preparation_data)
    def prepare(name):
        data = get_preparation_data(name)
        if str(name).startswith(WORKER_NAME):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data
    prepare.skips_main = True
    return prepare


def workers_skip_main():
    """Installs without_main, once (multiprocessing looks the function up at each start)."""
    spawn = multiprocessing.spawn
    if not getattr(spawn.get_preparation_data, "skips_main", False):
        spawn.get_preparation_data = without_main(spawn.get_preparation_data)


def refuse_in_a_starting_process():
    """A ConfigError where training is asked for while multiprocessing starts this process (it runs
    the parent's main script again, as `__mp_main__`, before the process's own work): a script
    without the main guard that starts processes of its own would train again in each. The
    trainer's own workers never run the main script (workers_skip_main)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ConfigError(
            "training was started while multiprocessing was starting this process, which runs "
            "the main script again: put the script's training under "
            "`if __name__ == \"__main__\":` so that it runs only where the script is started.")


class WaitInterrupted(BaseException):
    """Raised by a wait for a batch once a stop is asked for (STOP_ASKED): the loop then saves the
    last completed step and stops. Not an Exception, so that no `except Exception` between takes
    it for a data error."""


# Set by the trainer's stop signal handler (trainer/loop.py StopSignals). The handler itself only
# sets it: raising from a handler would land wherever the main thread happens to be (inside a
# step, or a checkpoint's save); a wait for a batch looks at it between its short waits.
STOP_ASKED = threading.Event()


def grain_workers():
    """This process's live Grain worker processes."""
    return [p for p in multiprocessing.active_children() if p.name.startswith(WORKER_NAME)]


# Seconds a closing stream leaves Grain to stop its workers before they are killed: Grain waits
# up to 25 s for a worker inside a slow map call.
GRACE_SECONDS = 0.2
POLL_SECONDS = 0.1  # how often a wait for a batch looks up: a signal caught by another thread
ENDING = []  # Feeder threads a close left ending (see unlink_freed_batches)


class Feeder:
    """Grain's iterator, run in a thread of its own: the trainer waits on a queue of its own
    rather than inside Grain, in short waits that a stop signal ends, and a close never waits on
    Grain (whose close joins threads and processes with long or no time-outs)."""

    DONE = object()

    def __init__(self, dataset):
        self.batches = queue.Queue(maxsize=1)
        self.stopping = threading.Event()
        self.before = {p.pid for p in grain_workers()}
        self.thread = threading.Thread(target=self.feed, args=(dataset,), daemon=True,
                                       name="flaxfit-batches")
        self.thread.start()

    def feed(self, dataset):
        iterator = None
        try:
            iterator = iter(dataset)
            for element in iterator:
                if not self.put((element, None)):
                    return
            self.put((self.DONE, None))
        except BaseException as e:  # pylint: disable=broad-except  # handed to the trainer
            self.put((None, e))
        finally:
            if iterator is not None:
                try:
                    iterator.close()
                except Exception as e:  # pylint: disable=broad-except  # its error went first
                    logging.debug("Closing Grain's iterator: %s", e)

    def put(self, item):
        while not self.stopping.is_set():
            try:
                self.batches.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                pass
        return False

    def get(self):
        """The next element (DONE at the end); a worker's error raised here, and WaitInterrupted
        where a stop is asked for while there is none to take."""
        while True:
            try:
                element, error = self.batches.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                if STOP_ASKED.is_set():
                    raise WaitInterrupted() from None
                # feed() ends by putting DONE or its error: a thread gone without either died
                # some other way, and must not be waited for.
                if not self.thread.is_alive() and self.batches.empty():
                    raise DataError("the data pipeline's reading thread ended unexpectedly") from None
                unblock_launches_of_dead_workers()
        if error is not None:
            raise error
        return element

    def close(self):
        """Ends the thread and this stream's workers, within about 2 * GRACE_SECONDS."""
        self.stopping.set()
        with contextlib.suppress(queue.Empty):
            self.batches.get_nowait()  # a batch never taken
        self.thread.join(GRACE_SECONDS)
        if self.thread.is_alive():  # a worker inside a slow map call, or Grain waiting for one
            for process in grain_workers():
                if process.pid not in self.before:
                    process.kill()
            # Grain sees its dead workers within a second, frees their batches, and the thread
            # ends by itself: a stop does not wait for that; the process's exit does.
            self.thread.join(GRACE_SECONDS)
            if self.thread.is_alive():
                ENDING[:] = [t for t in ENDING if t.is_alive()] + [self.thread]


def unblock_launches_of_dead_workers():
    """Lets Grain see a worker that died while being started. Starting one, multiprocessing
    writes it its data (the whole source: 47 MB for MNIST in memory) into a pipe whose reading end
    the trainer itself holds open until the write is done: a worker that dies before reading it
    all (killed, out of memory) leaves that write, and with it Grain and the run, blocked for
    ever. Here, such a write's remaining bytes are read off, so that the start returns and Grain
    reports the dead worker as it reports any other (iterate then starts the workers again)."""
    for thread_id, frame in sys._current_frames().items():  # pylint: disable=protected-access
        while frame is not None and frame.f_code is not LAUNCH_CODE:
            frame = frame.f_back
        if frame is None:
            continue
        values = frame.f_locals
        popen, process = values.get("self"), values.get("process_obj")
        pid, reader = getattr(popen, "pid", None), values.get("child_r")
        if (pid is None or reader is None or pid in DRAINING or values.get("parent_w") is None
                or not str(getattr(process, "name", "")).startswith(WORKER_NAME)
                or not process_ended(pid)):
            continue
        DRAINING.add(pid)
        threading.Thread(target=drain, args=(os.dup(reader), thread_id, frame, pid), daemon=True,
                         name="flaxfit-drain").start()


try:  # the code of multiprocessing's start of a spawned process, where it writes the data
    from multiprocessing import popen_spawn_posix  # pylint: disable=ungrouped-imports
    LAUNCH_CODE = popen_spawn_posix.Popen._launch.__code__  # pylint: disable=protected-access
except (ImportError, AttributeError):  # not POSIX
    LAUNCH_CODE = None
DRAINING = set()  # the pids of dead workers whose start is being unblocked


def process_ended(pid):
    """Whether process `pid` (a child not yet waited for) has ended: a zombie, or gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:  # gone; or no /proc (not Linux): take it as running
        return os.path.isdir("/proc")


def drain(reader, thread_id, frame, pid):
    """Reads and drops what the start in `frame` of thread `thread_id` writes to the dead worker
    `pid`, until the start has moved on."""
    try:
        while frame_active(thread_id, frame):
            if select.select([reader], [], [], POLL_SECONDS)[0] and not os.read(reader, 1 << 20):
                break
    finally:
        os.close(reader)
        DRAINING.discard(pid)


def frame_active(thread_id, frame):
    """Whether `frame` is still on the stack of thread `thread_id`."""
    current = sys._current_frames().get(thread_id)  # pylint: disable=protected-access
    while current is not None:
        if current is frame:
            return True
        current = current.f_back
    return False


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
    """The elements of a MapDataset, read `workers` processes wide, each `buffer` ahead. A wait
    for one ends at a stop signal (WaitInterrupted); workers that could not start are one
    DataError (a worker that died of a signal is RuntimeError, for iterate to start again)."""
    # Grain's default reads 500 elements ahead in 16 threads: 500 batches here, so data that
    # broke mid-run was seen ~500 steps late, and as much memory held. `buffer` batches in as
    # many threads read as fast on 2 cores (docs/speed.md#streaming).
    stream = dataset.to_iter_dataset(grain.ReadOptions(num_threads=buffer,
                                                       prefetch_buffer_size=buffer))
    if workers:
        workers_skip_main()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=buffer), worker_init_fn=start_worker)
    feeder = Feeder(stream)
    atexit.register(unlink_freed_batches)  # once: registering the same function again is a no-op
    first = True
    try:
        while True:
            try:
                element = feeder.get()
            except Exception as e:  # pylint: disable=broad-except
                if first and workers:
                    raise not_started(e) from e
                raise
            if element is Feeder.DONE:
                return
            first = False
            yield element
    finally:
        feeder.close()


def not_started(error):
    """The error of workers that failed before their first batch, as one line where it is that:
    a worker that could not be started (its own error printed on stderr by multiprocessing), or
    the source or transform that could not be sent to the workers."""
    text = (str(error).splitlines() or [""])[0]
    if isinstance(error, DataError):
        return error
    workers_0 = setting("pipeline.workers", 0)
    if isinstance(error, RuntimeError) and "Worker process was terminated unexpectedly" in text:
        code = text.split("exit code ")[-1].split(".")[0] if "exit code " in text else ""
        if code.lstrip("-").isdigit() and int(code) < 0:  # killed: iterate starts them again
            return error
        return DataError(
            f"the data pipeline's worker processes ended as they started (exit code "
            f"{code if code.lstrip('-').isdigit() else 'unknown'}; the worker's own error is on "
            f"the process's stderr, in a notebook the kernel's log): a module they cannot import, a main script "
            f"run again in them without `if __name__ == \"__main__\":`, or too little memory. "
            f"Set {workers_0} to read in this process.")
    kind = f"{type(error).__name__}: {text}"
    if isinstance(error, ImportError):
        return DataError(
            f"the pipeline's worker processes could not import what the data needs ({kind}). "
            f"They are new Python processes that do not run the main script: make it importable "
            f"there (a module on sys.path or PYTHONPATH), or set {workers_0} to read in this "
            f"process.")
    if sent_to_workers(error):
        return DataError(
            f"the data (its source or transform) could not be sent to the pipeline's worker "
            f"processes ({kind}). Keep no open file, lock or connection in it (open them lazily, "
            f"at the first read), define its class in a module of its own, or set {workers_0} "
            f"to read in this process.")
    return error


def sent_to_workers(error):
    """Whether `error` arose pickling the data for the workers (in Grain's serialisation of the
    data set, or cloudpickle's): not a data file that fails to load."""
    return any(frame.f_code.co_name in ("_serialize_dataset", "_check_picklable") or
               os.path.basename(frame.f_code.co_filename) == "cloudpickle.py"
               for frame, _ in traceback.walk_tb(error.__traceback__)) or any(
                   words in str(error) for words in ("cannot pickle", "can't pickle"))


def unlink_freed_batches():
    """Batches come from the workers in shared memory, which Grain unlinks when their arrays are
    freed, in a thread of its own. At the end of an evaluation its last batches are still held in
    reference cycles (seen: a frame of Grain's prefetch thread), and a process that ends then
    would report them as leaked shared_memory objects: at exit, this waits (1.5 s at most) for
    the pipeline threads that a stop left ending, frees the batches and waits for Grain's thread
    to unlink them."""
    deadline = time.monotonic() + 1.5
    for thread in ENDING:
        thread.join(max(0.0, deadline - time.monotonic()))
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
