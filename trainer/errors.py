"""Errors a user can fix. The scripts print their message as one `error:` line and exit
non-zero, without a traceback: 2 for bad input (a config, data, a workdir), 3 for a run stopped by
a NaN or Inf (its checkpoints intact), 4 for files that could not be written (a full disk, a
vanished or read-only workdir), 128 + the signal's number for a run stopped by a signal."""
import errno
import os
import re
import sys

from datasets import DataError


SHOWN = 8  # names a message lists before "..."


def listed(names):
    """`names` for a message: the first SHOWN of them, then how many there are in all."""
    names = list(names)
    return ", ".join(names[:SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")


# Errors name a setting as their reader gives it: a script's flag (`--config.seed=5`) or a keyword
# of trainer.api's calls (`seed=5`). The scripts (trainer/cli.py) set "flags".
SPOKEN = {"flags": False}


class Placeholder(str):
    """A value for the reader to fill in, said as it is: `batch_size=VALUE`, not `'VALUE'`."""

    def __repr__(self):
        return str(self)


def setting(name, value):
    """How to give the config field `name` ("optimizer.grad_clip_norm") the `value`:
    `--config.optimizer.grad_clip_norm=1.0` in a script, `optimizer=dict(grad_clip_norm=1.0)` in
    Python. A dict value gives several fields of the section `name` at once."""
    if SPOKEN["flags"]:
        if isinstance(value, dict):
            return " ".join(setting(f"{name}.{key}", each) for key, each in value.items())
        # As the shell must be given them: a tuple quoted, the empty string as ''.
        quoted = f'"{value}"' if isinstance(value, tuple) else "''" if value == "" else value
        return f"--config.{name}={quoted}"
    *sections, leaf = name.split(".")
    spoken = f"{leaf}={value!r}" if not isinstance(value, dict) else (
        f"{leaf}=dict({', '.join(f'{key}={each!r}' for key, each in value.items())})")
    for section in reversed(sections):
        spoken = f"{section}=dict({spoken})"
    return spoken


def argument(name, value):
    """An argument as the reader gives it: a script's `--step=best`, a call's `step='best'`."""
    return f"--{name}={value}" if SPOKEN["flags"] else f"{name}={value!r}"


def same_again():
    """How to run the same training again (to resume it)."""
    return ("run the same command" if SPOKEN["flags"] else
            "call trainer.api.fit() again with the same arguments")


class ConfigError(Exception):
    """A config value that is missing, of the wrong type or out of range."""


class WorkdirError(Exception):
    """A workdir that cannot be used: not a folder, not writable, or holding another run."""


class NonFiniteError(Exception):
    """A NaN or Inf in the loss or gradients stopped the run; its checkpoints are intact."""
    exit_code = 3


class StorageError(Exception):
    """Writing a run's files failed: a checkpoint, metrics, results or figures. What the run
    still has (`kept`: its newest intact checkpoint and the space left) is added where it is
    known, by the loop."""
    exit_code = 4

    def __init__(self, what, cause, kept=""):
        super().__init__(what, cause, kept)
        self.what, self.cause, self.kept = what, cause, kept

    def __str__(self):
        kept = f"; {self.kept}" if self.kept else ""
        return (f"{self.what} failed: {os_error(self.cause)}{kept}. Free space (or make the folder "
                f"writable again) and {same_again()} to resume.")


def os_error(error):
    """What an I/O error says, in a few words: 'No space left on device (errno 28)'. Orbax's and
    TensorStore's name it only in their text: [os_error_code='28']."""
    number = getattr(error, "errno", None)
    if number is None:
        found = re.search(r"os_error_code='?(\d+)", str(error))
        number = int(found[1]) if found else None
    if number in errno.errorcode:
        path = getattr(error, "filename", None)
        return f"{os.strerror(number)} (errno {number}{f', {path}' if path else ''})"
    text = (str(error).splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
    return f"{type(error).__name__}: {text[:300]}"


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the run after saving a checkpoint. A KeyboardInterrupt, as an
    interrupted notebook cell expects, so `except Exception` does not swallow it."""

    def __init__(self, message, signal_number):
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention for "ended by a signal"


USER_ERRORS = (ConfigError, WorkdirError, DataError, NonFiniteError, StorageError)


def fail(message, exit_code=2):
    """A script's end on an error a user can fix: one line on stderr, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(exit_code)
