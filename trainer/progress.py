"""Progress: on a terminal, a bar per epoch with steps/s and ETA, the log lines above it; in a
Jupyter notebook, one bar for the run with the latest train metrics beside it and a line per
evaluation (the API keeps other log lines out of the cell); elsewhere (CI, log files), a plain line
every log_every_steps."""
import shutil
import sys

import tqdm
import tqdm.auto
from absl import logging


def in_notebook():
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class LinesAboveTheBar:
    """A stream for the log handler that prints above the bar instead of through it."""

    def write(self, text):
        if text.strip():
            tqdm.tqdm.write(text.rstrip("\n"), file=sys.stderr)

    def flush(self):
        sys.stderr.flush()


class Progress:

    def __init__(self, steps_per_epoch, total_steps, active=True):
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.notebook = active and in_notebook()
        self.interactive = active and not self.notebook and sys.stderr.isatty()
        self.bar = None
        self.log_stream = None

    def __enter__(self):
        if self.interactive:
            handler = logging.get_absl_handler().python_handler
            self.log_stream, handler.stream = handler.stream, LinesAboveTheBar()
        return self

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.close()
        if self.log_stream is not None:
            logging.get_absl_handler().python_handler.stream = self.log_stream

    def advance(self, step, count):
        """Called after `count` steps that end at `step` (steps done), all within one epoch."""
        if self.notebook:
            if self.bar is None:
                self.bar = tqdm.auto.tqdm(total=self.total_steps, initial=step - count,
                                          desc="training", unit="step")
            self.bar.update(count)
        if not self.interactive:
            return
        epoch, done = divmod(step - count, self.steps_per_epoch)
        if self.bar is None or done == 0:
            if self.bar is not None:
                self.bar.close()
            epochs = -(-self.total_steps // self.steps_per_epoch)
            # A terminal that reports no size (some pseudo-terminals) gets 80x24, not a blank bar.
            columns, lines = shutil.get_terminal_size()
            self.bar = tqdm.tqdm(total=min(self.steps_per_epoch,
                                           self.total_steps - epoch * self.steps_per_epoch),
                                 initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                                 file=sys.stderr, ncols=columns, nrows=lines)
        self.bar.update(count)

    def report(self, step, steps_per_sec):
        """A plain progress line, where no bar shows it."""
        if not (self.interactive or self.notebook):
            logging.info("epoch %.2f, %.1f steps/s, ETA %.0f s", step / self.steps_per_epoch,
                         steps_per_sec, (self.total_steps - step) / steps_per_sec)

    def show(self, step, scalars, evaluation=False):
        """Logged scalars, in a notebook (elsewhere the log lines show them): train metrics beside
        the bar, an evaluation's as a line of its own."""
        if not self.notebook or self.bar is None:
            return
        shown = {name.split("/")[-1]: f"{value:.4g}" for name, value in scalars.items()
                 if "/" in name}
        if evaluation:
            self.bar.write(f"step {step}: " + ", ".join(f"{name}={value:.4g}"
                                                         for name, value in scalars.items()))
        else:
            self.bar.set_postfix(shown, refresh=False)
