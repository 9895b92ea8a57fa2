"""Where metrics go: the console, and the writers of `config.writers` (by default TensorBoard
event files and `metrics.jsonl` in the workdir). Only process 0 writes.

A writer is a class with `write_scalars(step, scalars)`, `write_text(step, tag, text)` and
`close()`, made with those of `workdir`, `start_step` and `config` its constructor names; a
writer of your own is named 'module:Class' (trainer/parts.py). `start_step` is the step training
starts from: on a resumed run whatever a writer holds past it came from steps that are being done
again, and TensorBoard and `metrics.jsonl` drop it, so the history reads as one uninterrupted run's
(W&B keeps a run's history as it is: see WandB). Those two flush every write, so a SIGKILL loses
nothing logged. TensorBoard files come from tensorboardX: no TensorFlow (clu.metric_writers
imports it).

A writer class may also have a static `check()`, called when the config is checked, before anything
is written: the W&B writer's says whether the optional `wandb` package is installed.
"""
import contextlib
import json
import logging as std_logging
import math
import os
import secrets
import sys
import time

import jax
from absl import logging
from tensorboardX import summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog

from trainer import parts
from trainer.errors import ConfigError, StorageError

# tensorboardX warns of every non-finite scalar; the loop reports those itself, once, with a fix.
std_logging.getLogger("tensorboardX.x2num").setLevel(std_logging.ERROR)


def prefixed(prefix, computed_metrics):
    return {f"{prefix}/{name}": value for name, value in computed_metrics.items()}


def json_safe(scalars):
    """NaN and Inf are not JSON: they are written as null."""
    return {name: value if isinstance(value, str) or math.isfinite(value) else None
            for name, value in scalars.items()}


class TensorBoard:
    """Event files in the workdir (`tensorboard --logdir=WORKDIR`), written in the calling thread:
    tensorboardX's SummaryWriter hands events to a thread of its own, and its flush() does not wait
    for them, so a kill lost what it still held."""

    def __init__(self, workdir, start_step):
        self.events = EventsWriter(os.path.join(workdir, "events"), f".{os.getpid()}")
        # A restart marker: TensorBoard hides what earlier files hold from this step on.
        self.write([Event(step=start_step + 1, session_log=SessionLog(status=SessionLog.START))])

    def write(self, events):
        for event in events:
            event.wall_time = time.time()
            self.events.write_event(event)
        self.events.flush()

    def write_scalars(self, step, scalars):
        self.write([Event(step=step, summary=summary.scalar(name, value))
                    for name, value in scalars.items()])

    def write_text(self, step, tag, text):
        self.write([Event(step=step, summary=summary.text(tag, text))])

    def write_image(self, step, tag, image):
        """An (height, width, 3) uint8 picture (a confusion matrix)."""
        self.write([Event(step=step, summary=summary.image(tag, image, dataformats="HWC"))])

    def close(self):
        self.events.close()


class Jsonl:
    """`metrics.jsonl`: a JSON line per logged step, non-finite values as null."""

    def __init__(self, workdir, start_step):
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path):
            keep_lines_up_to(path, start_step)
        self.file = open(path, "a", encoding="utf-8")

    def write_scalars(self, step, scalars):
        self.file.write(json.dumps({"step": step, **json_safe(scalars)}) + "\n")
        self.file.flush()

    def write_text(self, step, tag, text):
        if tag != "config":  # config.json holds the config; a language model's samples go here
            self.write_scalars(step, {tag: text})

    def close(self):
        self.file.close()


def keep_lines_up_to(path, step):
    """Drops the lines of steps after `step` (and a line cut short by a kill), atomically."""
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError):
                continue
    replace_file(path, "".join(kept))


def replace_file(path, text):
    """Writes `text` to `path` atomically: a kill leaves the old file or the new one."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class WandB:
    """A Weights & Biases run (the optional extra: pip install -e ".[wandb]"), its files in
    WORKDIR/wandb, the config as its config. W&B's own WANDB_MODE says where it goes: online (the
    default), offline (files to upload later with `wandb sync`) or disabled. The run's id is kept in
    WORKDIR/wandb_run_id, so a resumed run continues the same W&B run (resume="allow").

    Redone steps: W&B ignores a step below the last one a run holds, so online the steps a killed
    run logged past `start_step` keep their first values and are not sent again (with the same
    config a resume is bitwise: the same values but for timings). Only W&B's server can rewind a
    run (`resume_from`); offline, each start writes a folder of its own, and the steps a killed run
    logged past its last checkpoint are in two of them (docs/using_a_run.md#weights--biases)."""

    ID_FILE = "wandb_run_id"
    # W&B writes its run file every 15 s, and a SIGKILL loses what it had not written: every 1 s
    # here, unless W&B's own variable says otherwise.
    FLUSH_VARIABLE, FLUSH_SECONDS = "WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL", 1.0

    @staticmethod
    def check():
        """The package, and W&B's credentials where it logs online: without them W&B fails only
        once the run has started writing its workdir."""
        sdk = wandb_package()
        settings = sdk.Settings()
        settings.update_from_system_settings()  # `wandb offline` and W&B's settings files
        settings.update_from_env_vars(dict(os.environ))  # WANDB_MODE, WANDB_API_KEY, ...
        if settings.mode in ("offline", "dryrun", "disabled"):
            return
        from wandb.sdk.lib.wbauth import authenticate  # pylint: disable=import-outside-toplevel
        if authenticate.authenticate_session(host=settings.base_url, source="flaxfit",
                                             prompt=False, update_session=False) is None:
            raise ConfigError("config.writers names 'wandb', which logs online, and no W&B API key "
                              "is configured: run `wandb login` or set WANDB_API_KEY; or keep the "
                              "run here, to upload later: WANDB_MODE=offline.")

    def __init__(self, workdir, config):
        sdk = wandb_package()
        run_id = read_or_write(os.path.join(workdir, self.ID_FILE), secrets.token_hex(6))
        fields = config.wandb
        settings = ({} if self.FLUSH_VARIABLE in os.environ else
                    {"x_transaction_log_flush_interval": self.FLUSH_SECONDS})
        try:
            self.run = sdk.init(project=fields.project, entity=fields.entity, name=fields.name,
                                dir=workdir, id=run_id, resume="allow", config=config.to_dict(),
                                settings=settings)
        except sdk.errors.Error as e:
            raise ConfigError(f"config.writers: W&B could not start run {run_id}: {first_line(e)} "
                              f"Or keep it here, to upload later: WANDB_MODE=offline.") from e

    def write_scalars(self, step, scalars):
        if step >= self.run.starting_step:  # online, a resumed run's: where its history ends
            self.run.log(scalars, step=step)

    def write_text(self, step, tag, text):
        del step, tag, text  # the only text is the config, which is the W&B run's config

    def close(self):
        # Called as the loop unwinds: a run ended by an error or a signal is marked failed.
        self.run.finish(exit_code=0 if sys.exc_info()[0] is None else 1)


def wandb_package():
    """The optional `wandb` package, imported only where config.writers names it."""
    try:
        import wandb as sdk  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ConfigError(f"config.writers names 'wandb', but the wandb package cannot be imported "
                          f"({first_line(e)}). Install it: pip install -e \".[wandb]\"") from e
    return sdk


def first_line(error):
    return (str(error).splitlines() or [type(error).__name__])[0]


def read_or_write(path, new_text):
    """The text of the file at `path`; where there is none, `new_text`, written there first."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    replace_file(path, new_text + "\n")
    return new_text


# The names config.writers uses for the writers that ship.
tensorboard, jsonl, wandb = TensorBoard, Jsonl, WandB  # pylint: disable=invalid-name
WRITER_METHODS = ("write_scalars", "write_text", "close")


def check_writer(name, writer):
    """`writer`: the class (checked before anything is written) or the object it made."""
    missing = [m for m in WRITER_METHODS if not callable(getattr(writer, m, None))]
    if missing:
        raise ConfigError(f"config.writers: {name!r} has no {missing[0]}(); a metric writer needs "
                          f"{', '.join(WRITER_METHODS)}.")


def find_writers(names):
    """The writer classes (or factories) config.writers names, checked."""
    found = {name: parts.find(parts.WRITER, name) for name in names}
    for name, writer_class in found.items():
        if isinstance(writer_class, type):
            check_writer(name, writer_class)
            if callable(getattr(writer_class, "check", None)):
                writer_class.check()
    return found


@contextlib.contextmanager
def writing(what):
    """An OSError (a full disk, a vanished workdir) while `what` writes, as a StorageError: the
    run must not go on losing its history."""
    try:
        yield
    except OSError as e:
        raise StorageError(what, e) from e


class MetricWriter:
    """The console line and every writer of config.writers, on process 0 only."""

    def __init__(self, config, workdir, start_step):
        context = {"workdir": workdir, "start_step": start_step, "config": config}
        self.writers = {}
        if jax.process_index() == 0:
            for name, make in find_writers(config.writers).items():
                with writing(f"opening the {name!r} metric writer"):
                    writer = make if not callable(make) else parts.call_with_context(
                        make, context, parts.WRITER.described(name))  # an object: given built
                check_writer(name, writer)
                self.writers[name] = writer

    def write_scalars(self, step: int, scalars: dict):
        if jax.process_index() != 0:
            return
        scalars = {name: float(value) for name, value in scalars.items()}
        logging.info("step %d: %s", step,
                     ", ".join(f"{name}={value:.4g}" for name, value in scalars.items()))
        for name, writer in self.writers.items():
            with writing(f"writing the metrics of step {step} with the {name!r} writer"):
                writer.write_scalars(step, scalars)

    def write_images(self, step: int, images: dict):
        """{tag: (height, width, 3) uint8 picture}, to the writers that show pictures."""
        for name, writer in self.writers.items():
            if hasattr(writer, "write_image"):
                with writing(f"writing the pictures of step {step} with the {name!r} writer"):
                    for tag, image in images.items():
                        writer.write_image(step, tag, image)

    def write_text(self, step: int, tag: str, text: str):
        for name, writer in self.writers.items():
            with writing(f"writing the {tag} of step {step} with the {name!r} writer"):
                writer.write_text(step, tag, text)

    def close(self):
        for name, writer in self.writers.items():
            with writing(f"closing the {name!r} metric writer"):
                writer.close()
