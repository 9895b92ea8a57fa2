"""Where metrics go: console lines, TensorBoard event files and `metrics.jsonl` in the workdir.

Only process 0 writes. TensorBoard files come from tensorboardX, so no TensorFlow is needed
(clu.metric_writers imports TensorFlow).
"""
import json
import os

import jax
from absl import logging
from tensorboardX import SummaryWriter


class MetricWriter:

    def __init__(self, workdir):
        self.active = jax.process_index() == 0
        if self.active:
            self.tensorboard = SummaryWriter(logdir=workdir)
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: dict):
        if not self.active:
            return
        scalars = {name: float(value) for name, value in scalars.items()}
        logging.info("step %d: %s", step,
                     ", ".join(f"{name}={value:.4g}" for name, value in scalars.items()))
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()

    def write_text(self, tag: str, text: str):
        if self.active:
            self.tensorboard.add_text(tag, text)

    def close(self):
        if self.active:
            self.tensorboard.close()
            self.jsonl.close()


def prefixed(prefix, computed_metrics):
    return {f"{prefix}/{name}": value for name, value in computed_metrics.items()}
