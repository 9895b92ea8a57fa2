"""The optimizer and learning-rate schedule of `config.optimizer`.

`name` is any Optax optimizer (`sgd`, `adam`, `adamw`, `lamb`, `lion`, ...) or 'module:function' of
your own; the fields below are the trainer's, and every other field that is not None is a keyword
argument of the optimizer (`momentum` for sgd, `b1` for adam, ...), checked against its signature.

`frozen`: a regex; the parameters whose path, "params/Conv_0/kernel", it matches whole
(`re.fullmatch`) get zero updates: clipping, weight decay and the optimizer see only the others.
"""
import functools
import re

import jax
import optax

from trainer import parts
from trainer.errors import ConfigError, listed, setting
from trainer.model import map_parameters, parameter_names

SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
# The trainer's own fields of config.optimizer; the rest go to the optimizer.
TRAINER_FIELDS = ("name", "learning_rate", "schedule", "warmup_steps", "decay_every_epochs",
                  "decay_rate", "grad_clip_norm", "weight_decay", "frozen", "end_learning_rate")


def create_schedule(config, steps_per_epoch, total_steps):
    lr = config.learning_rate
    end = config.get("end_learning_rate") or 0.0  # where the cosines end (a config may set it)
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=end / lr)
    if config.schedule == "warmup_cosine":
        if not 0 <= config.warmup_steps < total_steps:
            raise ConfigError(
                f"config.optimizer.warmup_steps={config.warmup_steps} leaves no step of the "
                f"cosine: the run has {total_steps} steps. Warm up over fewer "
                f"({setting('optimizer.warmup_steps', total_steps // 10)}) or train longer.")
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=config.warmup_steps, decay_steps=total_steps, end_value=end)
    # "step": multiply by decay_rate every decay_every_epochs epochs
    return optax.exponential_decay(lr, transition_steps=config.decay_every_epochs * steps_per_epoch,
                                   decay_rate=config.decay_rate, staircase=True)


def create_optimizer(config, steps_per_epoch, total_steps):
    """Returns (optax transformation, learning-rate schedule: step -> rate, or None where the
    optimizer was given built, with its own) for `config.optimizer`."""
    schedule = create_schedule(config, steps_per_epoch, total_steps)
    factory = parts.find(parts.OPTIMIZER, config.name)
    own_fields = {name: value for name, value in config.items()
                  if name not in TRAINER_FIELDS and value is not None}
    decays_itself = False
    if isinstance(factory, optax.GradientTransformation):  # given built, in Python
        parts.no_fields(own_fields, "config.optimizer", "an Optax transformation")
        optimizer, schedule = factory, None
    else:
        fields = {"learning_rate": schedule, **own_fields}
        signature = parts.signature_of(factory)
        # An optimizer with its own weight decay applies it its way (decoupled for adamw); for
        # the others it is added to the gradient.
        decays_itself = signature is not None and "weight_decay" in signature.parameters
        if decays_itself:
            fields["weight_decay"] = config.weight_decay
        optimizer = parts.call_with_fields(factory, fields, "config.optimizer",
                                           parts.OPTIMIZER.described(config.name))
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ConfigError(f"config.optimizer.name={config.name!r} gave a {type(optimizer).__name__}, "
                          f"not an Optax GradientTransformation.")
    chain = []
    if config.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay and not decays_itself:
        chain.append(optax.add_decayed_weights(config.weight_decay))
    tx = optax.chain(*chain, optimizer)
    if config.frozen:
        tx = optax.partition({"train": tx, "frozen": optax.set_to_zero()},
                             functools.partial(frozen_labels, config.frozen))
    return tx, schedule


def frozen_labels(frozen, params):
    """The label of each parameter for optax.partition: "frozen" or "train"."""
    regex = re.compile(frozen)
    return map_parameters(lambda name, _: "frozen" if regex.fullmatch(name) else "train", params)


def frozen_parameters(config, params):
    """The paths of the parameters `frozen` matches. One that matches none, or every one (nothing
    would train), is a mistake: raises ConfigError naming them."""
    if not config.frozen:
        return []
    names = parameter_names(params)
    frozen = [name for name in names if re.fullmatch(config.frozen, name)]
    if not frozen:
        raise ConfigError(f"config.optimizer.frozen={config.frozen!r} matches no parameter (the "
                          f"whole path must match); the parameters are {listed(names)}.")
    if len(frozen) == len(names):
        raise ConfigError(f"config.optimizer.frozen={config.frozen!r} matches every parameter, so "
                          f"nothing would train. Match only those to keep as they are; the "
                          f"parameters are {listed(names)}.")
    return frozen


def describe_frozen(config, params):
    """The log line of what `frozen` keeps as it is, or None."""
    frozen = frozen_parameters(config, params)
    if not frozen:
        return None
    sizes = dict(zip(parameter_names(params), (x.size for x in jax.tree.leaves(params))))
    return (f"Frozen by config.optimizer.frozen={config.frozen!r}: {len(frozen)} of {len(sizes)} "
            f"arrays, {sum(sizes[n] for n in frozen):,} of {sum(sizes.values()):,} parameters: "
            f"{listed(frozen)}.")
