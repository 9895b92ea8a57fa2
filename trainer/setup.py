"""What a config builds before any file is touched: devices, data, model, task, optimizer and a
fresh state. Training, evaluate.py, predict.py and plot.py all start here."""
import dataclasses
import functools
import hashlib
import os
from typing import Callable

import jax
import numpy as np
from absl import logging

import datasets
from datasets.augment import Augment, normalized
from trainer import batching, evals, finetune, input_pipeline, metrics, parts, record
from trainer.config_check import is_int, lookup, validate_config
from trainer.errors import ConfigError, setting
from trainer.model import build as build_model, module_of, precision_of
from trainer.optim import create_optimizer, frozen_parameters
from trainer.parallel import Parallel
from trainer.state import TrainState, create_train_state
from trainer.tasks import Task
from trainer.writers import find_writers


@dataclasses.dataclass(frozen=True)
class Setup:
    parallel: Parallel
    dataset: datasets.Dataset
    task: Task
    state: TrainState  # freshly initialised, on the mesh as config.sharding_rules say (abstract:
    # shapes, dtypes and shardings only, until materialized())
    learning_rate: Callable  # step -> learning rate
    steps_per_epoch: int
    total_steps: int
    augment: Augment | None  # on the host, for training batches
    config: object  # what the batches below are cut by
    validation_split: dict | None  # what the run records of it (record.py), None for none
    evaluated_datasets: dict  # {evaluation name: its own data set} (config.evals.<name>.dataset)
    measured: dict  # {an evaluation's metrics: their Metrics}, of every evaluation of the config
    example: dict  # the first training example (host arrays): the shapes of a batch
    initialize: Callable  # () -> a fresh state, allocated
    init_from: finetune.Plan | None = None  # what a fresh run loads of config.init_from
    jitted: dict = dataclasses.field(default_factory=dict)  # the run's steps (runners.py)

    def materialized(self):
        """This setup with its fresh state allocated on the devices, where it is abstract."""
        if isinstance(jax.tree.leaves(self.state)[0], jax.ShapeDtypeStruct):
            return dataclasses.replace(self, state=self.initialize())
        return self

    @property
    def streams(self):
        """Whether training batches come through the pipeline's workers (input_pipeline.py)
        rather than being cut from in-memory arrays: streamed or augmented splits, and in-memory
        ones for which config.pipeline.workers asks for worker processes."""
        return (not datasets.in_memory(self.dataset.train) or self.augment is not None
                or self.config.pipeline.workers > 0)

    def pipeline_settings(self):
        workers = self.config.pipeline.workers
        return dict(workers=input_pipeline.default_workers() if workers < 0 else workers,
                    buffer=self.config.pipeline.buffer)

    def describe_streaming(self):
        """Where streamed training batches come from, for the log; None for in-memory batches."""
        if not self.streams:
            return None
        dataset = self.config.dataset
        folder = dataset.get("data_dir") or dataset.get("tfds_data_dir")
        workers = self.pipeline_settings()["workers"]
        return (f"Training batches are streamed from {dataset.name}"
                f"{f' in {folder}' if folder else ''} ({self.dataset.num_train} examples), read "
                f"{'and augmented ' if self.augment else ''}by {workers} worker process(es).")

    def train_batches(self, start_step):
        """This process's rows of the training batch of every step from `start_step` (host
        arrays), for the per-step path."""
        order = dict(seed=self.config.seed, batch_size=self.config.batch_size,
                     steps_per_epoch=self.steps_per_epoch, process_index=jax.process_index(),
                     process_count=jax.process_count(), order=self.dataset.order)
        train = self.dataset.train
        if not self.streams:
            return batching.train_batches(train, start_step, self.total_steps, **order)
        source = train if not datasets.in_memory(train) else datasets.ArraySource(train)
        return input_pipeline.train_batches(source, start_step, self.total_steps,
                                            augment=self.augment, **self.pipeline_settings(),
                                            **order)

    @functools.cached_property
    def evaluations(self):
        """The config's, read once: the loop asks at every boundary which are due."""
        return evals.evaluations(self.config)

    def check_splits(self, evaluations, asked=None):
        check_evaluated_splits(evaluations, self.dataset_of, asked)

    def dataset_of(self, evaluation):
        """The data set `evaluation` reads: its own, or the run's."""
        return self.evaluated_datasets.get(evaluation.name, self.dataset)

    def metrics_of(self, evaluation):
        """Its trainer.metrics.Metrics: made once for each set of names, with the evaluators
        they name, which an object given to api.fit is found while the call runs only."""
        if evaluation.metrics not in self.measured:
            self.measured[evaluation.metrics] = metrics.of_evaluation(self.task, evaluation)
        return self.measured[evaluation.metrics]

    def eval_batches(self, evaluation):
        """This process's rows of every batch of `evaluation`'s split (an evals.Evaluation),
        padded and masked: every example once."""
        split = getattr(self.dataset_of(evaluation), evaluation.split)
        if evaluation.max_examples and evaluation.max_examples < datasets.num_examples(split):
            split = datasets.subset(split, np.arange(evaluation.max_examples))
        shares = (jax.process_index(), jax.process_count())
        if datasets.in_memory(split):
            return batching.eval_batches(split, self.config.eval_batch_size, *shares)
        return input_pipeline.eval_batches(split, self.config.eval_batch_size, *shares,
                                           **self.pipeline_settings())


def build_dataset(config, section="config.dataset"):
    """The data set a config section (config.dataset) names, built with its other fields."""
    name, fields = parts.section_fields(config)
    dataset = parts.find(dataclasses.replace(parts.DATASET, field=f"{section}.name"), name)
    if isinstance(dataset, datasets.Dataset):  # given built, in Python
        parts.no_fields(fields, section, "a datasets.Dataset")
    else:
        dataset = parts.call_with_fields(dataset, fields, section, parts.DATASET.described(name))
    if not isinstance(dataset, datasets.Dataset):
        raise ConfigError(f"{section}.name={name!r} gave a {type(dataset).__name__}, not a "
                          f"datasets.Dataset.")
    return dataset


def with_kept_tokenizer(dataset_config, workdir):
    """The data set's fields, a SentencePiece tokenizer trained on the corpus read from the copy
    the run kept (record.keep_tokenizer) where it has one: a resume or a use of the run never
    trains it again, even with the data folder's cache gone."""
    kept = os.path.join(workdir, record.TOKENIZER) if workdir else None
    if dataset_config.get("tokenizer") != "sentencepiece" or not os.path.isfile(kept or ""):
        return dataset_config
    dataset_config = dataset_config.copy_and_resolve_references()
    dataset_config.tokenizer, dataset_config.vocab_size = kept, None
    return dataset_config


def evaluated_datasets(config):
    """{evaluation name: its data set} of the evaluations on a data set of their own
    (config.evals.<name>.dataset), normalised as the run's (config.augment.mean, std)."""
    return {each.name: with_normalization(build_dataset(
        each.dataset, f"config.evals.{each.name}.dataset"), config.augment)
        for each in evals.evaluations(config) if each.dataset is not None}


def build_task(name):
    task = parts.find(parts.TASK, name)
    if not isinstance(task, Task) and callable(task):
        task = parts.call_with_fields(task, {}, "config.task", parts.TASK.described(name))
    if not isinstance(task, Task):
        raise ConfigError(f"config.task={name!r} is a {type(task).__name__}, not a "
                          f"trainer.tasks.Task (or a function returning one).")
    return task


def build_augment(config, inputs, dataset_name):
    """The host augmentation of config.augment, or None. `inputs`: the first training example's,
    batched: crop and flip take images, (height, width, channels); anything else would fail in the
    pipeline's workers, once the run's files are written."""
    transform = config.transform and parts.find(parts.TRANSFORM, config.transform)
    used = [f"crop_padding={config.crop_padding}"] * bool(config.crop_padding) + (
        ["flip=True"] if config.flip else [])
    if used and inputs.ndim != 4:
        raise ConfigError(
            f"config.augment.{' and '.join(used)} need{'s' * (len(used) == 1)} images, examples "
            f"of shape (height, width, channels), and the inputs of data set {dataset_name!r} are "
            f"{inputs.dtype} of shape {inputs.shape[1:]}: leave crop_padding at 0 and flip False "
            f"for it (config.augment.transform takes a function of your own).")
    if used or transform:
        return Augment(config.crop_padding, config.flip, transform)
    return None


def with_normalization(dataset, augment, inputs=None):
    """config.augment.mean and std, applied on the device after the data set's own scaling.
    `inputs`: the first training example's, read here if not given."""
    if len(augment.mean) != len(augment.std):
        raise ConfigError(f"config.augment.mean has {len(augment.mean)} values and std "
                          f"{len(augment.std)}; give one of each per channel (or neither).")
    if not augment.mean:
        return dataset
    if inputs is None:
        inputs = datasets.examples(dataset.train, [0])["inputs"]
    channels = inputs.shape[-1]
    if len(augment.mean) not in (1, channels):
        raise ConfigError(f"config.augment.mean has {len(augment.mean)} values; the images have "
                          f"{channels} channels.")
    if not all(s > 0 for s in augment.std):
        raise ConfigError(f"config.augment.std={augment.std}: every value must be > 0.")
    return dataclasses.replace(dataset, prepare_inputs=normalized(
        dataset.prepare_inputs, augment.mean, augment.std))


def check_grad_accum(config):
    k, devices = config.grad_accum_steps, jax.device_count()
    if config.batch_size % (k * devices):
        raise ConfigError(
            f"config.grad_accum_steps={k} does not divide the batch: config.batch_size="
            f"{config.batch_size} must split into {k} microbatches, each over {devices} "
            f"device(s). Use a batch size that is a multiple of {k * devices}.")


def with_validation(dataset, validation):
    """(the data set with a validation split carved from train where config.validation.fraction
    asks for one: `fraction` of the training examples (datasets.validation_indices), which
    training then never sees; what the run records of its validation split, None for none)."""
    fraction = validation.fraction
    if not fraction:
        own = dataset.validation
        return dataset, None if own is None else {"examples": datasets.num_examples(own),
                                                  "the data set's own": True}
    field = f"config.validation.fraction={fraction!r}"
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"{field} is invalid: it must be in (0, 1), the share of the training "
                          f"split to hold out (0: none).")
    if dataset.validation is not None:
        raise ConfigError(f"{field}: the data set has a validation split of its own; carve none "
                          f"({setting('validation.fraction', 0.0)}) and its own is used.")
    if dataset.order is not None:
        raise ConfigError(f"{field}: this data set orders its training rows itself (a mixture), "
                          f"so none can be carved from them; hold out validation data of its own "
                          f"and set {setting('validation.fraction', 0.0)}.")
    count = dataset.num_train
    held = datasets.validation_indices(count, fraction, validation.seed)
    if not 0 < len(held) < count:
        raise ConfigError(f"{field} of the training split's {count} examples holds out "
                          f"{len(held)}: give a fraction that leaves some on either side.")
    kept = np.setdiff1d(np.arange(count), held)
    carved = dataclasses.replace(dataset, train=datasets.subset(dataset.train, kept),
                                 validation=datasets.subset(dataset.train, held))
    digest = hashlib.sha256(np.asarray(held, np.int64).tobytes()).hexdigest()[:16]
    return carved, {"examples": len(held), "of": count, "fraction": fraction,
                    "seed": validation.seed, "digest": digest}


def check_evaluated_splits(evaluations, dataset_of, asked=None):
    """Each evaluation's split exists in its data set (`dataset_of(evaluation)`); `asked
    (evaluation)`: how its split was asked for, for the error (config.evals.<name>.split)."""
    for each in evaluations:
        if getattr(dataset_of(each), each.split) is None:
            where = asked(each) if asked else f"config.evals.{each.name}.split={each.split!r}"
            raise ConfigError(f"{where}, and the data set has no validation split: carve one "
                              f"from train ({setting('validation.fraction', 0.1)}).")


def warn_unevaluated_during_training(config, steps_per_epoch, total_steps):
    """config.best_metric and config.early_stopping.metric compare evaluations: with schedules
    of 0 there is only the final one, and neither acts, which a warning says (a shipped config's
    best_metric with --config.eval_every_epochs=0 is such a run, and a fine one)."""
    for field in ("best_metric", "early_stopping.metric"):
        name = lookup(config, field)
        each = evals.evaluation_of(config, name) if name else None
        if each is None or any(each.periods(steps_per_epoch)):
            continue
        every = (("eval_every_epochs", "eval_every_steps") if each.name == evals.LEGACY else
                 (f"evals.{each.name}.every_epochs", f"evals.{each.name}.every_steps"))
        logging.warning(
            "config.%s=%r compares evaluations, but config.%s=%s and %s=%s evaluate only once, "
            "at the end of training, so it acts on nothing: evaluate during it, e.g. %s, or set "
            "%s.", field, name, every[0], each.every_epochs, every[1].split(".")[-1],
            each.every_steps, setting(every[1], max(1, total_steps // 10)), setting(field, ""))


def num_classes(dataset):
    """How many classes the data set's labels have: a streamed split's own count where it offers
    one, else the largest integer label of in-memory splits + 1; None where neither tells."""
    counts = []
    for split in (dataset.train, dataset.test):
        if not datasets.in_memory(split):
            counts.append(getattr(split, "num_classes", None))
        elif np.issubdtype(split["targets"].dtype, np.integer) and split["targets"].size:
            counts.append(int(split["targets"].max()) + 1)
    return max((c for c in counts if c), default=None)


def output_fix(model_config, outputs, wanted):
    """How to give the model `wanted` outputs: the config.model field whose value is its number
    of outputs (`num_classes=5`) or ends with it (`features=(512, 512, 5)`), as a flag; of several,
    the one named for classes or outputs, else none."""
    flags = {}
    for field, value in model_config.items():
        if isinstance(value, (tuple, list)) and value and value[-1] == outputs:
            flags[field] = setting(f"model.{field}", (*value[:-1], wanted))
        elif is_int(value) and value == outputs:
            flags[field] = setting(f"model.{field}", wanted)
    fitting = [f for f in flags if "class" in f or "out" in f] or list(flags)
    return f"pass {flags[fitting[0]]}" if len(fitting) == 1 else f"give the model {wanted} outputs"


def check_sequence_length(model, inputs):
    """Sequences no longer than the model is made for (its field `max_len`, where it has one)."""
    longest = getattr(module_of(model), "max_len", None)
    if not (isinstance(inputs, dict) and "tokens" in inputs and is_int(longest)):
        return
    length = inputs["tokens"].shape[-1]
    if length > longest:
        raise ConfigError(
            f"the data set's sequences are {length} tokens long and config.model.max_len="
            f"{longest}: give sequences of at most {longest} tokens "
            f"({setting('dataset.seq_len', longest)}) or a model made for longer ones "
            f"({setting('model.max_len', length)}).")


def check_outputs(config, task, dataset, state, first):
    """The model's outputs against the data set's targets, abstractly (jax.eval_shape: shapes and
    dtypes, nothing computed), as a train step of the configured batch sees them: the task's loss
    and metrics must take them, and a classifier (integer labels, an output per class along a
    last axis of their own) must have an output for every class. Either failing otherwise stops
    the run at its first step, with its files written, as an error of JAX's or Optax's or a NaN."""
    rows = config.batch_size // config.grad_accum_steps
    inputs, targets = (jax.ShapeDtypeStruct((rows, *first[name].shape[1:]), first[name].dtype)
                       for name in ("inputs", "targets"))

    def model_outputs(params, model_state, x):
        return state.model.apply(params, model_state, dataset.prepare_inputs(x), False)[0]

    outputs = jax.eval_shape(model_outputs, state.params, state.model_state, inputs)
    try:
        jax.eval_shape(lambda o, t: task.compute_metrics(o, t, task.loss(o, t)), outputs, targets)
    except Exception as e:  # pylint: disable=broad-except  (the loss's or a metric's, on shapes)
        labels = np.issubdtype(targets.dtype, np.integer)
        other = "classification" if labels else "regression"
        hint = "" if config.task == other else (
            f" For {'integer class labels' if labels else f'{targets.dtype} targets (values)'} "
            f"use e.g. {setting('task', other)}.")
        raise ConfigError(
            f"config.task={config.task!r} cannot take the targets of data set "
            f"{config.dataset.name!r} ({targets.dtype}, shape {targets.shape[1:]} each; the "
            f"model's outputs: shape {outputs.shape[1:]}): {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0].rstrip('.')}.{hint}") from e
    for each in evals.evaluations(config):
        measured = metrics.of_evaluation(task, each)
        mask = jax.ShapeDtypeStruct(targets.shape[:1], np.int32)
        try:
            jax.eval_shape(lambda o, t, m: measured.on_device(o, t, task.loss(o, t), m).compute(),
                           outputs, targets, mask)
        except Exception as e:  # pylint: disable=broad-except  (a metric's, on shapes)
            raise ConfigError(
                f"{measured.where}={measured.names}: cannot be computed on the model's outputs "
                f"(shape {outputs.shape[1:]} each) and the targets ({targets.dtype}, shape "
                f"{targets.shape[1:]} each): {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0].rstrip('.')}.") from e
    classes = num_classes(dataset)
    if (task.classes and np.issubdtype(targets.dtype, np.integer) and classes
            and outputs.ndim == targets.ndim + 1 and outputs.shape[-1] < classes):
        raise ConfigError(
            f"config.model gives {outputs.shape[-1]} outputs but the data set's labels go up to "
            f"{classes - 1} ({classes} classes): a classifier needs an output for each class; "
            f"{output_fix(config.model, outputs.shape[-1], classes)}.")


def check_compiles_in_float16(config, state, example_inputs):
    """A float16 computation that this backend cannot compile (XLA's CPU: attention's float16
    matrix products accumulated in float32) is one line now, not a traceback at the first step:
    the model's forward pass is lowered (not compiled) to find out."""
    if precision_of(config) != "mixed_float16":
        return
    try:
        jax.jit(lambda params, model_state, inputs: state.model.apply(
            params, model_state, inputs, False)).lower(state.params, state.model_state,
                                                       example_inputs)
    except ValueError as e:
        raise ConfigError(
            f"config.precision='mixed_float16': this model's float16 computation cannot be "
            f"compiled for {jax.default_backend()} ({str(e).splitlines()[0].rstrip('.')}); use "
            f"{setting('precision', 'mixed_bfloat16')} here.") from e


def build(config, training=True, workdir=None, abstract=False) -> Setup:
    """Checks the config and builds everything from it; raises a user error if anything cannot be
    built. `training`: also check the metric writers and plan config.init_from (using a trained
    run needs neither). `workdir`: the run this is for, where it keeps files of its own (a
    tokenizer it trained); None for a run yet to begin. `abstract`: the fresh state as shapes
    only, allocated by Setup.materialized() (preflight.py checks first what it will need)."""
    validate_config(config)
    parallel = Parallel(config.parallelism, config.mesh, config.sharding_rules,
                        config.fsdp_min_size)
    parallel.check_batch_size("batch_size", config.batch_size)
    parallel.check_batch_size("eval_batch_size", config.eval_batch_size)
    check_grad_accum(config)
    task = build_task(config.task)
    if training:
        find_writers(config.writers)
    dataset, validation_split = with_validation(
        build_dataset(with_kept_tokenizer(config.dataset, workdir)), config.validation)
    others = evaluated_datasets(config)
    check_evaluated_splits(evals.evaluations(config), lambda each: others.get(each.name, dataset))
    first = datasets.examples(dataset.train, [0])  # read once: a streamed example is decoded
    dataset = with_normalization(dataset, config.augment, first["inputs"])
    augment = build_augment(config.augment, first["inputs"], config.dataset.name)
    # remat is for the backward pass: evaluation, prediction and generation alone run without.
    model = build_model(config.model, precision_of(config), axis_name=parallel.axis_name,
                        remat=config.remat if training else "none")
    steps_per_epoch = dataset.num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"config.batch_size={config.batch_size} is larger than the training split "
                          f"({dataset.num_train} examples). Use a batch size <= {dataset.num_train}.")
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch
    if config.profile_steps and config.profile_steps[0] >= total_steps:
        raise ConfigError(f"config.profile_steps={tuple(config.profile_steps)} starts past the end "
                          f"of training ({total_steps} steps), so it would trace nothing. Give a "
                          f"start below {total_steps}.")
    tx, learning_rate = create_optimizer(config.optimizer, steps_per_epoch, total_steps)
    example_inputs = dataset.prepare_inputs(first["inputs"])
    check_sequence_length(model, example_inputs)
    initialize = functools.partial(create_train_state, model, tx, example_inputs, config.seed,
                                   parallel.state_shardings, ema=config.ema_decay > 0,
                                   loss_scaling=precision_of(config) == "mixed_float16")
    try:
        state = initialize(abstract=abstract)
    except ConfigError:  # of the sharding rules
        raise
    except Exception as e:  # pylint: disable=broad-except
        shapes = jax.tree.map(lambda x: tuple(x.shape[1:]), example_inputs)
        raise ConfigError(
            f"config.model ({config.model.name!r}) cannot take the inputs of data set "
            f"{config.dataset.name!r}, of shape {shapes}: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    check_outputs(config, task, dataset, state, first)
    check_compiles_in_float16(config, state, example_inputs)
    evals.check_selection(config, lambda each: metrics.of_evaluation(task, each))
    frozen_parameters(config.optimizer, state.params)  # checked
    measured = {each.metrics: metrics.of_evaluation(task, each)
                for each in evals.evaluations(config)}
    setup = Setup(parallel, dataset, task, state, learning_rate, steps_per_epoch, total_steps,
                  augment, config, validation_split, others, measured, first, initialize,
                  finetune.plan(config, state) if training else None)
    if config.steps == "fused" and setup.streams:
        raise ConfigError("config.steps='fused' needs the training split in memory, no host "
                          "augmentation and no worker processes; this data set streams or is "
                          "augmented, or config.pipeline.workers > 0. Use per_step or auto.")
    if training:  # after every check: a bad config is one line, this warning not before it
        warn_unevaluated_during_training(config, steps_per_epoch, total_steps)
    return setup
