"""Where metrics go: the console, and the writers of `config.writers` (by default TensorBoard
event files and `metrics.jsonl` in the workdir). Only process 0 writes.

A writer is a class with `write_scalars(step, scalars)`, `write_text(step, tag, text)` and
`close()`, made with those of `workdir`, `start_step` and `config` its constructor names; a
writer of your own is named 'module:Class' (trainer/parts.py). `start_step` is the step training
starts from: on a resumed run whatever a writer holds past it came from steps that are being done
again, and the two here drop it, so the history reads as one uninterrupted run's. Both flush every
write, so a SIGKILL loses nothing logged. TensorBoard files come from tensorboardX: no TensorFlow
(clu.metric_writers imports it).
"""
import json
import logging as std_logging
import math
import os
import time

import jax
from absl import logging
from tensorboardX import summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog

from trainer import parts
from trainer.errors import ConfigError

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
        del step, tag, text  # config.json holds the config

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
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


# The names config.writers uses for the writers that ship.
tensorboard, jsonl = TensorBoard, Jsonl
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
    return found


class MetricWriter:
    """The console line and every writer of config.writers, on process 0 only."""

    def __init__(self, config, workdir, start_step):
        context = {"workdir": workdir, "start_step": start_step, "config": config}
        self.writers = []
        if jax.process_index() == 0:
            for name, make in find_writers(config.writers).items():
                self.writers.append(parts.call_with_context(make, context,
                                                            parts.WRITER.described(name)))
                check_writer(name, self.writers[-1])

    def write_scalars(self, step: int, scalars: dict):
        if jax.process_index() != 0:
            return
        scalars = {name: float(value) for name, value in scalars.items()}
        logging.info("step %d: %s", step,
                     ", ".join(f"{name}={value:.4g}" for name, value in scalars.items()))
        for writer in self.writers:
            writer.write_scalars(step, scalars)

    def write_text(self, step: int, tag: str, text: str):
        for writer in self.writers:
            writer.write_text(step, tag, text)

    def close(self):
        for writer in self.writers:
            writer.close()
