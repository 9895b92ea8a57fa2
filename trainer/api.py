"""The Python API: everything the command line does, from one call, with objects a notebook cell
just defined, and the same guarantees (bitwise resume, Ctrl-C saves, one run per workdir).

    import sys; sys.path.insert(0, "/path/to/flaxfit")  # the checkout, from anywhere
    from trainer import api

    run = api.fit("configs/mnist_cnn.py", "runs/mnist", num_epochs=2,
                  dataset=dict(data_dir="../shared/data/mnist"))
    run.history_frame()          # every logged row (metrics.jsonl), as a pandas DataFrame
    run.final                    # {"eval/loss": ..., "eval/accuracy": ...}
    run.predict(images); run.evaluate(); run.plot()
    run = api.load("runs/mnist", step="best")   # a trained run, as evaluate.py reads it
    print(api.check("configs/wide_mlp.py"))     # what each device will hold and do; nothing run

`config` is a config file's path, a ConfigDict, None (the defaults) or a dict of fields (keyword
arguments over the defaults); keyword arguments override its fields (a dict for a section:
`optimizer=dict(learning_rate=3e-4, momentum=None)`; None sets a field back to its part's own
default). `model`, `dataset`, `task`, `optimizer` and `writers` take objects too: a model class
(linen or NNX) or a function that returns one, a `datasets.Dataset` or arrays
`((train_inputs, train_targets), (test_inputs, test_targets))` or `{"train": ..., "test": ...}`,
a `Task`, an Optax `GradientTransformation`, writer objects; and an object with its
constructor's fields, `model=dict(name=MyModule, hidden=32)`; an evaluation's metrics take
evaluator classes beside names, `evals=dict(val=dict(metrics=("loss", MyEvaluator)))`
(trainer/metrics.py). The run's config.json names each object by what it is and a fingerprint
of its code or data ("given:__main__.CNN#1f2e3d4c"): a run resumes only when given the same
objects again, and the command line, which cannot hold them, says so; load() needs them all but
the optimizer.

Errors are the project's own exceptions (trainer.errors), with the command line's one-line
messages; nothing here exits or parses flags. A run stopped by SIGINT (a notebook's interrupt
button) or SIGTERM saves a checkpoint after the current step and raises `Stopped`, a
KeyboardInterrupt: the same call resumes it.
"""
import contextlib
import dataclasses
import json
import os
import types
from typing import Any

from absl import logging

# absl's handler, before a library logs through absl: else absl falls back to logging.basicConfig
# (its own lines unformatted, the libraries' noise unfiltered: trainer/session.py).
logging.use_absl_handler()

import jax  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

import datasets  # pylint: disable=wrong-import-position
from trainer import configuration, evals, evaluation, generation, inference, loop  # pylint: disable=wrong-import-position
from trainer import input_pipeline, parts, preflight, record, session  # pylint: disable=wrong-import-position
from trainer.fingerprint import fingerprint  # pylint: disable=wrong-import-position
from trainer.errors import ConfigError, WorkdirError, argument, setting  # pylint: disable=wrong-import-position
from trainer.optim import TRAINER_FIELDS  # pylint: disable=wrong-import-position
from trainer.setup import build  # pylint: disable=wrong-import-position
from trainer.progress import in_notebook  # pylint: disable=wrong-import-position
from trainer.tasks import Task  # pylint: disable=wrong-import-position


@dataclasses.dataclass
class Run:
    """A trained run: what `fit` returns and `load` reads back."""
    workdir: str
    config: ml_collections.ConfigDict  # as resolved, what config.json holds
    state: Any  # the TrainState: params, model_state, opt_state, step, ema_params, ...
    final: dict  # the final evaluation ({} for a checkpoint before the last: see evaluate())
    setup: Any = dataclasses.field(repr=False)  # what the config built (trainer/setup.py)
    figures: list = dataclasses.field(default_factory=list)  # paths written by fit

    def __post_init__(self):
        # Absolute, so that the Run reads its files after an os.chdir (a notebook's %cd).
        self.workdir = os.path.abspath(os.fspath(self.workdir))
        self.figures = [os.path.abspath(path) for path in self.figures]

    def folder(self):
        """The workdir, or a WorkdirError where it is gone (moved or deleted since)."""
        if not os.path.isdir(self.workdir):
            raise WorkdirError(f"{self.workdir} no longer exists: the run's folder was moved or "
                               f"deleted since this Run was made; give api.load() the folder where "
                               f"it is now.")
        return self.workdir

    @property
    def params(self):
        return self.state.params

    @property
    def ema_params(self):
        """The moving average of the parameters, where config.ema_decay kept one (else None)."""
        return self.state.ema_params

    @property
    def step(self):
        return int(jax.device_get(self.state.step))

    @property
    def history(self):
        """Every logged row, train and eval, as metrics.jsonl holds them: a list of dicts."""
        path = os.path.join(self.folder(), "metrics.jsonl")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def history_frame(self):
        """The history as a pandas DataFrame, a row per logged step (train and eval rows of a
        step merged)."""
        try:
            import pandas  # pylint: disable=import-outside-toplevel
        except ImportError as e:
            raise ImportError("Run.history_frame() needs pandas: pip install pandas (Run.history "
                              "is the same as a list of dicts).") from e
        rows = {}
        for row in self.history:
            rows.setdefault(row["step"], {}).update(row)
        if not rows:  # nothing logged yet: no columns, an index named step all the same
            return pandas.DataFrame(index=pandas.Index([], name="step"))
        return pandas.DataFrame(list(rows.values())).set_index("step")

    def with_ema(self, ema):
        """The state, its moving average as the parameters where `ema`."""
        if not ema:
            return self.state
        if self.state.ema_params is None:
            raise WorkdirError(f"the run in {self.workdir} kept no moving average of its "
                               f"parameters to use (--ema, ema=True): train with "
                               f"{setting('ema_decay', 0.999)}.")
        return self.state.replace(params=self.state.ema_params)

    def evaluate(self, data=None, *, eval=None, split=None):  # pylint: disable=redefined-builtin
        """Every metric of the run's evaluations ({"val/loss": ..., "test/accuracy": ...,
        "test/confusion_matrix": counts}; "<name>_ema/..." of the moving average where the run
        kept one), each on its split; `eval`: only the evaluation of that name; `split`: the
        split of that name instead ("validation", "test" or "train"), with the metrics of `eval`
        or else the task's, its rows named by it. `data`: the test split replaced by another
        `datasets.Dataset`'s, or by arrays, (inputs, targets) or {"inputs": ..., "targets": ...},
        raw as the run's data set stores them (unless `eval` names one, the evaluations of the
        test split)."""
        setup = self.setup
        due = evals.chosen(setup.evaluations, eval, split, testing=data is not None)
        if data is not None:
            test = data.test if isinstance(data, datasets.Dataset) else arrays_split(data, "data")
            dataset = data if isinstance(data, datasets.Dataset) else setup.dataset
            setup = dataclasses.replace(setup, dataset=dataclasses.replace(dataset, test=test),
                                        evaluated_datasets={})
            due = [dataclasses.replace(each, split="test", max_examples=0, dataset=None)
                   for each in due]
        setup.check_splits(due, lambda each: argument("split", each.split))
        scalars, arrays = evaluation.evaluate_state(setup, self.state, due)
        return {**scalars, **arrays}

    def generate(self, prompts, max_new_tokens=200, *, temperature=1.0, top_k=0, top_p=1.0,
                 seed=0, ema=False):
        """The text a language model writes after each prompt (a list of strings; one string for
        one prompt): sampled at `temperature` (0: greedy) from the `top_k` most likely tokens
        (0: all) and the `top_p` of the probability, until the end of a document or
        `max_new_tokens`; the same seed gives the same text (trainer/generation.py)."""
        single = isinstance(prompts, str)
        texts = generation.complete(self.with_ema(ema), self.setup.dataset,
                                    [prompts] if single else list(prompts),
                                    max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_k=top_k, top_p=top_p, seed=seed)
        return texts[0] if single else texts

    def predict(self, inputs, ema=False):
        """The model's outputs for raw `inputs` (as the data set stores them), in natural units."""
        return evaluation.predict(self.setup, self.with_ema(ema), inputs)

    def plot(self, ema=False, show=None):
        """Writes the figures (curves, predictions or confusion matrix, ...) into the workdir and,
        in a notebook (`show` None) or where `show`, shows them; returns their paths."""
        paths = evaluation.write_figures(self.setup, self.with_ema(ema), self.folder(),
                                         suffix="_ema" if ema else "")
        if in_notebook() if show is None else show:
            display(paths)
        return paths


def display(paths):
    from IPython import display as ipython  # pylint: disable=import-outside-toplevel
    for path in paths:
        ipython.display(ipython.Image(filename=path))


def arrays_split(data, argument):
    """A split of in-memory arrays from (inputs, targets) or {"inputs", "targets"}."""
    inputs = targets = np.zeros(())
    if isinstance(data, dict) and {"inputs", "targets"} <= set(data):
        inputs, targets = np.asarray(data["inputs"]), np.asarray(data["targets"])
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        inputs, targets = np.asarray(data[0]), np.asarray(data[1])
    if not (inputs.ndim and targets.ndim):
        raise ConfigError(f"{argument}: give arrays as (inputs, targets) or {{'inputs': ..., "
                          f"'targets': ...}}, examples along the first axis.")
    if len(inputs) != len(targets) or not len(inputs):
        raise ConfigError(f"{argument}: {len(inputs)} inputs and {len(targets)} targets; give as "
                          f"many of each, at least one.")
    return {"inputs": inputs, "targets": targets}


SPLITS = ("train", "test")  # a dict of these is data, not config.dataset's fields
OPTIONAL = ("validation", "prepare_inputs", "decode_outputs")  # a Dataset's, a dict may add


def is_splits(data):
    return isinstance(data, dict) and bool(set(SPLITS) & set(data))


def dataset_of(data):
    """A datasets.Dataset from a Dataset, or from arrays ((train inputs, train targets), (test
    inputs, test targets)) or {"train": ..., "test": ...} (and "validation"; each split (inputs,
    targets) or {"inputs": ..., "targets": ...}) taken as the model's inputs as they are."""
    if isinstance(data, datasets.Dataset):
        return data
    if is_splits(data):
        keys = set(data)
        if not set(SPLITS) <= keys or keys - set(SPLITS) - set(OPTIONAL):
            raise ConfigError(f"dataset: a dict of splits takes 'train' and 'test', each (inputs, "
                              f"targets) or {{'inputs': ..., 'targets': ...}}, and optionally "
                              f"{', '.join(map(repr, OPTIONAL))}; this one has "
                              f"{', '.join(map(repr, sorted(keys)))}.")
        splits = [split for split in (*SPLITS, "validation") if split in data]
        return datasets.Dataset(
            **{split: arrays_split(data[split], f"dataset[{split!r}]") for split in splits},
            **{name: data[name] for name in OPTIONAL[1:] if name in data})
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return datasets.Dataset(train=arrays_split(data[0], "dataset=(train, test): train"),
                                test=arrays_split(data[1], "dataset=(train, test): test"))
    raise ConfigError("dataset: give a datasets.Dataset, arrays ((train_inputs, train_targets), "
                      "(test_inputs, test_targets)) or {'train': ..., 'test': ...}, a function "
                      "returning a Dataset, a name, or a dict of config.dataset's fields.")


def given_name(value):
    """"given:MODULE.NAME#FINGERPRINT", what config.json records of an object."""
    described = getattr(value, "func", value)  # a partial: its function's name
    if isinstance(described, (type, types.FunctionType)):
        module = described.__module__
    else:  # an instance: of its package's class (optax.GradientTransformationExtraArgs)
        described = type(described)
        module = described.__module__.split(".")[0]
    return f"{parts.GIVEN}{module}.{described.__qualname__}#{fingerprint(value)}"


def part_fields(config, section, fields, keep=()):
    """A part's section set from a dict: with a "name", another part, with these fields alone
    (the others None, so that the part's own defaults apply; the trainer's own, `keep`, stay);
    without, fields of the same part, changed or added (the part checks them against its
    signature)."""
    fields = dict(fields)
    if "name" in fields:
        for name in config[section]:
            if name not in keep:
                config[section][name] = None
    for name, value in fields.items():
        if name in config[section]:
            configuration.override(config, {f"{section}.{name}": value})
        else:
            config[section][name] = configuration.tuples(value)


def with_objects(config, model, dataset, task, optimizer, writers):
    """`config` with each object given named "given:...", and {name: object} to find them by."""
    objects = {}

    def give(value):
        name = given_name(value)
        objects[name] = value
        return name

    def give_part(section, value):
        """The name of an object given as a part; data set arrays made a Dataset first."""
        if section == "dataset" and not callable(value):
            value = dataset_of(value)
        return give(value)

    def named(section, fields):
        """Fields whose "name" may be an object: dict(name=MyModule, hidden=32)."""
        fields = dict(fields)
        if fields.get("name") is not None and not isinstance(fields["name"], str):
            fields["name"] = give_part(section, fields["name"])
        return fields

    for section, value in (("model", model), ("dataset", dataset)):
        if value is None:
            continue
        if section == "dataset" and is_splits(value):  # {"train": ..., "test": ...}: arrays
            value = dataset_of(value)
        if isinstance(value, (dict, ml_collections.ConfigDict)):  # fields, of a part by name
            part_fields(config, section, named(section, value))
        elif isinstance(value, str):
            config[section] = ml_collections.ConfigDict({"name": value})
        else:
            name = give_part(section, value)
            if config[section].get("name") != name:  # the same object keeps its fields (load)
                config[section] = ml_collections.ConfigDict({"name": name})
    if task is not None:
        if not isinstance(task, (str, Task)) and not callable(task):
            raise ConfigError(f"task={task!r}: give a trainer.tasks.Task, a function returning "
                              f"one, or a name ('classification', 'regression', ...).")
        config.task = task if isinstance(task, str) else give(task)
    if optimizer is not None:
        if isinstance(optimizer, (dict, ml_collections.ConfigDict)):
            part_fields(config, "optimizer", named("optimizer", optimizer), keep=TRAINER_FIELDS)
        elif isinstance(optimizer, str):
            config.optimizer.name = optimizer
        elif isinstance(optimizer, optax.GradientTransformation) or callable(optimizer):
            name = give(optimizer)
            if config.optimizer.get("name") != name:
                part_fields(config, "optimizer", {"name": name}, keep=TRAINER_FIELDS)
        else:
            raise ConfigError(f"optimizer={optimizer!r}: give an Optax GradientTransformation, a "
                              f"function returning one, a name ('adam', ...) or a dict of "
                              f"config.optimizer's fields.")
    if writers is not None:
        names = [w if isinstance(w, str) else give(w) for w in writers]
        # The history Run returns is metrics.jsonl's.
        config.writers = tuple(names if "jsonl" in names else ["jsonl", *names])
    return objects


def with_evaluators(overrides):
    """`overrides` with each evaluator given as an object in an evaluation's metrics
    (evals=dict(val=dict(metrics=("loss", MyEvaluator)))) named "given:...", and {name: object}
    to find them by."""
    objects = {}

    def give(metric):
        if isinstance(metric, str):
            return metric
        name = given_name(metric)
        objects[name] = metric
        return name

    evals_given = overrides.get("evals")
    if not isinstance(evals_given, (dict, ml_collections.ConfigDict)):
        return overrides, objects
    named = {}
    for name, fields in evals_given.items():
        if isinstance(fields, (dict, ml_collections.ConfigDict)) and isinstance(
                fields.get("metrics"), (tuple, list)):
            fields = {**fields, "metrics": tuple(map(give, fields["metrics"]))}
        named[name] = fields
    return ({**overrides, "evals": named} if objects else overrides), objects


def resolved(config, overrides, objects_given):
    """The config a call runs with, and the objects it names. A dict as the config is keyword
    arguments over the defaults, resolved first: the keywords given then set fields over it, a
    section's dict field by field (augment=dict(flip=True) in the dict and
    augment=dict(crop_padding=2) as a keyword give both)."""
    objects = {}
    if isinstance(config, dict):
        fields = dict(config)
        config, objects = resolved(None, fields, {name: fields.pop(name, None)
                                                  for name in objects_given})
    config = configuration.given_config(config)
    overrides, evaluators = with_evaluators(overrides)
    with config.unlocked() if config.is_locked else contextlib.nullcontext():
        objects = {**objects, **evaluators, **with_objects(config, **objects_given)}
        configuration.override(config, overrides)
        configuration.resolve_paths(config)
    return config, objects


@contextlib.contextmanager
def verbosity():
    """absl's verbosity for a call: INFO lines on a terminal or in a log, as the command line
    writes them (process 0 of several: the others warnings only); in a notebook only warnings, the
    progress bar showing the rest."""
    previous = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING if in_notebook() or jax.process_index() else
                          logging.INFO)
    try:
        yield
    finally:
        logging.set_verbosity(previous)


def fit(config=None, workdir=None, *, model=None, dataset=None, task=None, optimizer=None,
        writers=None, **overrides) -> Run:
    """Trains the run of `config` in `workdir`, resuming from its latest good checkpoint there;
    returns the Run. See the module's docstring for the arguments."""
    input_pipeline.refuse_in_a_starting_process()
    if not workdir:
        raise ConfigError("fit() needs a workdir: the folder for checkpoints, metrics and "
                          "figures, e.g. fit(config, 'runs/mnist').")
    session.start()
    config, objects = resolved(config, overrides, dict(
        model=model, dataset=dataset, task=task, optimizer=optimizer, writers=writers))
    with parts.given(objects):
        run = train(config, workdir)
    if run.figures and in_notebook():
        display(run.figures)
    return run


def check(config=None, *, model=None, dataset=None, task=None, optimizer=None,
          **overrides) -> preflight.Report:
    """What each device will hold and do in the train step of `config` (the arguments as fit()
    takes them), from an ahead-of-time compile for the devices JAX sees: nothing trained,
    nothing written. Raises the errors fit() raises for a bad config; `fits` says whether a run
    would be refused for memory (trainer/preflight.py)."""
    session.start()
    config, objects = resolved(config, overrides, dict(
        model=model, dataset=dataset, task=task, optimizer=optimizer, writers=None))
    with parts.given(objects):
        return preflight.report(config, build(config, abstract=True))


def train(config, workdir, keep_process=True):
    """fit() of a resolved config (scripts/train.py's; its own flags set up the process):
    `keep_process`: a second SIGINT raises KeyboardInterrupt rather than ending the process."""
    with verbosity():
        trained = loop.train_and_evaluate(config, os.fspath(workdir), keep_process=keep_process)
    return Run(trained.workdir, config, trained.state, trained.final, trained.setup,
               trained.figures)


def load(workdir, step=None, *, config=None, model=None, dataset=None, task=None,
         optimizer=None, **overrides) -> Run:
    """The trained run in `workdir`, at its checkpoint `step` (None: the latest; "best": the best
    by config.best_metric; or a number), with its own config.json unless `config` is given.
    `model`, `dataset`, `task`: the objects a run trained by fit() was given; `optimizer` too
    where its state is wanted (evaluate(), predict() and plot() need none: without it the
    checkpoint's optimizer state is left unread); keyword arguments override fields (where its
    data now lives, say; evals=dict(val=dict(metrics=(..., MyEvaluator))) for evaluators given
    as objects)."""
    session.start()
    base = config if config is not None else configuration.read_run_config(os.fspath(workdir))
    config, objects = resolved(base, overrides, dict(model=model, dataset=dataset, task=task,
                                                     optimizer=optimizer, writers=None))
    if dataset is not None:
        other_data(os.fspath(workdir), config.dataset.name)
    with parts.given(objects):
        setup, state, step = inference.restore(config, os.fspath(workdir), step)
    # The final evaluation where this is the run's last checkpoint (evaluate() computes any).
    return Run(os.fspath(workdir), config, state, loop.results_written(os.fspath(workdir), step),
               setup)


def other_data(workdir, name):
    """Warns, in one line, where the data set `name` load() was given is not the one the run's
    config.json records ("given:datasets.Dataset#1f2e3d4c": other arrays, by their fingerprint)."""
    try:
        trained_on = record.saved(workdir)["dataset"]["name"]
    except (KeyError, TypeError):
        return  # no record to compare with (read_run_config, or config=, says what is wrong)
    if trained_on != name:
        logging.warning("dataset: the data given (%s) is not the data the run in %s was trained "
                        "on (%s, as its config.json records); evaluate(), plot() and predict()'s "
                        "checks use the data given.", name, os.path.abspath(workdir), trained_on)
