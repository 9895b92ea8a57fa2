"""Evaluates a checkpoint by the run's evaluations (config.evals: each on its split, with its
metrics); prints every metric as one JSON line and writes them to WORKDIR/eval_<step>.json. Runs
on any device count, also one other than training's (a run trained with a sharding mesh: give one
that fits the devices at hand, as the error says).

    python scripts/evaluate.py --workdir=runs/mnist [--step=N|best] [--eval=NAME] [--split=SPLIT]

--eval: only the evaluation of that name (val, test; eval for a run of a config without evals);
--split: the split of that name instead (validation, test, train), with the metrics of --eval's
evaluation or else the task's, its rows named by the split. With config.ema_decay the moving
average is evaluated too (<name>_ema/...). Confusion matrices are written as lists of counts.
"""
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

from trainer import host_memory  # pylint: disable=wrong-import-position

host_memory.restart_with_reusing_malloc()  # before JAX allocates anything

from absl import flags  # pylint: disable=wrong-import-position

from trainer import api, cli  # pylint: disable=wrong-import-position

WORKDIR, STEP = cli.define_run_flags(ema=False)  # both val/ and val_ema/ are reported
EVAL = flags.DEFINE_string("eval", None, "Only the evaluation of this name (config.evals).")
SPLIT = flags.DEFINE_string("split", None, "Evaluate this split instead: validation, test or "
                            "train.")


def main(argv):
    del argv
    run = api.load(WORKDIR.value, STEP.value, config=cli.config())
    results = {"step": run.step, **{
        name: value.tolist() if hasattr(value, "tolist") else value
        for name, value in run.evaluate(eval=EVAL.value, split=SPLIT.value).items()}}
    print(json.dumps(results))
    with open(os.path.join(WORKDIR.value, f"eval_{results['step']}.json"), "w",
              encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    cli.run(main, config_required=False, reads_a_run=True)
