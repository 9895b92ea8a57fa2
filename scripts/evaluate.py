"""Evaluates a checkpoint on the test split; prints the metrics as one JSON line and writes them
to WORKDIR/eval_<step>.json. Runs on any device count, also one other than training's (a run
trained with a sharding mesh: give one that fits the devices at hand, as the error says).

    python scripts/evaluate.py --workdir=runs/mnist [--step=N|best] [--config=configs/mnist_cnn.py]

With config.ema_decay the moving average is evaluated too (eval_ema/...).
"""
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

from trainer import host_memory  # pylint: disable=wrong-import-position

host_memory.restart_with_reusing_malloc()  # before JAX allocates anything

from trainer import api, cli  # pylint: disable=wrong-import-position

WORKDIR, STEP = cli.define_run_flags(ema=False)  # both eval/ and eval_ema/ are reported


def main(argv):
    del argv
    run = api.load(WORKDIR.value, STEP.value, config=cli.config())
    results = {"step": run.step, **run.evaluate()}
    print(json.dumps(results))
    with open(os.path.join(WORKDIR.value, f"eval_{results['step']}.json"), "w",
              encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    cli.run(main, config_required=False, reads_a_run=True)
