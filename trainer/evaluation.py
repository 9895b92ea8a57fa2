"""A state on data: the metrics of a split, the outputs on arrays, the figures.

Training evaluates with these, and so do the scripts that use a trained run (trainer/inference.py
restores the state first). `state` is in device form where the name says so, else in checkpoint
form, on the mesh, where its arrays stay (sharded ones are never gathered).
"""
import functools

import jax
import numpy as np

import datasets
from trainer.parallel import local_copy
from trainer.steps import eval_step
from trainer.writers import prefixed

FIGURE_EXAMPLES = 10000  # of the test split, read into memory for the figures


def compile_eval(setup):
    return setup.parallel.compile(eval_step, task=setup.task,
                                  prepare_inputs=setup.dataset.prepare_inputs)


def evaluate(eval_fn, state, batches, parallel):
    """eval_fn (compile_eval's) over `batches` (this process's rows of each, padded and masked);
    returns the metrics as floats."""
    total = None
    for batch in batches:
        metrics = parallel.to_host(eval_fn(state, parallel.put_batch(batch)))
        total = metrics if total is None else total.merge(metrics)
    return {name: float(value) for name, value in total.compute().items()}


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


def predict(setup, state, inputs, chunk=1000):
    """The model's outputs (evaluation mode) for raw `inputs` (as the data set stores them), in
    natural units; `chunk` examples at a time, to bound the memory of the activations. Every
    process calls this with the same inputs, and gets all the outputs."""
    parallel = setup.parallel

    @functools.partial(jax.jit, out_shardings=parallel.replicated)
    def outputs_of(state, inputs):
        outputs, _ = state.model.apply(state.params, state.model_state,
                                       setup.dataset.prepare_inputs(inputs), False)
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
