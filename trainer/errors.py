"""Errors a user can fix. The scripts print their message and exit non-zero, without a traceback."""
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


class Stopped(Exception):
    """SIGTERM or SIGINT stopped the run after saving a checkpoint."""

    def __init__(self, message, signal_number):
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention for "ended by a signal"


USER_ERRORS = (ConfigError, WorkdirError, DataError, NonFiniteError)
