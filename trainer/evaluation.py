"""A state on data: the metrics of a split, the outputs on arrays, the figures.

Training evaluates with these, and so do the scripts that use a trained run (trainer/inference.py
restores the state first). `state` is in device form where the name says so, else in checkpoint
form, on the mesh, where its arrays stay (sharded ones are never gathered).
"""
import functools

import jax
import numpy as np

import datasets
from trainer.errors import ConfigError
from trainer.parallel import local_copy
from trainer.steps import eval_step
from trainer.writers import prefixed

FIGURE_EXAMPLES = 10000  # of the test split, read into memory for the figures


def compile_eval(setup, due=None):
    """{evaluation name: its eval step}, jitted (compiled on first use), one for each set of
    metrics; of the evaluations `due` (None: the run's). Made once for a setup: the check before a
    run (preflight.py) compiles these very functions."""
    due = setup.evaluations if due is None else due
    compiled = setup.jitted.setdefault("eval", {})

    def key(each):  # evaluations of the same metrics on the run's data share one
        return setup.metrics_of(each), each.name if each.name in setup.evaluated_datasets else ""

    for each in due:
        metrics = setup.metrics_of(each)
        if key(each) not in compiled:
            compiled[key(each)] = setup.parallel.compile(
                eval_step, task=setup.task, metrics=metrics, gather=bool(metrics.host_evaluators),
                prepare_inputs=setup.dataset_of(each).prepare_inputs)
    return {each.name: compiled[key(each)] for each in due}


def evaluate(eval_fn, state, batches, parallel, metrics):
    """eval_fn (compile_eval's) over `batches` (this process's rows of each, padded and masked);
    returns the rows of `metrics` (trainer/metrics.py): numbers, and arrays (a confusion
    matrix)."""
    total, host = None, {name: make() for name, make in metrics.host_evaluators.items()}
    for batch in batches:
        computed, rows = eval_fn(state, parallel.put_batch(batch))
        computed = parallel.to_host(computed)
        total = computed if total is None else total.merge(computed)
        if host:
            rows = parallel.gather_rows(rows)
            for evaluator in host.values():
                evaluator.update(rows["outputs"], rows["targets"], rows["mask"])
    return metrics.finish(total.compute(), {name: evaluator.finish()
                                            for name, evaluator in host.items()})


def evaluate_all(eval_fns, setup, state, due=None):
    """({"val/loss": ..., "test/accuracy": ...}, {"val/confusion_matrix": counts}) of a state in
    device form: the numbers and the arrays of the evaluations `due` (evals.Evaluation; None: every
    one), each on its split, "<name>_ema/..." of the moving average too where the state keeps one
    and the evaluation asks for it."""
    rows = {}
    for each in setup.evaluations if due is None else due:
        states = {each.name: state}
        if state.ema_params is not None and each.ema:
            states[f"{each.name}_ema"] = state.replace(params=state.ema_params)
        for prefix, evaluated in states.items():
            rows.update(prefixed(prefix, evaluate(eval_fns[each.name], evaluated,
                                                  setup.eval_batches(each), setup.parallel,
                                                  setup.metrics_of(each))))
    scalars = {name: value for name, value in rows.items() if np.ndim(value) == 0}
    return scalars, {name: value for name, value in rows.items() if name not in scalars}


def evaluate_scalars(eval_fns, setup, state, due=None):
    """evaluate_all's numbers."""
    return evaluate_all(eval_fns, setup, state, due)[0]


def evaluate_state(setup, state, due=None):
    """evaluate_all of the evaluations `due` (None: the run's), of a state in checkpoint form, on
    all devices JAX sees: numbers, and arrays."""
    return evaluate_all(compile_eval(setup, due), setup, setup.parallel.to_device_form(state), due)


def stored_example(dataset):
    """One example of the run's data as it stores it (the training split's first), batch axis
    included: (1, ...)."""
    return np.asarray(datasets.examples(dataset.train, [0])["inputs"])


def stored_form(dataset, inputs, argument="inputs"):
    """`inputs` (an array, a list, a number) checked against the form the data set `dataset`
    stores its inputs in, that of one example of its training split: (array, batched), the array
    in the stored dtype with a batch axis, `batched` False where `inputs` was one example (its
    shape the stored example's; for an example shape of (1,) or (), a number) and True where it
    was a batch of them ((n, *example shape); for (1,), a 1-D array of n numbers too).
    Anything else is one ConfigError line that names `argument` and says what to give: another
    shape, or values that cannot be the stored form (floats not whole, or out of range, for
    integer inputs such as uint8 pixels; uint8 pixels for float inputs in [0, 1]). Whole floats
    in range are cast to an integer stored dtype, and numbers of any kind to a float one."""
    example = stored_example(dataset)
    stored, shape = example.dtype, example.shape[1:]
    try:
        given = np.asarray(inputs)
    except (TypeError, ValueError) as e:  # ragged lists
        raise ConfigError(f"{argument}: cannot be read as one array ({e}); give "
                          f"{shapes_accepted(shape)}.") from e
    if shape == (1,) and given.ndim <= 1:  # numbers: one, or a batch of scalar examples
        batch, batched = given.reshape(-1, 1), given.ndim == 1
    elif given.shape == shape:
        batch, batched = given[None], False
    elif given.shape[1:] == shape:
        batch, batched = given, True
    else:
        raise ConfigError(f"{argument}: shape {given.shape} is not one example of the run's data "
                          f"nor a batch of them; give {shapes_accepted(shape)}"
                          f"{reshape_hint(given.shape, shape)}.")
    return values_in(batch, stored, dataset, argument), batched


def shapes_accepted(shape):
    if shape == (1,):
        return "a number (one example), or n of them as shape (n,) or (n, 1) (a batch)"
    if shape == ():
        return "a number (one example), or n of them as shape (n,) (a batch)"
    return f"shape {shape} (one example) or (n, {', '.join(map(str, shape))}) (a batch of n)"


def reshape_hint(given, shape):
    """How to reshape flattened examples, where these are."""
    size, dims = int(np.prod(shape)), ", ".join(map(str, shape))
    if len(shape) > 1 and given == (size,):
        return f", e.g. x.reshape({dims}) where this is one example flattened"
    if len(shape) > 1 and len(given) == 2 and given[1] == size:
        return f", e.g. x.reshape(-1, {dims}) where these are examples flattened"
    return ""


def value_range(values):
    if values.dtype.kind in "iub":
        return f"in {values.min()}..{values.max()}"
    low, high = (np.format_float_positional(v, precision=4, trim="0")
                 for v in (values.min(), values.max()))
    return f"in [{low}, {high}]"


def values_in(batch, stored, dataset, argument):
    """`batch` in the stored dtype, or one ConfigError line where its values cannot be that."""
    given = batch.dtype
    if given.kind not in "biuf":
        raise ConfigError(f"{argument}: these are {given} values; give numbers, as the run's data "
                          f"stores its inputs ({stored}).")
    if not batch.size:
        return batch.astype(stored)
    if stored.kind in "biu":
        low, high = (0, 1) if stored.kind == "b" else (np.iinfo(stored).min, np.iinfo(stored).max)
        wants = f"the run's data stores inputs as {stored} in {low}..{high}"
        if stored == np.uint8 and batch.ndim == 4:
            wants += " (raw pixels)"
        if given.kind == "f":
            if not np.isfinite(batch).all():
                raise ConfigError(f"{argument}: {wants}; these are {given} with NaN or infinite "
                                  f"values.")
            if not (batch == np.round(batch)).all():
                hint = f"whole numbers in {low}..{high}"
                if batch.min() >= 0 and batch.max() <= 1 and high > 1:  # scaled for a model
                    hint = (f"{hint}, these times {high} rounded" if argument.startswith("--") else
                            f"(x * {high}).round().astype(np.{stored})")
                raise ConfigError(f"{argument}: {wants}; these are {given} "
                                  f"{value_range(batch)}, not whole numbers: give {hint}.")
        if batch.min() < low or batch.max() > high:
            raise ConfigError(f"{argument}: {wants}; these are {given} {value_range(batch)}: give "
                              f"values in {low}..{high}.")
        return batch.astype(stored)
    if given == np.uint8 and batch.max() > 1 and stored.kind == "f":
        sample = stored_sample(dataset)
        if sample.min() >= 0 and sample.max() <= 1:  # pixels for inputs scaled to [0, 1]
            raise ConfigError(f"{argument}: the run's data stores inputs as {stored} in [0, 1]; "
                              f"these are uint8 {value_range(batch)}: give x.astype(np.{stored}) "
                              f"/ 255.")
    return batch.astype(stored)


def stored_sample(dataset, count=64):
    """The training split's inputs: all of them in memory, else the first `count`."""
    train = dataset.train
    if datasets.in_memory(train):
        return np.asarray(train["inputs"])
    return np.asarray(datasets.examples(train, range(min(count, datasets.num_examples(train))))[
        "inputs"])


def predict(setup, state, inputs, chunk=1000):
    """The model's outputs (evaluation mode), in natural units, for `inputs` in the form the run's
    data set stores them (MNIST: uint8 pixels in 0..255, not floats in [0, 1]): one example
    (its outputs, unbatched) or a batch (theirs, a row each); stored_form says what it takes and
    refuses the rest in one line. Every process calls this with the same inputs, and gets all the
    outputs."""
    batch, batched = stored_form(setup.dataset, inputs)
    outputs = outputs_on(setup, state, batch, chunk)
    return outputs if batched else outputs[0]


def outputs_on(setup, state, inputs, chunk=1000):
    """predict's outputs for a batch of inputs in the stored form, unchecked; `chunk` examples at
    a time, to bound the memory of the activations."""
    parallel = setup.parallel

    @functools.partial(jax.jit, out_shardings=parallel.replicated)
    def outputs_of(state, inputs):
        outputs, _ = state.model.apply(state.params, state.model_state,
                                       setup.dataset.prepare_inputs(inputs), False)
        return setup.dataset.decode_outputs(outputs)

    inputs = np.asarray(inputs)
    if not len(inputs):  # no outputs, of the shape and dtype one example's have
        one = jax.eval_shape(outputs_of, state, np.zeros((1, *inputs.shape[1:]), inputs.dtype))
        return np.zeros((0, *one.shape[1:]), one.dtype)
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
    drawn = plots.prediction_figure(setup.task, test)
    outputs = outputs_on(setup, state, test["inputs"]) if drawn else None
    if jax.process_index() != 0:
        return []
    return plots.plot_all(workdir, setup.task, test, outputs, setup.dataset.decode_outputs, suffix)
