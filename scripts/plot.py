"""Writes the PNG figures of a training run into its workdir (training writes them at the end):
curves, and predictions over the ground truth or a confusion matrix and misclassified images
(with --ema, of the moving average of the parameters: confusion_matrix_ema.png, ...).

    python scripts/plot.py --workdir=runs/mnist
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

from trainer import cli, evaluation, inference  # pylint: disable=wrong-import-position

WORKDIR, STEP, EMA = cli.define_run_flags()


def main(argv):
    del argv
    config = cli.config()
    setup, state, _ = inference.restore(config, WORKDIR.value, STEP.value, EMA.value)
    # The moving average's figures beside the parameters', not over them.
    for path in evaluation.write_figures(setup, state, WORKDIR.value,
                                        suffix="_ema" if EMA.value else ""):
        print(path)


if __name__ == "__main__":
    cli.run(main, config_required=False, reads_a_run=True)
