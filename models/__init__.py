"""Models, found by name: `get_model(config.model)`.

`config.model.name` is a module of this package (`mlp` -> models/mlp.py) or any importable module
path (`my_project.my_model`); the module's `Model` class is built with the other fields of
`config.model` as constructor arguments. A name "module:Class" picks another class than `Model`.
Models take `(inputs, train: bool)`.
"""
import dataclasses
import importlib


class ModelError(Exception):
    """A model that cannot be found or built from the config; the message says how to fix it."""


def get_model(config):
    fields = config.to_dict()
    name = fields.pop("name")
    module_name, _, class_name = name.partition(":")
    if "." not in module_name:
        module_name = f"{__name__}.{module_name}"
    try:
        model_class = getattr(importlib.import_module(module_name), class_name or "Model")
    except (ImportError, AttributeError) as e:
        shipped = ["mlp", "cnn"]
        raise ModelError(
            f"config.model.name={name!r} is not a model: {e}. Use one of {shipped}, or a module "
            f"path whose module defines a Model class (e.g. 'my_project.my_model').") from e
    accepted = {f.name for f in dataclasses.fields(model_class)} - {"parent", "name"}
    unknown = sorted(set(fields) - accepted)
    if unknown:
        raise ModelError(f"config.model.{unknown[0]} is not a field of {model_class.__name__} "
                         f"(model {name!r}); its fields are {sorted(accepted)}.")
    try:
        return model_class(**fields)
    except (TypeError, ValueError) as e:
        raise ModelError(f"config.model ({name!r}): {e}.") from e
