"""What a process sets up once before it trains, from the command line or from Python: short log
lines without the libraries' noise, JAX's persistent compilation cache, and absl's flags marked
parsed (Grain reads them). Each is idempotent: a notebook that trains ten times sets each once."""
import logging as std_logging
import os

import jax
from absl import flags, logging


def is_noise(record):
    """Orbax's and TFDS's INFO lines (several per save, per data set opened), Orbax's errors with
    their tracebacks (from its threads, several per failed save: the trainer says in one line what
    failed, trainer/checkpoint.py), Orbax's note that a checkpoint has no metrics, JAX's note
    that it found no TPU library, and TFDS's warning of a missing data set folder (the data error
    names the folder itself)."""
    message = record.getMessage()
    return ((record.levelno != std_logging.WARNING
             and ("orbax" in record.pathname or "tensorflow_datasets" in record.pathname))
            or message.startswith("Unable to initialize backend")
            # Orbax, for each checkpoint saved between evaluations when best_metric is set
            or message.startswith("Requested `tracked_metric`; did not provide metrics")
            or (message.startswith("Variant folder") and "has no dataset_info.json" in message))


def drop_noise(record):
    return not is_noise(record)


def quiet_logging(keep_noise=False):
    """Short log lines, without the noise unless `keep_noise` (--debug)."""
    handler = logging.get_absl_handler()
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    if not keep_noise and drop_noise not in handler.filters:
        handler.addFilter(drop_noise)


def enable_compilation_cache():
    """JAX's persistent compilation cache, on by default: a later run of the same config skips
    most of its compile. JAX_COMPILATION_CACHE_DIR, where set, chooses the folder."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache_home = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
        jax.config.update("jax_compilation_cache_dir", os.path.join(cache_home, "flaxfit", "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def start(keep_noise=False):
    """All of it, for a process that has not parsed a command line (Python, a notebook)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # libraries that read absl flags (Grain) take the defaults
    quiet_logging(keep_noise)
    enable_compilation_cache()
