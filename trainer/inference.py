"""Using a trained run: restore a checkpoint, evaluate it, run the model on inputs."""
import json
import os

import jax
import ml_collections
import numpy as np

from trainer.checkpoint import Checkpoints
from trainer.errors import WorkdirError
from trainer.loop import build, evaluate
from trainer.metrics import prefixed
from trainer.parallel import local_copy
from trainer.steps import apply_model, eval_step


def tuples(value):
    """JSON lists back to the tuples configs use (linen modules must be hashable)."""
    if isinstance(value, dict):
        return {k: tuples(v) for k, v in value.items()}
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value


def load_config(workdir):
    """The config a run in `workdir` was trained with (train.py writes it to config.json)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise WorkdirError(f"{path} does not exist: --workdir is not the folder of a training run.")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(tuples(json.load(f)))


def restore(config, workdir, step=None):
    """Returns (setup, state, step) for the checkpoint at `step` (default: the latest)."""
    setup = build(config)
    checkpoints = Checkpoints(workdir, read_only=True)
    steps = checkpoints.manager.all_steps()
    if not steps:
        raise WorkdirError(f"no checkpoint in {checkpoints.directory}: train first with "
                           f"scripts/train.py --workdir={workdir}.")
    step = max(steps) if step is None else step
    if step not in steps:
        raise WorkdirError(f"no checkpoint at step {step} in {checkpoints.directory}; "
                           f"there are steps {sorted(steps)}.")
    checkpoints.check_fits(step, setup.state)
    state = checkpoints.restore(setup.state, step)
    checkpoints.close()
    return setup, state, step


def evaluate_checkpoint(config, workdir, step=None):
    """{"step": ..., "eval/loss": ..., ...} on the test split, on all devices JAX sees."""
    setup, state, step = restore(config, workdir, step)
    parallel = setup.parallel
    eval_fn = parallel.compile(eval_step, task=setup.task,
                               prepare_inputs=setup.dataset.prepare_inputs)
    metrics = evaluate(eval_fn, parallel.to_device_form(state), setup.dataset.test,
                       config.eval_batch_size, parallel)
    return {"step": step, **prefixed("eval", metrics)}


def predict(setup, state, inputs, chunk=1000):
    """The model's outputs for raw `inputs` (as the data set stores them), in natural units;
    `chunk` examples at a time, to bound the memory of the activations."""
    local_state = local_copy(state)

    @jax.jit
    def outputs_of(state, inputs):
        outputs, _ = apply_model(state, state.params, setup.dataset.prepare_inputs(inputs), False)
        return setup.dataset.decode_outputs(outputs)

    inputs = np.asarray(inputs)
    return np.concatenate([np.asarray(outputs_of(local_state, inputs[i:i + chunk]))
                           for i in range(0, len(inputs), chunk)])
