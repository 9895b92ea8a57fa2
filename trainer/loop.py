"""The training loop: `train_and_evaluate(config, workdir)`.

Everything that can be wrong with the config or the data is found (trainer/setup.py) before the
workdir is touched.
"""
import contextlib
import fcntl
import json
import math
import os
import signal
import sys
import threading
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import logging
from clu import parameter_overview

from datasets import DataError
from trainer import (evaluation, finetune, generation, input_pipeline, optim, preflight, record,
                     sharding)
from trainer.checkpoint import CheckpointMismatch, Checkpoints
from trainer.early_stopping import EarlyStopping
from trainer.errors import (SPOKEN, NonFiniteError, Stopped, StorageError, WorkdirError,
                            argument, os_error, same_again, setting)
from trainer.input_pipeline import WaitInterrupted
from trainer.parallel import local_copy
from trainer.progress import Progress
from trainer.runners import make_runner
from trainer.setup import build
from trainer.timetable import Timetable, event
from trainer.writers import MetricWriter, json_safe, prefixed, writing


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


@contextlib.contextmanager
def one_run_at_a_time(workdir):
    """Holds the workdir for this process (each process of a multi-host run its own lock file)
    with a kernel lock: a second run there is refused, and the kernel drops the lock when its
    holder ends, SIGKILL included, so no stale lock outlives a run."""
    path = os.path.join(workdir, f".lock.process{jax.process_index()}")
    with open(path, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise WorkdirError(  # pylint: disable=raise-missing-from
                f"--workdir={workdir} is in use by another run (pid {holder}); nothing was "
                f"changed. Wait for it to end or stop it, or give another --workdir.")
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def write_file(workdir, name, text):
    if jax.process_index() == 0:
        with writing(f"writing {name}"), open(os.path.join(workdir, name), "w",
                                              encoding="utf-8") as f:
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
    """SIGTERM and SIGINT ask the loop to save a checkpoint and stop. The first one puts back the
    system's default action, so a second one ends the process at once, even mid-step; or, where
    the process must live on (`keep_process`: a notebook's kernel), a second SIGINT raises
    KeyboardInterrupt at once. One that comes while the loop waits for a batch from the pipeline
    (slow or stuck workers) also ends the wait (WaitInterrupted), and the loop saves the last
    completed step and stops. With several processes JAX's preemption notice is used instead (see
    Checkpoints)."""

    def __init__(self, keep_process=False):
        self.received = None
        self.previous = {}
        self.second = {signal.SIGTERM: signal.SIG_DFL,
                       signal.SIGINT: signal.default_int_handler if keep_process else signal.SIG_DFL}

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            input_pipeline.STOP_ASKED.clear()
            self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def handle(self, signal_number, frame):
        del frame
        self.received = signal_number
        input_pipeline.STOP_ASKED.set()
        for s in self.previous:
            signal.signal(s, self.second[s])
        logging.warning("%s: the run stops at the end of this step, with a checkpoint; a second "
                        "one ends it at once.", signal.Signals(signal_number).name)

    def __exit__(self, *exc_info):
        for signal_number, handler in self.previous.items():
            signal.signal(signal_number, handler)
        if self.previous:
            input_pipeline.STOP_ASKED.clear()
        self.previous = {}


class Profile:
    """config.profile_steps=(start, end): a JAX profiler trace of steps start+1 to end in
    workdir/profile, for TensorBoard's profile plugin or Perfetto. A run resumed past `start`
    traces nothing."""

    def __init__(self, config, workdir):
        self.start, self.end = tuple(config.profile_steps) or (None, None)
        self.folder = os.path.join(workdir, "profile")
        self.tracing = False
        self.reached = None  # the last step run while tracing

    def at(self, step, pending):
        """Starts or ends the trace at `step`; `pending`: arrays the traced steps compute."""
        if self.tracing:
            self.reached = step
        if step == self.start:
            jax.profiler.start_trace(self.folder)
            self.tracing, self.reached = True, step
        elif step == self.end:
            self.stop(pending)

    def stop(self, pending):
        """Ends the trace at the end step, or where the run ended or stopped before it."""
        if self.tracing:
            jax.block_until_ready(pending)  # the traced steps' device work, in the trace
            jax.profiler.stop_trace()
            self.tracing = False
            cut_short = (f" (the run ended at step {self.reached}, before step {self.end})"
                         if self.reached < self.end else "")
            logging.info("Profile of steps %d to %d written to %s%s.", self.start + 1,
                         self.reached, self.folder, cut_short)


def check_finite(config, state, parallel, checkpoints, step):
    """Stops the run (config.nonfinite="stop") once a step met a NaN or an Inf; from that step on
    no update was applied. `step`: the step reached. Returns how many updates were skipped."""
    count = int(parallel.to_host(state.nonfinite_updates))
    if count and config.nonfinite == "stop":
        first = int(parallel.to_host(state.first_nonfinite_step)) + 1
        latest = checkpoints.latest_step()
        kept = (f"its checkpoints (latest: step {latest}) are intact" if latest is not None
                else "no checkpoint had been saved yet")
        raise NonFiniteError(
            f"a NaN or Inf in the loss or gradients at step {first} (seen at step {step}); the run "
            f"stopped there without applying it or any update after it, and {kept}. Lower the "
            f"learning rate, clip the gradients ({setting('optimizer.grad_clip_norm', 1.0)}) or "
            f"pass {setting('nonfinite', 'skip')} to skip such updates and go on.")
    return count


def results_written(workdir, step):
    """The final evaluation results.json holds for `step` ({} where it holds none: a run stopped
    before writing it)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            results = json.load(f)
        except ValueError:  # cut short by a kill
            return {}
    return {name: value for name, value in results.items() if name != "step"} if results.get(
        "step") == step else {}


def megabytes(count):
    return f"{count / 1e6:.1f} MB"


def write_results(workdir, step, scalars):
    for name in sorted(n for n, v in scalars.items() if not math.isfinite(v)):
        logging.warning("%s is %s at the end; results.json holds null for it.", name, scalars[name])
    write_file(workdir, "results.json", json.dumps({"step": step, **json_safe(scalars)}))


class Trained(NamedTuple):
    state: object  # the final TrainState, in checkpoint form
    final: dict  # the final evaluation: {"eval/loss": ..., ...}, "eval_ema/..." with ema_decay
    workdir: str  # where the run is: `workdir`, or a new subfolder of it with resume=False
    setup: object  # what the config built (trainer/setup.py)
    figures: list  # the paths of the figures written at the end


def train_and_evaluate(config, workdir, keep_process=False):
    """Trains to the end given by the config, resuming from the latest good checkpoint in `workdir`;
    returns what it Trained. SIGTERM or SIGINT at any time saves a checkpoint after the current
    step and raises Stopped; `keep_process`: a second SIGINT raises KeyboardInterrupt (a notebook's
    kernel lives on) rather than ending the process at once.
    """
    kept = workdir if config.resume else None  # where a resumed run keeps its tokenizer
    setup = build(config, workdir=kept, abstract=True)
    preflight.check_before_run(config, setup,
                               lambda other: build(other, workdir=kept, abstract=True))
    setup = setup.materialized()
    prepare_workdir(workdir)
    with one_run_at_a_time(workdir):
        if not config.resume:
            workdir = fresh_subfolder(workdir)
            prepare_workdir(workdir)
        return train_and_evaluate_in(config, setup, workdir, keep_process)


def train_and_evaluate_in(config, setup, workdir, keep_process):
    """train_and_evaluate, in a workdir this process holds. A file that cannot be written is a
    StorageError that says what the run still has."""
    checkpoints = Checkpoints(workdir, config.keep_checkpoints, best_metric=config.best_metric,
                              best_mode=config.best_mode)
    try:
        return train_and_evaluate_with(config, setup, workdir, keep_process, checkpoints)
    except StorageError as e:
        e.kept = e.kept or checkpoints.kept()
        raise


def train_and_evaluate_with(config, setup, workdir, keep_process, checkpoints):
    with StopSignals(keep_process) as stop:
        try:
            state, loop_values, changed = setup.state, {}, {}
            if checkpoints.latest_step() is not None:
                changed = record.check_resume(config, workdir, checkpoints.latest_step(),
                                              setup.validation_split)
            try:
                restored = checkpoints.restore_latest_good(state)
            except CheckpointMismatch as e:
                raise CheckpointMismatch(e.step, e.directory, e.what,
                                         record.settings_changed(config, workdir)) from e
            if restored is not None:
                state, loop_values = restored
                record.announce(int(state.step), changed)
            elif setup.init_from is not None:  # a fresh run, fine-tuned from another's arrays
                state = finetune.load(setup.init_from, state)
            early_stopping = EarlyStopping(config.early_stopping, loop_values.get("early_stopping"))
            step = int(local_copy(state.step))
            stopped_early_at = early_stopping.stopped_at
            pending = loop_values.get("evaluation_pending", False)
            if pending and results_written(workdir, step):
                # The evaluation a stop cut short was done by a resume that ended the run there:
                # early stopping, whose verdict no checkpoint after this one holds.
                pending, stopped_early_at = False, step
            end = setup.total_steps if stopped_early_at is None else stopped_early_at
            if step < end or pending:
                if jax.process_index() == 0:
                    record.write(workdir, config, step, changed, setup.validation_split,
                                 setup.dataset.tokenizer)
                state, step, eval_scalars = train(config, setup, workdir, checkpoints, state, step,
                                                  stop, early_stopping, loop_values)
            elif results_written(workdir, step):
                logging.info("The run in %s is already complete: %s.", workdir,
                             reached(step, setup.total_steps, stopped_early_at))
                return Trained(state, results_written(workdir, step), workdir, setup, [])
            else:
                logging.info("The run in %s is complete (step %d), but it was stopped before its "
                             "results were written; writing them now.", workdir, step)
                try:
                    eval_scalars, _ = evaluation.evaluate_state(setup, state)
                except WaitInterrupted:  # a stop while waiting for test batches
                    raise stopped(stop, step, checkpoints, config, workdir) from None
            try:
                eval_scalars = {**eval_scalars,
                                **chosen_model_tested(setup, checkpoints, step, eval_scalars)}
            except WaitInterrupted:  # the run is complete: the same command writes its results
                raise stopped(stop, step, checkpoints, config, workdir) from None
        finally:
            try:
                checkpoints.wait()
            finally:
                checkpoints.close()
    write_results(workdir, step, eval_scalars)
    figures = []
    if config.plots:  # every process computes the predictions, of a state maybe sharded over them
        with writing("writing the figures"):
            figures = evaluation.write_figures(setup, state, workdir)
        if figures:
            logging.info("Figures: %s", ", ".join(figures))
    return Trained(state, eval_scalars, workdir, setup, figures)


def confusion_pictures(workdir, arrays):
    """confusion_matrix_<evaluation>.png of each confusion matrix evaluated, the latest; returns
    the pictures, for TensorBoard."""
    from trainer import plots  # pylint: disable=g-import-not-at-top  (matplotlib: only here)
    return {name: plots.evaluation_confusion(workdir, name.split("/")[0], counts)
            for name, counts in arrays.items()}


def chosen_model_tested(setup, checkpoints, step, final):
    """The test split's figures of the model selection chose: the best checkpoint by
    config.best_metric, evaluated by every evaluation of the test split ({"best_step": 300,
    "best/test/accuracy": ...}); {} without a best checkpoint or such an evaluation. `final`: the
    evaluation of the run's last step, which it is where the best is the last."""
    best = checkpoints.best_step() if setup.config.best_metric else None
    testing = [each for each in setup.evaluations if each.split == "test"]
    if best is None or not testing:
        return {}
    if best == step:
        scalars = final
    else:
        state, _ = checkpoints.restore(setup.state, best)
        scalars = evaluation.evaluate_scalars(evaluation.compile_eval(setup), setup,
                                              setup.parallel.to_device_form(state), testing)
    names = {prefix for each in testing for prefix in each.prefixes(setup.config.ema_decay)}
    chosen = {f"best/{name}": value for name, value in scalars.items()
              if name.split("/")[0] in names}
    logging.info("The model chosen by %s, at step %d: %s.", setup.config.best_metric, best,
                 ", ".join(f"{name}={value:.4g}" for name, value in chosen.items()))
    return {"best_step": best, **chosen}


def reached(step, total_steps, stopped_early_at):
    """How far a complete run went, against the `total_steps` asked for now."""
    if step < total_steps and stopped_early_at is not None:
        return (f"early stopping ended it at step {step} of {total_steps} (other early_stopping "
                f"settings go on from there)")
    if step == total_steps:
        return f"step {step} of {total_steps}"
    earlier = "--step=N of scripts/evaluate.py" if SPOKEN["flags"] else "api.load(workdir, step=N)"
    return (f"step {step}, past the {total_steps} steps asked for now (it trains no further, nor "
            f"back; {earlier} uses an earlier checkpoint)")


def data_failed(error, checkpoints, state, step, loop, started_at):
    """The DataError of data that broke mid-run, once the state of the last completed step is
    saved (where it was not already and can be). Data that failed before this session's first
    step (workers that could not start) is the error alone: there is nothing new to keep."""
    if step == started_at:
        return error
    try:
        if not checkpoints.holds(step):
            checkpoints.save(state, loop=loop)
        checkpoints.wait()
        kept = f"the checkpoint of step {step}, the last completed, is saved"
    except StorageError as e:
        kept = f"the checkpoint of step {step} could not be saved either ({os_error(e.cause)})"
    return DataError(f"{error} ({kept}: once the data is whole again, {same_again()} to "
                     f"resume)")


def stopped(stop, step, checkpoints, config, workdir):
    """The Stopped of a stop signal (or a preemption notice) at `step`, its checkpoint saved."""
    name = signal.Signals(stop.received).name if stop.received else "preemption"
    return Stopped(f"Stopped by {name} at step {step}, with a checkpoint saved in "
                   f"{checkpoints.directory}. {how_to_resume(config, workdir)}",
                   stop.received or signal.SIGTERM)


def how_to_resume(config, workdir):
    """How to go on from a stop: the same again, but where resume=False made a new subfolder
    (the same again would make another)."""
    if config.resume:
        return f"To resume, {same_again()}."
    return (f"To resume, give {argument('workdir', workdir)} and {setting('resume', True)}: with resume=False the same "
            f"again would start another run beside it.")


def write_samples(config, setup, state, writer, step):
    """A language model's text after each of config.samples.prompts, written at an evaluation
    (console, TensorBoard, metrics.jsonl), each step's with a key of its own."""
    samples = config.get("samples")
    if not (samples and samples.prompts and setup.dataset.tokenizer is not None):
        return
    texts = generation.complete(
        state, setup.dataset, list(samples.prompts), max_new_tokens=samples.max_new_tokens,
        temperature=samples.temperature, top_k=samples.top_k, top_p=samples.top_p,
        seed=int(np.random.SeedSequence([config.seed, step]).generate_state(1)[0]))
    text = "\n\n".join(prompt + sample for prompt, sample in zip(samples.prompts, texts))
    if jax.process_index() == 0:
        logging.info("Samples at step %d:\n%s", step, text)
    writer.write_text(step, "samples", text)


def train(config, setup, workdir, checkpoints, state, step, stop, early_stopping, loop_values):
    """Steps from `step` to the end, or to an early stop; returns (state in checkpoint form, the
    step reached, the final evaluation's scalars). `loop_values`: those of the checkpoint resumed
    from: the running train metrics (the steps since its last log), so that the next log averages
    the same steps as in a run never stopped; and whether a stop cut short the evaluation of its
    step, which is then done first, so that the logged history is the same too."""
    parallel, task, total_steps = setup.parallel, setup.task, setup.total_steps
    writer = MetricWriter(config, workdir, step)
    if step == 0:  # "global": statistics of sharded arrays, computed where their shards are
        logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(
            state.params, include_stats="global"))
    frozen = optim.describe_frozen(config.optimizer, state.params)
    if frozen:
        logging.info("%s", frozen)
    logging.info("The train state takes %s on each device, of %s whole.",
                 megabytes(sharding.bytes_on(state, jax.local_devices()[0])),
                 megabytes(sum(x.nbytes for x in jax.tree.leaves(state))))
    writer.write_text(step, "config", config.to_json_best_effort(indent=2))
    logging.info("Training steps %d to %d: %d steps an epoch of batch %d, %s.", step, total_steps,
                 setup.steps_per_epoch, config.batch_size, parallel.describe())

    runner = make_runner(config, setup, step)
    utilisation = preflight.utilisation_of(config, setup)  # MFU, on accelerators of a table
    eval_fn = evaluation.compile_eval(setup)
    timetable = Timetable.from_config(config, setup.steps_per_epoch, total_steps)
    logging.info("Steps run %s.", runner.description)
    if setup.describe_streaming():
        logging.info("%s", setup.describe_streaming())
    state = parallel.to_device_form(state)
    train_metrics = parallel.metrics_from_values(task.collection, loop_values.get("train_metrics"))
    eval_scalars = {}
    last_log_time, last_log_step = time.perf_counter(), step
    profile = Profile(config, workdir)
    started_at = step

    def loop_now(**more):
        """The loop's values a checkpoint of this moment holds (trainer/checkpoint.py)."""
        return {"early_stopping": early_stopping.values(),
                "train_metrics": parallel.metrics_values(train_metrics), **more}

    def save_and_stop(evaluation_pending=()):
        """The Stopped of a signal that ended a wait for data at `step`: the state of that step,
        the last completed, saved where it is not already (with `evaluation_pending`, the names
        of the evaluations due at the step that the stop cut short, for the resumed run to do
        first)."""
        if not checkpoints.holds(step):
            check_finite(config, state, parallel, checkpoints, step)
            checkpoints.save(parallel.to_checkpoint_form(state),
                             loop=loop_now(evaluation_pending=list(evaluation_pending)))
        checkpoints.wait()
        return stopped(stop, step, checkpoints, config, workdir)

    def evaluate_at(at, due):
        """The evaluations `due` at step `at`, logged together: every one of them before early
        stopping and the best checkpoint decide. Returns their scalars and early stopping's
        verdict."""
        nonlocal last_log_time
        eval_start = time.perf_counter()
        try:
            scalars, arrays = evaluation.evaluate_all(eval_fn, setup, state, due)
        except WaitInterrupted:  # a stop while waiting for eval batches: evaluated on resume
            raise save_and_stop(evaluation_pending=[each.name for each in due]) from None
        writer.write_scalars(at, scalars)
        if arrays and jax.process_index() == 0:
            with writing("drawing the confusion matrices"):
                writer.write_images(at, confusion_pictures(workdir, arrays))
        progress.show(at, scalars, evaluation=True)
        write_samples(config, setup, parallel.to_checkpoint_form(state), writer, at)
        last_log_time += time.perf_counter() - eval_start  # not training speed
        return scalars, early_stopping.update(at, scalars)

    try:
        with Progress(setup.steps_per_epoch, total_steps, jax.process_index() == 0) as progress:
            profile.at(step, train_metrics)
            pending = loop_values.get("evaluation_pending")
            if pending is True:  # a checkpoint of the single evaluation's days
                pending = [each.name for each in setup.evaluations]
            if pending:
                eval_scalars, stopped_early = evaluate_at(step, [
                    each for each in setup.evaluations if each.name in pending])
                if stopped_early:  # the checkpoint of this step is saved: the run ends there
                    logging.info("%s", stopped_early)
                    return parallel.to_checkpoint_form(state), step, eval_scalars
            while step < total_steps:
                done_before = step
                try:
                    state, train_metrics, step = runner.run(state, train_metrics, step,
                                                            timetable.next_boundary(step))
                except DataError as e:  # data that vanished or broke mid-run
                    raise data_failed(e, checkpoints, parallel.to_checkpoint_form(state), step,
                                      loop_now(), started_at) from e
                except WaitInterrupted:  # a stop while the workers were reading the next batch
                    raise save_and_stop() from None
                progress.advance(step, step - done_before)
                checkpoints.check()
                profile.at(step, train_metrics)
                if runner.waits_each_call:  # a NaN stops the run at the end of its chunk
                    check_finite(config, state, parallel, checkpoints, step)
                events = timetable.events_at(step)

                if "log" in events:
                    # Reading the metrics waits for the steps to finish: only then is the time taken.
                    scalars = {name: float(value) for name, value in prefixed(
                        "train", parallel.to_host(train_metrics).compute()).items()}
                    now = time.perf_counter()
                    steps_per_sec = (step - last_log_step) / (now - last_log_time)
                    if setup.learning_rate is not None:  # None: an optimizer given built
                        scalars["learning_rate"] = setup.learning_rate(step - 1)
                    scalars["steps_per_sec"] = steps_per_sec
                    if utilisation is not None:
                        scalars["mfu"] = utilisation(steps_per_sec)
                    if "train/tokens" in scalars:  # a language model's real tokens (tasks.Tokens)
                        scalars["tokens_per_sec"] = scalars.pop("train/tokens") / (
                            now - last_log_time)
                    skipped = check_finite(config, state, parallel, checkpoints, step)
                    if skipped:
                        scalars["train/nonfinite_updates"] = skipped
                    if state.loss_scale is not None:  # float16: lowered at each overflow
                        scalars["train/loss_scale"] = float(parallel.to_host(
                            state.loss_scale.scale))
                    writer.write_scalars(step, scalars)
                    progress.report(step, steps_per_sec)
                    progress.show(step, scalars)
                    train_metrics = parallel.empty_metrics(task.collection)
                    last_log_time, last_log_step = now, step

                stopped_early, scalars = None, {}
                due = [each for each in setup.evaluations if event(each) in events]
                if due:
                    scalars, stopped_early = evaluate_at(step, due)
                    if stopped_early:  # the run ends here: the evaluations of its end too
                        rest = [each for each in setup.evaluations if each not in due]
                        scalars = {**scalars, **(evaluate_at(step, rest)[0] if rest else {})}
                    eval_scalars = scalars

                stopping = stop.received or checkpoints.reached_preemption(step)
                # With best_metric, every evaluation of it is saved, with the metrics of every
                # evaluation due, so that the best can be kept.
                evaluated_for_best = config.best_metric in scalars
                if "checkpoint" in events or stopping or stopped_early or evaluated_for_best:
                    check_finite(config, state, parallel, checkpoints, step)
                    checkpoints.save(parallel.to_checkpoint_form(state), loop=loop_now(),
                                     metrics=scalars if evaluated_for_best else None)
                if stopped_early:
                    logging.info("%s", stopped_early)
                    break
                if stopping:
                    checkpoints.wait()
                    raise stopped(stop, step, checkpoints, config, workdir)
    finally:
        failing = sys.exc_info()[1] is not None
        profile.stop(train_metrics)
        runner.close()
        try:
            writer.close()
        except StorageError:
            if not failing:  # else the failure under way is the one to report
                raise
    return parallel.to_checkpoint_form(state), step, eval_scalars
