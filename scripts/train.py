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

from absl import flags  # pylint: disable=wrong-import-position

from trainer import api, cli  # pylint: disable=wrong-import-position
from trainer.config_check import validate_config  # pylint: disable=wrong-import-position

WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and TensorBoard.")
SHOW_CONFIG = flags.DEFINE_bool("show_config", False, "Print the resolved config and exit.")


def main(argv):
    del argv
    if SHOW_CONFIG.value:
        validate_config(cli.config())  # an invalid config is said, not printed as if it were fine
        print(cli.config())
        return
    if not WORKDIR.value:
        cli.fail("--workdir is required: the folder for checkpoints, metrics and TensorBoard.")
    # A second Ctrl-C ends the process at once, even in the middle of a step.
    api.train(cli.config(), WORKDIR.value, keep_process=False)


if __name__ == "__main__":
    cli.run(main)
