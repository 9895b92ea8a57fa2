"""Errors a user can fix. The scripts print their message as one `error:` line and exit
non-zero, without a traceback: 2 for bad input (a config, data, a workdir), 3 for a run stopped by
a NaN or Inf (its checkpoints intact), 128 + the signal's number for a run stopped by a signal."""
import sys

from datasets import DataError


SHOWN = 8  # names a message lists before "..."


def listed(names):
    """`names` for a message: the first SHOWN of them, then how many there are in all."""
    names = list(names)
    return ", ".join(names[:SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")


class ConfigError(Exception):
    """A config value that is missing, of the wrong type or out of range."""


class WorkdirError(Exception):
    """A workdir that cannot be used: not a folder, not writable, or holding another run."""


class NonFiniteError(Exception):
    """A NaN or Inf in the loss or gradients stopped the run; its checkpoints are intact."""
    exit_code = 3


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the run after saving a checkpoint. A KeyboardInterrupt, as an
    interrupted notebook cell expects, so `except Exception` does not swallow it."""

    def __init__(self, message, signal_number):
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention for "ended by a signal"


USER_ERRORS = (ConfigError, WorkdirError, DataError, NonFiniteError)


def fail(message, exit_code=2):
    """A script's end on an error a user can fix: one line on stderr, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(exit_code)
