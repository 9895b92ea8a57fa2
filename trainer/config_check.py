"""Checks a config before anything is built or written, so a bad value costs nothing."""
import re

from trainer.errors import ConfigError, Placeholder, setting
from trainer.model import PRECISIONS, REMAT_KEYWORDS, is_remat
from trainer.optim import SCHEDULES
from trainer.parallel import MODES


def lookup(config, field):
    value = config
    for part in field.split("."):
        if part not in value:
            raise ConfigError(f"config.{field} is missing; add it to the config file.")
        value = value[part]
    return value


def require(config, field, ok, requirement):
    value = lookup(config, field)
    if not ok(value):
        raise ConfigError(f"config.{field}={value!r} is invalid: it must be {requirement}. "
                          f"Fix the config file or pass {setting(field, Placeholder('VALUE'))}.")


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_regex(value):
    try:
        re.compile(value)
        return True
    except re.error:
        return False


def one_of(choices):
    return lambda value: value in choices, f"one of {sorted(choices)}"


def validate_config(config):
    for field in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps",
                  "keep_checkpoints"):
        require(config, field, lambda v: is_int(v) and v > 0, "a positive integer")
    for field in ("num_epochs", "num_steps", "eval_every_epochs", "eval_every_steps", "seed",
                  "validation.seed", "optimizer.warmup_steps"):
        require(config, field, lambda v: is_int(v) and v >= 0, "an integer >= 0")
    if lookup(config, "num_epochs") == 0 and lookup(config, "num_steps") == 0:
        raise ConfigError("config.num_epochs and config.num_steps are both 0: set one of them to "
                          "the length of training (num_steps wins when both are set).")
    require(config, "optimizer.learning_rate", lambda v: is_number(v) and v > 0, "a number > 0")
    require(config, "optimizer.momentum", lambda v: v is None or is_number(v) and 0 <= v < 1,
            "in [0, 1)")
    for field in ("optimizer.weight_decay", "optimizer.grad_clip_norm"):
        require(config, field, lambda v: is_number(v) and v >= 0, "a number >= 0 (0 turns it off)")
    require(config, "optimizer.decay_every_epochs", lambda v: is_int(v) and v > 0,
            "a positive integer")
    require(config, "optimizer.decay_rate", lambda v: is_number(v) and 0 < v <= 1, "in (0, 1]")
    require(config, "parallelism", *one_of(MODES))
    require(config, "nonfinite", *one_of(("stop", "skip")))
    require(config, "steps", *one_of(("auto", "fused", "per_step")))
    require(config, "profile_steps", lambda v: v == () or (
        isinstance(v, (tuple, list)) and len(v) == 2 and all(is_int(s) for s in v)
        and 0 <= v[0] < v[1]), "() (off) or (start, end), integers with 0 <= start < end")
    require(config, "dtype", *one_of(("float32", "bfloat16")))
    require(config, "precision", *one_of(tuple(PRECISIONS)))
    require(config, "memory_check", *one_of(("auto", "on", "off")))
    require(config, "remat", is_remat, f"one of {list(REMAT_KEYWORDS)}, or the names of "
            f"activations the model tags, separated by commas ('attention,mlp_hidden')")
    require(config, "grad_accum_steps", lambda v: is_int(v) and v > 0, "a positive integer")
    require(config, "fsdp_min_size", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    require(config, "sharding_rules", lambda v: isinstance(v, (tuple, list)),
            "a tuple of (regex, spec) rules, () for none")
    require(config, "ema_decay", lambda v: is_number(v) and (v == 0 or 0 < v < 1),
            "in (0, 1), or 0 (off)")
    for field in ("best_mode", "early_stopping.mode"):
        require(config, field, *one_of(("auto", "max", "min")))
    require(config, "early_stopping.patience", lambda v: is_int(v) and v > 0, "a positive integer")
    require(config, "early_stopping.min_delta", lambda v: is_number(v) and v >= 0, "a number >= 0")
    for field in ("best_metric", "early_stopping.metric", "init_from", "init_from_regex",
                  "optimizer.frozen"):
        require(config, field, lambda v: isinstance(v, str), "a string ('' for none)")
    for field in ("init_from_regex", "optimizer.frozen"):
        require(config, field, is_regex, "a regular expression over parameter paths")
    require(config, "augment.crop_padding", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    require(config, "pipeline.workers", lambda v: is_int(v) and v >= -1,
            "an integer >= 0, or -1 (a worker a core but one)")
    require(config, "pipeline.buffer", lambda v: is_int(v) and v > 0, "a positive integer")
    require(config, "validation.fraction", lambda v: is_number(v) and 0 <= v < 1,
            "in [0, 1): the share of the training split held out for validation (0: none)")
    for field in ("resume", "plots", "augment.flip", "select_on_test"):
        require(config, field, lambda v: isinstance(v, bool), "True or False")
    require(config, "optimizer.schedule", *one_of(SCHEDULES))
    for field in ("task", "model.name", "dataset.name", "optimizer.name"):
        require(config, field, lambda v: isinstance(v, str) and v, "a name (see the README)")
    require(config, "writers", lambda v: isinstance(v, (tuple, list)) and all(
        isinstance(w, str) for w in v), "a tuple of writer names, e.g. ('tensorboard', 'jsonl')")
