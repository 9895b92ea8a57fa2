"""Errors a user can fix. The scripts print their message and exit non-zero, without a traceback."""
from datasets import DataError
from models import ModelError


class ConfigError(Exception):
    """A config value that is missing, of the wrong type or out of range."""


class WorkdirError(Exception):
    """A workdir that cannot be used: not a folder, not writable, or holding another run."""


USER_ERRORS = (ConfigError, WorkdirError, DataError, ModelError)
