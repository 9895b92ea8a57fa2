"""Using a trained run: restore a checkpoint, evaluate it, run the model on inputs, draw figures."""
import functools

import jax
import numpy as np

import datasets
from trainer.checkpoint import ChecksumError, Checkpoints, what_failed
from trainer.errors import ConfigError, WorkdirError
from trainer.parallel import local_copy
from trainer.setup import build
from trainer.steps import apply_model, eval_step, evaluate
from trainer.writers import prefixed

FIGURE_EXAMPLES = 10000  # of the test split, read into memory for the figures


def checkpoint_step(checkpoints, config, step):
    """The step `step` names: None for the latest, "best" for the best by config.best_metric,
    or a number."""
    steps = checkpoints.manager.all_steps()
    if not steps:
        raise WorkdirError(f"no checkpoint in {checkpoints.directory}: train first with "
                           f"scripts/train.py --workdir={checkpoints.workdir}.")
    if step == "best":
        best = checkpoints.best_step() if config.best_metric else None
        if best is None:
            raise WorkdirError(
                f"--step=best: the run in {checkpoints.workdir} kept no best checkpoint"
                f"{'' if config.best_metric else ' (its config has no best_metric)'}. Give a "
                f"step (there are {sorted(steps)}), or train with --config.best_metric=eval/loss "
                f"(or another eval metric).")
        return best
    if step is not None and not str(step).isdigit():
        raise ConfigError(f"--step={step}: give a step number (there are {sorted(steps)}) or "
                          f"'best'.")
    step = max(steps) if step is None else int(step)
    if step not in steps:
        raise WorkdirError(f"no checkpoint at step {step} in {checkpoints.directory}; "
                           f"there are steps {sorted(steps)}.")
    return step


def restore(config, workdir, step=None, ema=False):
    """Returns (setup, state, step) for the checkpoint at `step` (None: the latest; "best": the
    best by config.best_metric; or a number). `ema`: its moving average as the parameters."""
    setup = build(config, training=False)
    checkpoints = Checkpoints(workdir, read_only=True, best_metric=config.best_metric,
                              best_mode=config.best_mode)
    step = checkpoint_step(checkpoints, config, step)
    try:
        state, _ = checkpoints.restore(setup.state, step)
    except WorkdirError:  # another model's checkpoint
        raise
    except Exception as e:  # pylint: disable=broad-except  (unreadable, or bytes changed: damaged)
        others = [s for s in checkpoints.manager.all_steps() if s != step]
        raise WorkdirError(
            f"the checkpoint at step {step} in {checkpoints.directory} is damaged "
            f"({e if isinstance(e, ChecksumError) else what_failed(e)}). Give another --step"
            f"{f' (there are {sorted(others)})' if others else ''}.") from e
    finally:
        checkpoints.close()
    if ema:
        if state.ema_params is None:
            raise WorkdirError(f"--ema: the run in {workdir} kept no moving average of its "
                               f"parameters (train with --config.ema_decay=0.999).")
        state = state.replace(params=state.ema_params)
    return setup, state, step


def compile_eval(setup):
    return setup.parallel.compile(eval_step, task=setup.task,
                                  prepare_inputs=setup.dataset.prepare_inputs)


def evaluate_scalars(eval_fn, setup, state):
    """{"eval/loss": ..., ...} of a state in device form on the test split, and "eval_ema/..."
    of its moving average where it keeps one."""
    scalars = prefixed("eval", evaluate(eval_fn, state, setup.eval_batches(), setup.parallel))
    if state.ema_params is not None:
        scalars.update(prefixed("eval_ema", evaluate(eval_fn, state.replace(
            params=state.ema_params), setup.eval_batches(), setup.parallel)))
    return scalars


def evaluate_state(setup, state):
    """evaluate_scalars of a state in checkpoint form, on all devices JAX sees."""
    return evaluate_scalars(compile_eval(setup), setup, setup.parallel.to_device_form(state))


def evaluate_checkpoint(config, workdir, step=None):
    """{"step": ..., "eval/loss": ..., ...} on the test split ("eval_ema/..." too, where kept)."""
    setup, state, step = restore(config, workdir, step)
    return {"step": step, **evaluate_state(setup, state)}


def predict(setup, state, inputs, chunk=1000):
    """The model's outputs for raw `inputs` (as the data set stores them), in natural units;
    `chunk` examples at a time, to bound the memory of the activations. `state`: in checkpoint
    form, on the mesh, where its arrays stay (sharded ones are never gathered); every process
    calls this with the same inputs, and gets all the outputs."""
    parallel = setup.parallel

    @functools.partial(jax.jit, out_shardings=parallel.replicated)
    def outputs_of(state, inputs):
        outputs, _ = apply_model(state, state.params, setup.dataset.prepare_inputs(inputs), False)
        return setup.dataset.decode_outputs(outputs)

    inputs = np.asarray(inputs)
    return np.concatenate([
        np.asarray(local_copy(outputs_of(state, parallel.replicate(inputs[i:i + chunk]))))
        for i in range(0, len(inputs), chunk)])


def write_figures(setup, state, workdir, suffix=""):
    """The PNG figures of the model on the test split, its first FIGURE_EXAMPLES examples
    (trainer/plots.py), those of predictions named with `suffix`; returns their paths. Every
    process calls it (for the predictions); only process 0 draws, and the others return []."""
    from trainer import plots  # pylint: disable=g-import-not-at-top  (matplotlib: only here)
    test = setup.dataset.test
    test = datasets.examples(test, range(min(datasets.num_examples(test), FIGURE_EXAMPLES)))
    outputs = predict(setup, state, test["inputs"])
    if jax.process_index() != 0:
        return []
    return plots.plot_all(workdir, setup.task, test, outputs, setup.dataset.decode_outputs, suffix)
