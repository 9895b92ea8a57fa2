"""Trains a model from a config, resuming from the latest checkpoint in the workdir.

    python scripts/train.py --config=configs/mnist_cnn.py --workdir=runs/mnist

A thin layer over the Python API (api.fit in trainer/api.py): flags in, one `error:` line out.
"""
import pathlib
import sys

# This checkout's packages come first, so `datasets` is ours even where Hugging Face's is installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from trainer import host_memory  # pylint: disable=wrong-import-position

host_memory.restart_with_reusing_malloc()  # before JAX allocates anything

import jax  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position

from trainer import api, cli, preflight  # pylint: disable=wrong-import-position
from trainer.config_check import validate_config  # pylint: disable=wrong-import-position

WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and TensorBoard.")
SHOW_CONFIG = flags.DEFINE_bool("show_config", False, "Print the resolved config and exit.")
CHECK = flags.DEFINE_bool(
    "check", False, "Print what each device will hold and do in a train step (memory, FLOPs), "
    "compiled ahead of time, and exit: 0 if it fits, 2 if not. Nothing is written.")
CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "With --check on a CPU: compile for this many (fake) CPU devices, e.g. "
    "the 8 GPUs of the machine the run is for.")


def main(argv):
    del argv
    if SHOW_CONFIG.value:
        validate_config(cli.config())  # an invalid config is said, not printed as if it were fine
        print(cli.config())
        return
    if CHECK.value:
        check()
        return
    if CPU_DEVICES.value is not None:
        cli.fail("--cpu_devices is for --check; for a run on fake CPU devices, give "
                 f"XLA_FLAGS=--xla_force_host_platform_device_count={CPU_DEVICES.value}.")
    if not WORKDIR.value:
        cli.fail("--workdir is required: the folder for checkpoints, metrics and TensorBoard.")
    # A second Ctrl-C ends the process at once, even in the middle of a step.
    api.train(cli.config(), WORKDIR.value, keep_process=False)


def check():
    if CPU_DEVICES.value is not None:
        try:  # before JAX's backend starts, which nothing before has asked for
            jax.config.update("jax_platforms", "cpu")
            jax.config.update("jax_num_cpu_devices", CPU_DEVICES.value)
        except RuntimeError as e:
            cli.fail(f"--cpu_devices={CPU_DEVICES.value}: {e}")
    report = api.check(cli.config())
    print(report)
    if not report.fits:
        cli.fail(f"the run needs {preflight.megabytes(report.peak_total)} on each device, over "
                 f"{preflight.FIT_FRACTION:.0%} of its {preflight.megabytes(report.limit)} "
                 f"({report.limit_source}).")


if __name__ == "__main__":
    cli.run(main)
