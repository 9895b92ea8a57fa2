"""Using a trained run: restore a checkpoint, evaluate it, run the model on inputs, draw figures."""
import jax
import numpy as np

import datasets
from trainer.checkpoint import Checkpoints
from trainer.errors import WorkdirError
from trainer.parallel import local_copy
from trainer.setup import build
from trainer.steps import apply_model, eval_step, evaluate
from trainer.writers import prefixed

FIGURE_EXAMPLES = 10000  # of the test split, read into memory for the figures


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


def compile_eval(setup):
    return setup.parallel.compile(eval_step, task=setup.task,
                                  prepare_inputs=setup.dataset.prepare_inputs)


def evaluate_state(setup, state):
    """Test metrics of a state in checkpoint form, on all devices JAX sees."""
    parallel = setup.parallel
    return evaluate(compile_eval(setup), parallel.to_device_form(state), setup.eval_batches(),
                    parallel)


def evaluate_checkpoint(config, workdir, step=None):
    """{"step": ..., "eval/loss": ..., ...} on the test split."""
    setup, state, step = restore(config, workdir, step)
    return {"step": step, **prefixed("eval", evaluate_state(setup, state))}


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


def write_figures(setup, state, workdir):
    """The PNG figures of the model on the test split, its first FIGURE_EXAMPLES examples
    (trainer/plots.py); returns their paths."""
    from trainer import plots  # pylint: disable=g-import-not-at-top  (matplotlib: only here)
    test = setup.dataset.test
    test = datasets.examples(test, range(min(datasets.num_examples(test), FIGURE_EXAMPLES)))
    return plots.plot_all(workdir, setup.task, test, predict(setup, state, test["inputs"]),
                          setup.dataset.decode_outputs)
