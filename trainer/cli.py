"""What the scripts share: the --config flag and one clear message for every bad input.

ml_collections' config flag raises raw exceptions while flags are parsed (a syntax error in the
file, a missing get_config, an unknown field in an override) and reports a missing file only at
first use; `parse_flags` turns each into one line naming what is wrong and exits 2.
"""
import logging as std_logging
import os
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from trainer.errors import USER_ERRORS, Stopped

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/mnist_cnn.py; fields are overridden with "
    "--config.FIELD=VALUE. Scripts that use a trained run default to the run's config.json.",
    lock_config=True)
DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an error.")
COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Several hosts: host:port of process 0, given to every process.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several hosts: how many processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several hosts: this process's index.")
MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Several hosts, found from the cluster's environment (TPU pod, SLURM, ...).")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def describe_config_error(error, argv):
    if not any(a.startswith("--config=") for a in argv):
        return f"{str(error).split(':')[0]}: give the config file first, --config=FILE."
    if isinstance(error, flags.Error):
        return str(error)
    if isinstance(error, SyntaxError):
        return (f"the config file {error.filename} has a syntax error on line {error.lineno}: "
                f"{error.msg}. Fix the file.")
    text = str(error).replace("\\n", " ").replace("\n", " ")
    if isinstance(error, OSError):
        return (f"the config file could not be read ({text.split('Attempted')[-1].strip()}). "
                f"Check the --config path.")
    if "get_config" in text:
        return "the config file defines no get_config() function returning a ConfigDict."
    key = re.search(r"'([^'\\]+)", text)
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    bad = [o for o in overrides if key and o.split(".")[-1] == key.group(1)] or overrides
    if isinstance(error, (AttributeError, KeyError)) and bad:
        hint = re.search(r"Did you mean \"?(\w+)", text)
        return (f"{bad[0]}: the config has no such field"
                f"{f' (did you mean {hint.group(1)!r}?)' if hint else ''}. "
                f"See the fields with --show_config.")
    return f"the config could not be loaded: {type(error).__name__}: {text}"


def parse_flags(argv, config_required):
    try:
        rest = flags.FLAGS(argv)
        if CONFIG.value is None:
            if config_required:
                fail("--config=FILE is required, e.g. --config=configs/mnist_cnn.py.")
            return rest
        CONFIG.value.to_dict()  # a file that failed to load raises here, not at parsing
    except Exception as e:  # pylint: disable=broad-except
        if "--debug" in argv:
            raise
        fail(describe_config_error(e, argv))
    if len(rest) > 1:
        fail(f"unexpected arguments {rest[1:]}; flags are written --name=value.")
    return rest


def is_noise(record):
    """Orbax's INFO lines (several per save), and JAX's note that it found no TPU library."""
    return ((record.levelno < std_logging.WARNING and "orbax" in record.pathname)
            or record.getMessage().startswith("Unable to initialize backend"))


def quiet_logging():
    """Short log lines, without the noise unless --debug."""
    handler = logging.get_absl_handler()
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    if not DEBUG.value:
        handler.addFilter(lambda record: not is_noise(record))


def enable_compilation_cache():
    """JAX's persistent compilation cache, on by default: a later run of the same config skips
    most of its compile. JAX_COMPILATION_CACHE_DIR, where set, chooses the folder."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache_home = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
        jax.config.update("jax_compilation_cache_dir", os.path.join(cache_home, "flaxfit", "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def initialize_distributed():
    """Joins the processes of a multi-host run; only process 0 logs below warnings."""
    if COORDINATOR.value:
        jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    elif MULTIHOST.value:
        jax.distributed.initialize()
    else:
        return
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)


def run(main, config_required=True):
    """Runs main(argv) under absl; errors a user can fix print one message and exit 2."""

    def main_with_errors(argv):
        quiet_logging()
        enable_compilation_cache()
        initialize_distributed()
        try:
            main(argv)
        except USER_ERRORS as e:
            if DEBUG.value:
                raise
            fail(str(e))
        except Stopped as e:
            logging.warning("%s", e)
            sys.exit(e.exit_code)

    app.run(main_with_errors, flags_parser=lambda argv: parse_flags(argv, config_required))


def config_of_run(workdir):
    """--config if given, else the config the run in `workdir` was trained with."""
    from trainer import inference  # pylint: disable=g-import-not-at-top
    return CONFIG.value if CONFIG.value is not None else inference.load_config(workdir)
