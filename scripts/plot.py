"""Writes the PNG figures of a training run into its workdir (training writes them at the end):
curves, and predictions over the ground truth or a confusion matrix and misclassified images
(with --ema, of the moving average of the parameters: confusion_matrix_ema.png, ...).

    python scripts/plot.py --workdir=runs/mnist
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

from trainer import api, cli  # pylint: disable=wrong-import-position

WORKDIR, STEP, EMA = cli.define_run_flags()


def main(argv):
    del argv
    run = api.load(WORKDIR.value, STEP.value, config=cli.config())
    # The moving average's figures beside the parameters', not over them.
    for path in run.plot(ema=EMA.value, show=False):
        print(path)


if __name__ == "__main__":
    cli.run(main, config_required=False, reads_a_run=True)
