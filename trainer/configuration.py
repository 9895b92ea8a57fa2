"""A run's config from what a user gives, for the command line and the Python API alike: a config
file (`path.py` or `path.py:ARGUMENT`), a run's own config.json, overrides of its fields (None
sets a field back to None: its part's own default), and paths made absolute.

Every failure is a ConfigError (or a WorkdirError for a folder that holds no run) of one line.
"""
import difflib
import importlib.util
import json
import os
import traceback

import ml_collections

from configs.base import get_base_config
from trainer.errors import ConfigError, WorkdirError, setting


def tuples(value):
    """JSON lists back to the tuples configs use (linen modules must be hashable)."""
    if isinstance(value, dict):
        return {k: tuples(v) for k, v in value.items()}
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value


def read_run_config(workdir):
    """A run's own config.json, over today's defaults: a run of an earlier version lacks the
    fields added since."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise WorkdirError(f"{path} does not exist: {workdir} is not the folder of a training run "
                           f"(or give the config).")
    try:
        with open(path, encoding="utf-8") as f:
            config = get_base_config()
            saved = tuples(json.load(f))
            # A section set back to None (evals=None: its part's own default) keeps today's
            # default section, which ConfigDict.update cannot replace by None.
            config.update({name: value for name, value in saved.items()
                           if not (value is None and isinstance(config.get(name),
                                                                 ml_collections.ConfigDict))})
    except (ValueError, TypeError) as e:  # not JSON, or a field of another type
        raise ConfigError(f"{path} is not a readable config ({e}). Give the config "
                          f"yourself.") from e
    return config


def field(config, name):
    """The value of `name` ("config.model.name") in a config or its JSON; None where absent."""
    value = config
    for key in name.split(".")[1:]:
        try:
            value = value[key]
        except (KeyError, TypeError, AttributeError):
            return None
    return value


def load_file(spec):
    """The ConfigDict of a config file, `path.py` or `path.py:ARGUMENT` (get_config(ARGUMENT))."""
    path, _, argument = str(spec).partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"the config file could not be read ({path} is not a file). Check the "
                          f"path.")
    name = f"flaxfit_config_{abs(hash(os.path.abspath(path)))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"the config file {e.filename} has a syntax error on line {e.lineno}: "
                          f"{e.msg}. Fix the file.") from e
    except Exception as e:  # pylint: disable=broad-except  (the file raised)
        raise ConfigError(f"the config file {path} could not be loaded: {last_line(e)}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError("the config file defines no get_config() function returning a "
                          "ConfigDict.")
    try:
        config = module.get_config(argument) if argument else module.get_config()
    except TypeError as e:
        if argument and "positional argument" in str(e):
            raise ConfigError(f"{spec}: {path} takes no argument (its get_config() has no "
                              f"parameter), so ':{argument}' cannot go to it. Drop "
                              f"':{argument}'.") from e
        raise ConfigError(f"the config file {path} could not be loaded: {last_line(e)}") from e
    except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(f"the config file {path} could not be loaded: {last_line(e)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"the config file {path}: get_config() returned a "
                          f"{type(config).__name__}, not a ConfigDict.")
    return config


def last_line(error):
    return traceback.format_exception_only(type(error), error)[-1].strip()


def no_such_field(config, dotted, written, listing, value=None):
    """The ConfigError for a field the config lacks; `written`: the field as the user wrote it,
    `listing`: how to see the fields. A top-level name that is a field of a section
    (grad_clip_norm, of optimizer) is pointed there, in the reader's words (errors.setting)."""
    *parents, leaf = dotted.split(".")
    section = config
    for key in parents:
        section = section[key] if isinstance(section, ml_collections.ConfigDict) and (
            key in section) else None
    near = difflib.get_close_matches(leaf, list(section)) if isinstance(
        section, ml_collections.ConfigDict) else []
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    if not parents:
        owners = [name for name, each in config.items()
                  if isinstance(each, ml_collections.ConfigDict) and leaf in each]
        if owners:
            hint = (" at the top level (did you mean " + " or ".join(
                setting(f"{owner}.{leaf}", value) for owner in owners) + "?)")
    return ConfigError(f"{written}: the config has no such field{hint}. See the fields with "
                       f"{listing}.")


# Sections whose fields are names of the user's (config.evals.<name>): new ones are added.
OPEN_SECTIONS = ("evals",)


def override(config, overrides, written=None, listing="print(run.config)"):
    """Sets the fields of `overrides` ({"num_epochs": 2, "optimizer": {"momentum": None}} or
    {"optimizer.momentum": None}) in `config`, each checked: it exists, and a value of its type
    (None always: the part's own default). `written(field)`: the field as the user wrote it
    (None: as errors.setting gives it, with its value: `num_epoch=3`); `listing`: how to see the
    fields."""
    for key, value in overrides.items():
        said = setting(key, value) if written is None else f"{written(key)}"
        *parents, leaf = key.split(".")
        section = config
        for part in parents:
            if not isinstance(section, ml_collections.ConfigDict) or part not in section:
                raise no_such_field(config, key, said, listing, value)
            section = section[part]
        if parents and parents[0] in OPEN_SECTIONS and leaf not in section:
            # A new name there, or a field of one (trainer/evals.py checks those).
            section[leaf] = ml_collections.ConfigDict() if isinstance(value, dict) else value
        if not isinstance(section, ml_collections.ConfigDict) or leaf not in section:
            raise no_such_field(config, key, said, listing, value)
        if isinstance(value, dict) and isinstance(section[leaf], ml_collections.ConfigDict):
            override(config, {f"{key}.{k}": v for k, v in value.items()}, written, listing)
            continue
        try:
            setattr(section, leaf, tuples(list(value)) if isinstance(value, list) else value)
        except (TypeError, ValueError) as e:
            said = setting(key, value) if written is None else f"{written(key)}{value!r}"
            raise ConfigError(f"{said}: config.{key} is {type(section[leaf]).__name__} "
                              f"({e}).") from e


def resolve_paths(config):
    """Fields named *_dir or *_path (and init_from) hold paths: stored absolute, so that a run's
    config.json reads the same from any folder."""
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            resolve_paths(value)
        elif isinstance(value, str) and value and (name.endswith(("_dir", "_path"))
                                                   or name == "init_from"):
            config[name] = os.path.abspath(os.path.expanduser(value))


def given_config(config):
    """A copy of what the API is given as a config: a file's path (`path.py[:ARGUMENT]`), a
    ConfigDict, or None (the defaults of configs/base.py). A dict is taken apart by the API
    (trainer/api.py: keyword arguments over the defaults) before it comes here."""
    if config is None:
        return get_base_config()
    if isinstance(config, ml_collections.ConfigDict):
        return config.copy_and_resolve_references()
    if isinstance(config, (str, os.PathLike)):
        return load_file(os.fspath(config))
    raise ConfigError(f"config: {type(config).__name__} is not a config; give a config file's "
                      f"path (configs/mnist_cnn.py), a ConfigDict, a dict of fields, or None for "
                      f"the defaults.")
