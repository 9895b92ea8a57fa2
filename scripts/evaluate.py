"""Evaluates a checkpoint on the test split; prints the metrics as one JSON line and writes them
to WORKDIR/eval_<step>.json. Runs on any device count, also one other than training's.

    python scripts/evaluate.py --workdir=runs/mnist [--step=N] [--config=configs/mnist_cnn.py]
"""
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

from trainer import host_memory  # pylint: disable=wrong-import-position

host_memory.restart_with_reusing_malloc()  # before JAX allocates anything

from absl import flags  # pylint: disable=wrong-import-position

from trainer import cli, inference  # pylint: disable=wrong-import-position

WORKDIR = flags.DEFINE_string("workdir", None, "The training run's folder.", required=True)
STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")


def main(argv):
    del argv
    results = inference.evaluate_checkpoint(cli.config(), WORKDIR.value,
                                            STEP.value)
    print(json.dumps(results))
    with open(os.path.join(WORKDIR.value, f"eval_{results['step']}.json"), "w",
              encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    cli.run(main, config_required=False, reads_a_run=True)
