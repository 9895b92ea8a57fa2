"""What the scripts share: the --config flag, --help, and one clear message for every bad input.

ml_collections' config flag raises raw exceptions while flags are parsed (a syntax error in the
file, a missing get_config, an unknown field in an override) and reports a missing file only at
first use; `parse_flags` turns each into one line naming what is wrong and exits 2.

Scripts that use a trained run (evaluate.py, predict.py, plot.py) take the run's own config.json
as the config when no --config is given; --config.FIELD=VALUE overrides fields of either.
"""
import os
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from trainer import configuration, errors, session
from trainer.errors import USER_ERRORS, ConfigError, Stopped, WorkdirError, fail

CONFIG_HELP = ("Config file, e.g. configs/mnist_cnn.py; override any field with "
               "--config.FIELD=VALUE (e.g. --config.num_epochs=2).")
RUN_CONFIG_HELP = ("Config file; by default the run's own config.json. Override any field with "
                   "--config.FIELD=VALUE (e.g. --config.dataset.data_dir=DIR).")
DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an error.")
COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Several hosts: host:port of process 0, given to every process.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several hosts: how many processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several hosts: this process's index.")
MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Several hosts, found from the cluster's environment (TPU pod, SLURM, ...).")
HELP_FLAGS = ("--help", "-h", "-?", "--helpshort")

_config = {}  # the --config flag (defined by run()) and where it came from


def define_run_flags(ema=True):
    """The flags of the scripts that use a trained run: --workdir, --step and (`ema`) --ema."""
    workdir = flags.DEFINE_string("workdir", None, "The training run's folder.", required=True)
    step = flags.DEFINE_string("step", None, "The checkpoint: its step, or 'best' (the best by the "
                               "run's config.best_metric); default: the latest.")
    if not ema:
        return workdir, step
    return workdir, step, flags.DEFINE_bool(
        "ema", False, "Use the moving average of the parameters that the run kept "
        "(config.ema_decay) instead of the parameters.")


def flag_value(argv, name):
    """The value of --name=VALUE or --name VALUE in argv, before the flags are parsed."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def run_config_path(argv):
    workdir = flag_value(argv, "workdir")
    return os.path.join(workdir, "config.json") if workdir else None


def define_config_flag(argv, reads_a_run):
    """--config: a config file; for a script that reads a run, the run's config.json by default."""
    path = run_config_path(argv) if reads_a_run and flag_value(argv, "config") is None else None
    if path and os.path.isfile(path):
        try:
            run_config = configuration.read_run_config(os.path.dirname(path))
        except ConfigError as e:
            fail(f"{e} (--config=FILE)")
        _config["flag"] = config_flags.DEFINE_config_dict("config", run_config, RUN_CONFIG_HELP,
                                                          lock_config=True)
        _config["from_run"] = True
    else:
        _config["flag"] = config_flags.DEFINE_config_file(
            "config", None, RUN_CONFIG_HELP if reads_a_run else CONFIG_HELP, lock_config=True)
        _config["from_run"] = False
    _config["run_config_path"] = path


def config():
    """The parsed config, its path fields made absolute."""
    value = _config["flag"].value
    if value is None:
        raise WorkdirError(f"{_config['run_config_path']} does not exist: --workdir is not the "
                           f"folder of a training run (or give --config=FILE).")
    return value


def describe_config_error(error, argv):
    if flag_value(argv, "config") is None and not _config["from_run"]:
        return f"{str(error).split(':')[0]}: give the config file first, --config=FILE."
    if isinstance(error, flags.Error):
        if "Traceback" not in str(error):
            return str(error)
        # An exception while get_config() ran, reported with its traceback: keep the cause.
        cause = str(error).strip().splitlines()[-1]
        config_arg = flag_value(argv, "config")
        if "get_config() takes 0 positional arguments" in cause:
            path, _, argument = config_arg.partition(":")
            return (f"--config={config_arg}: {path} takes no argument (its get_config() has no "
                    f"parameter), so ':{argument}' cannot go to it. Drop ':{argument}'.")
        return f"the config file {config_arg} could not be loaded: {cause}"
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
    # The unknown name may be any part of the flag's path: --config.optimzer.learning_rate.
    bad = [o for o in overrides if key and key.group(1) in o.split(".")[1:]] or overrides
    if isinstance(error, (AttributeError, KeyError)) and bad:
        hint = re.search(r"Did you mean \"?(\w+)", text)
        return (f"{bad[0]}: the config has no such field"
                f"{f' (did you mean {hint.group(1)!r}?)' if hint else ''}. "
                f"See the fields with --show_config.")
    return f"the config could not be loaded: {type(error).__name__}: {text}"


def print_help():
    """The script's docstring and every flag it takes (absl's --help shows only the script's own
    flags and exits 1)."""
    main = sys.modules["__main__"]
    print((main.__doc__ or "").strip() + "\n")
    print(flags.FLAGS.module_help(main).replace("__main__:", f"{os.path.basename(sys.argv[0])}:", 1))
    print(flags.FLAGS.module_help(sys.modules[__name__]))
    print("\nAny config field: --config.FIELD=VALUE (nested: --config.optimizer.learning_rate=3e-4)."
          "\nAll of absl's flags: --helpfull.")


def unsets(arg):
    """--config.FIELD=None: set back to None (the part's own default) once the flags are parsed;
    the flag parser takes None for no type."""
    return arg.startswith("--config.") and arg.endswith("=None")


def parse_flags(argv, config_required):
    if any(a in HELP_FLAGS for a in argv[1:]):
        print_help()
        sys.exit(0)
    unset = [a[len("--config."):-len("=None")] for a in argv if unsets(a)]
    try:
        rest = flags.FLAGS([a for a in argv if not unsets(a)])
        if _config["flag"].value is None:
            if config_required:
                fail("--config=FILE is required, e.g. --config=configs/mnist_cnn.py.")
            return rest
        _config["flag"].value.to_dict()  # a file that failed to load raises here, not at parsing
    except Exception as e:  # pylint: disable=broad-except
        if "--debug" in argv:
            raise
        fail(describe_config_error(e, argv))
    config = _config["flag"].value
    with config.unlocked():
        try:
            configuration.override(config, {field: None for field in unset},
                                   written=lambda field: f"--config.{field}",
                                   listing="--show_config")
        except ConfigError as e:
            fail(str(e))
    configuration.resolve_paths(config)
    if len(rest) > 1:
        fail(f"unexpected arguments {rest[1:]}; flags are written --name=value.")
    return rest


def initialize_distributed():
    """Joins the processes of a multi-host run; only process 0 logs below warnings."""
    given = [f"--{flag.name}" for flag in (NUM_PROCESSES, PROCESS_ID) if flag.value is not None]
    if COORDINATOR.value:
        if len(given) < 2:
            raise ConfigError(
                "--coordinator_address needs --num_processes (how many processes in all) and "
                "--process_id (this one's index, 0 to num_processes - 1) too; or --multihost to "
                "find all three in a cluster's environment (TPU pod, SLURM, ...).")
        jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    elif given:
        raise ConfigError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} "
                          f"--coordinator_address=HOST:PORT of process 0 (or --multihost on a "
                          f"cluster that tells JAX all three).")
    elif MULTIHOST.value:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as e:
            raise ConfigError(
                f"--multihost: JAX found no cluster in this machine's environment "
                f"({str(e).rstrip('.')}). Run it "
                f"on a TPU pod or under SLURM or another cluster JAX knows, or give "
                f"--coordinator_address, --num_processes and --process_id.") from e
    else:
        return
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)


def run(main, config_required=True, reads_a_run=False):
    """Runs main(argv) under absl; errors a user can fix print one message and exit 2.

    `reads_a_run`: the script uses the run in --workdir, whose config.json is the default config.
    """
    define_config_flag(sys.argv, reads_a_run)
    errors.SPOKEN["flags"] = True

    def main_with_errors(argv):
        session.quiet_logging(keep_noise=DEBUG.value)
        session.enable_compilation_cache()
        try:
            initialize_distributed()
            main(argv)
        except USER_ERRORS as e:
            if DEBUG.value:
                raise
            fail(str(e), getattr(e, "exit_code", 2))
        except Stopped as e:
            logging.warning("%s", e)
            sys.exit(e.exit_code)

    app.run(main_with_errors, flags_parser=lambda argv: parse_flags(argv, config_required))
