"""The training loop: `train_and_evaluate(config, workdir)`.

Everything that can be wrong with the config or the data is found before the workdir is touched.
"""
import dataclasses
import json
import os
import signal
import threading
import time
from typing import Callable

import jax
from absl import logging
from clu import parameter_overview

import datasets
import models
from trainer import batching
from trainer.checkpoint import Checkpoints
from trainer.config_check import validate_config
from trainer.errors import ConfigError, NonFiniteError, Stopped, WorkdirError
from trainer.metrics import MetricWriter, prefixed
from trainer.optim import create_optimizer
from trainer.parallel import DataParallel, local_copy
from trainer.progress import Progress
from trainer.state import TrainState, create_train_state
from trainer.steps import eval_step, train_step_into
from trainer.tasks import TASKS, Task


def prepare_workdir(workdir):
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder. Give a folder path.")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create --workdir={workdir}: {e.strerror}. "
                           f"Give a folder you can write to.") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir={workdir} is not writable. Give a folder you can write to.")


def evaluate(eval_step_fn, state, split, batch_size, parallel):
    total = None
    for batch in batching.eval_batches(split, batch_size):
        metrics = parallel.to_host(eval_step_fn(state, parallel.put_batch(batch)))
        total = metrics if total is None else total.merge(metrics)
    return {name: float(value) for name, value in total.compute().items()}


def write_file(workdir, name, text):
    if jax.process_index() == 0:
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
            f.write(text)


def fresh_subfolder(workdir):
    """config.resume=False: a new run beside the old checkpoints, never over them."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return workdir
    k = 1
    while os.path.exists(os.path.join(workdir, f"restart_{k}")):
        k += 1
    fresh = os.path.join(workdir, f"restart_{k}")
    logging.info("config.resume=False: starting afresh in %s; the checkpoints in %s stay.",
                 fresh, workdir)
    return fresh


class StopSignals:
    """SIGTERM and SIGINT ask the loop to save a checkpoint and stop; a second one ends the process
    at once. With several processes JAX's preemption notice is used instead (see Checkpoints)."""

    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def handle(self, signal_number, frame):
        del frame
        self.received = signal_number
        self.__exit__()

    def __exit__(self, *exc_info):
        for signal_number, handler in self.previous.items():
            signal.signal(signal_number, handler)
        self.previous = {}


def check_finite(config, state, parallel, step, checkpoints):
    """Stops the run (config.nonfinite="stop") once an update was skipped for a NaN or an Inf."""
    count = int(parallel.to_host(state.nonfinite_updates))
    if count and config.nonfinite == "stop":
        first = int(parallel.to_host(state.first_nonfinite_step)) + 1
        raise NonFiniteError(
            f"a NaN or Inf in the loss or gradients at step {first}; the run stopped at step "
            f"{step} without applying it, and its checkpoints (latest: step "
            f"{checkpoints.latest_step()}) are intact. Lower the learning rate, clip the gradients "
            f"(--config.optimizer.grad_clip_norm) or pass --config.nonfinite=skip to skip such "
            f"updates and go on.")
    return count


def train_and_evaluate(config, workdir):
    """Trains to the end given by the config, resuming from the latest good checkpoint in `workdir`.

    Returns (final state, metrics of the last evaluation; empty if the run was already complete).
    SIGTERM or SIGINT at any time saves a checkpoint after the current step and raises Stopped.
    """
    with StopSignals() as stop:
        return train_until_done_or_stopped(config, workdir, stop)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a config builds before any file is touched."""
    parallel: DataParallel
    dataset: datasets.Dataset
    task: Task
    state: TrainState  # freshly initialised, replicated over all devices
    schedule: Callable
    steps_per_epoch: int
    total_steps: int


def with_dtype(model, dtype):
    """config.dtype: the model computes in it; parameters and optimizer state stay float32."""
    if "dtype" in getattr(model, "__dataclass_fields__", {}):
        return model.clone(dtype=dtype)
    if dtype != "float32":
        raise ConfigError(f"config.dtype={dtype!r} needs a model with a dtype field, and "
                          f"{type(model).__name__} has none. Add one, or use float32.")
    return model


def build(config) -> Setup:
    """Checks the config and builds data, model, optimizer and state; raises a user error if any
    of them cannot be built from it."""
    validate_config(config)
    parallel = DataParallel(config.parallelism)
    parallel.check_batch_size("batch_size", config.batch_size)
    parallel.check_batch_size("eval_batch_size", config.eval_batch_size)
    dataset = datasets.get_dataset(config.dataset)
    model = parallel.with_axis_name(with_dtype(models.get_model(config.model), config.dtype))
    steps_per_epoch = dataset.num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"config.batch_size={config.batch_size} is larger than the training split "
                          f"({dataset.num_train} examples). Use a batch size <= {dataset.num_train}.")
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch
    tx, schedule = create_optimizer(config.optimizer, steps_per_epoch, total_steps)
    example_inputs = dataset.prepare_inputs(dataset.train["inputs"][:1])
    try:
        state = create_train_state(model, tx, example_inputs, config.seed, parallel.replicated)
    except Exception as e:  # pylint: disable=broad-except
        raise models.ModelError(
            f"config.model ({config.model.name!r}) cannot take the inputs of data set "
            f"{config.dataset.name!r}, of shape {tuple(example_inputs.shape[1:])}: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    return Setup(parallel, dataset, TASKS[config.task], state, schedule, steps_per_epoch,
                 total_steps)


def next_boundary(config, setup, step):
    """The first step after `step` at which the loop must look: a log, eval or checkpoint step, an
    epoch's end (the data order changes there) or the end."""
    intervals = (config.log_every_steps, config.checkpoint_every_steps, config.eval_every_steps,
                 setup.steps_per_epoch)
    return min([setup.total_steps] + [(step // k + 1) * k for k in intervals if k])


def fits_on_device(split):
    """Whether a training split takes under a quarter of a device's memory (unknown: assume so)."""
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    return limit is None or sum(a.nbytes for a in split.values()) < limit // 4


def has_convolution(setup):
    """Whether the model's forward pass has a convolution (traced, not run)."""
    state, dataset = setup.state, setup.dataset
    forward = jax.make_jaxpr(lambda variables, inputs: state.apply_fn(variables, inputs, train=False))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return "conv_general_dilated" in str(forward(variables, dataset.prepare_inputs(
        dataset.train["inputs"][:1])))


def use_fused_steps(config, setup):
    if config.steps != "auto":
        return config.steps == "fused"
    # Measured (README, Speed): fused is the faster path (an MLP on the CPU, the CNN on an H100)
    # but for convolutions on the CPU, which XLA runs ~10x slower inside a loop (jax-ml/jax#12868).
    return fits_on_device(setup.dataset.train) and not (
        jax.default_backend() == "cpu" and has_convolution(setup))


def step_runner(config, setup, start_step):
    """Returns (run, description); run(state, metrics, step, boundary) does steps from `step`, at
    most up to `boundary`, merging their metrics into `metrics` on the device, and returns
    (state, metrics, how many steps it did)."""
    parallel, dataset, task = setup.parallel, setup.dataset, setup.task
    if use_fused_steps(config, setup):
        data = parallel.put_replicated(dataset.train)
        fused_steps = parallel.compile_fused(
            seed=config.seed, steps_per_epoch=setup.steps_per_epoch, batch_size=config.batch_size,
            task=task, prepare_inputs=dataset.prepare_inputs)

        def run_fused(state, metrics, step, boundary):
            return (*fused_steps(state, data, metrics, step, boundary - step), boundary - step)

        return run_fused, "fused: the training split in device memory, many steps a call"

    batches = batching.prefetch(
        batching.train_batches(dataset.train, config.seed, config.batch_size, start_step,
                               setup.total_steps), parallel.put_batch)
    one_step = parallel.compile(train_step_into, donate_state=True, task=task,
                                prepare_inputs=dataset.prepare_inputs)

    def run_one(state, metrics, step, boundary):
        del step, boundary
        return (*one_step(state, metrics, next(batches)), 1)

    return run_one, "a call per step, batches from the host (2 prefetched to the device)"


def train_until_done_or_stopped(config, workdir, stop):
    setup = build(config)
    parallel, dataset, task, state = setup.parallel, setup.dataset, setup.task, setup.state
    schedule, steps_per_epoch, total_steps = setup.schedule, setup.steps_per_epoch, setup.total_steps
    prepare_workdir(workdir)
    if not config.resume:
        workdir = fresh_subfolder(workdir)
        prepare_workdir(workdir)
    checkpoints = Checkpoints(workdir, config.keep_checkpoints)
    restored = checkpoints.restore_latest_good(state)
    if restored is not None:
        state = restored
        logging.info("Resuming from the checkpoint at step %d.", state.step)
    step = int(local_copy(state.step))
    if step >= total_steps:
        logging.info("The run in %s is already complete: step %d of %d.", workdir, step, total_steps)
        checkpoints.close()
        return state, {}

    writer = MetricWriter(workdir)
    if step == 0:
        logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(
            local_copy(state.params)))
        writer.write_text("config", config.to_json_best_effort(indent=2))
    write_file(workdir, "config.json", config.to_json_best_effort(indent=2))
    logging.info("Training steps %d to %d: %d steps an epoch of batch %d, %s.", step, total_steps,
                 steps_per_epoch, config.batch_size, parallel.describe())

    run_steps, how = step_runner(config, setup, step)
    eval_step_fn = parallel.compile(eval_step, task=task, prepare_inputs=dataset.prepare_inputs)
    logging.info("Steps run %s.", how)
    state = parallel.to_device_form(state)
    train_metrics, eval_metrics = parallel.empty_metrics(task.metrics), {}
    last_log_time, last_log_step = time.perf_counter(), step
    try:
        with Progress(steps_per_epoch, total_steps, jax.process_index() == 0) as progress:
            while step < total_steps:
                state, train_metrics, done = run_steps(state, train_metrics, step,
                                                       next_boundary(config, setup, step))
                if parallel.one_step_in_flight:
                    jax.block_until_ready(train_metrics)
                step += done
                progress.advance(step, done)
                is_last = step == total_steps

                if step % config.log_every_steps == 0 or is_last:
                    # Reading the metrics waits for the steps to finish: only then is the time taken.
                    scalars = {name: float(value) for name, value in prefixed(
                        "train", parallel.to_host(train_metrics).compute()).items()}
                    now = time.perf_counter()
                    steps_per_sec = (step - last_log_step) / (now - last_log_time)
                    scalars.update(learning_rate=schedule(step - 1), steps_per_sec=steps_per_sec)
                    skipped = check_finite(config, state, parallel, step, checkpoints)
                    if skipped:
                        scalars["train/nonfinite_updates"] = skipped
                    writer.write_scalars(step, scalars)
                    progress.report(step, steps_per_sec)
                    train_metrics = parallel.empty_metrics(task.metrics)
                    last_log_time, last_log_step = now, step

                epoch_ended = step % steps_per_epoch == 0
                if (is_last or (config.eval_every_steps and step % config.eval_every_steps == 0)
                        or (epoch_ended and config.eval_every_epochs
                            and (step // steps_per_epoch) % config.eval_every_epochs == 0)):
                    eval_start = time.perf_counter()
                    eval_metrics = evaluate(eval_step_fn, state, dataset.test,
                                            config.eval_batch_size, parallel)
                    writer.write_scalars(step, prefixed("eval", eval_metrics))
                    last_log_time += time.perf_counter() - eval_start  # not training speed

                stopping = stop.received or checkpoints.reached_preemption(step)
                if step % config.checkpoint_every_steps == 0 or is_last or stopping:
                    check_finite(config, state, parallel, step, checkpoints)
                    checkpoints.save(parallel.to_checkpoint_form(state))
                if stopping:
                    checkpoints.wait()
                    name = signal.Signals(stop.received).name if stop.received else "preemption"
                    raise Stopped(f"Stopped by {name} at step {step}, with a checkpoint saved in "
                                  f"{checkpoints.directory}. Run the same command to resume.",
                                  stop.received or signal.SIGTERM)
    finally:
        checkpoints.wait()
        checkpoints.close()
        writer.close()
    write_file(workdir, "results.json", json.dumps({"step": step, **prefixed("eval", eval_metrics)}))
    state = parallel.to_checkpoint_form(state)
    if config.plots and jax.process_index() == 0:
        from trainer import plots  # pylint: disable=g-import-not-at-top  (matplotlib: only here)
        logging.info("Figures: %s", ", ".join(plots.plot_all(setup, state, workdir, config.task)))
    return state, eval_metrics
