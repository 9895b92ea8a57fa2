"""Progress: on a terminal, a bar per epoch with steps/s and ETA; elsewhere (CI, log files), a
plain line every log_every_steps."""
import shutil
import sys

import tqdm
from absl import logging


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
        self.interactive = active and sys.stderr.isatty()
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
        if not self.interactive:
            logging.info("epoch %.2f, %.1f steps/s, ETA %.0f s", step / self.steps_per_epoch,
                         steps_per_sec, (self.total_steps - step) / steps_per_sec)
