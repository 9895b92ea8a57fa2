"""Writes the PNG figures of a training run into its workdir (training writes them at the end):
curves, and predictions over the ground truth or a confusion matrix and misclassified images.

    python scripts/plot.py --workdir=runs/mnist
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

from absl import flags  # pylint: disable=wrong-import-position

from trainer import cli, inference  # pylint: disable=wrong-import-position

WORKDIR = flags.DEFINE_string("workdir", None, "The training run's folder.", required=True)
STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")


def main(argv):
    del argv
    config = cli.config()
    setup, state, _ = inference.restore(config, WORKDIR.value, STEP.value)
    for path in inference.write_figures(setup, state, WORKDIR.value):
        print(path)


if __name__ == "__main__":
    cli.run(main, config_required=False, reads_a_run=True)
