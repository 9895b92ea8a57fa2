"""Every kind of part (model, data set, task, optimizer, metric writer) is found by one rule.

A part is named by a string:

    "name"          a part that ships: the module `<home>.name` (its default attribute: models/cnn.py's
                    `Model`, datasets/mnist.py's `load`), else the attribute `name` of the home
                    (optax.lamb, trainer.tasks.classification), else the importable module `name`
                    (its default attribute);
    "module:attr"   the attribute `attr` of a module: a home's module by its short name, or any
                    importable module, top-level or dotted (`my_models:CNN`, `my.pkg.nets:ResNet18`);
    "given:..."     an object given to trainer.api.fit() or trainer.api.load() in Python (`model=CNN`),
                    named so in the run's config.json, found while that call runs (given()).

A class or function found is called with the config's fields as keyword arguments (those that are
not None), checked against its signature first (the bound arguments of a functools.partial
included), so that a wrong field is one line that names the right ones.
"""
import contextlib
import dataclasses
import functools
import importlib
import inspect

from trainer.errors import ConfigError, listed


@dataclasses.dataclass(frozen=True)
class Kind:
    noun: str  # "a model"
    field: str  # the config field that names it
    home: str  # where the parts that ship live
    default: str | None  # the attribute used when a module is named alone
    shipped: str  # how to name the parts that ship, for messages
    keyword: str | None = None  # trainer.api.fit()'s argument that gives it as an object

    def described(self, name):
        """ "model 'cnn'" """
        return f"{self.noun.split(' ', 1)[1]} {name!r}"


MODEL = Kind("a model", "config.model.name", "models", "Model",
             "'mlp', 'cnn', 'nnx_cnn', 'transformer', 'nnx_transformer'", "model")
DATASET = Kind("a data set", "config.dataset.name", "datasets", "load",
               "'mnist', 'xor', 'polynomial', 'text'", "dataset")
TASK = Kind("a task", "config.task", "trainer.tasks", None,
            "'classification', 'regression', 'binary_regression', 'language_model'", "task")
OPTIMIZER = Kind("an optimizer", "config.optimizer.name", "optax", None,
                 "any Optax optimizer by its name ('sgd', 'adam', 'adamw', 'lamb', 'lion', ...)",
                 "optimizer")
TRANSFORM = Kind("an augmentation", "config.augment.transform", "datasets.augment", None,
                 "'module:function' of your own, (example, rng) -> example")
WRITER = Kind("a metric writer", "config.writers", "trainer.writers", "Writer",
              "'tensorboard', 'jsonl', 'wandb'", "writers")

GIVEN = "given:"
_given = {}  # name -> object, while a call of trainer.api.fit() or trainer.api.load() runs


@contextlib.contextmanager
def given(objects):
    """Objects given in Python, {name: object} with names "given:...", found by `find` while this
    lasts."""
    _given.update(objects)
    try:
        yield
    finally:
        for name in objects:
            _given.pop(name, None)


def import_if_exists(module_name, kind, name):
    """The module, or None if it (or a package above it) does not exist. An import error inside
    an existing module is the user's to fix, and says so."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            return None
        raise ConfigError(f"{kind.field}={name!r}: importing {module_name} failed: {e}.") from e
    except Exception as e:  # pylint: disable=broad-except  (the user's module raised)
        raise ConfigError(f"{kind.field}={name!r}: importing {module_name} failed: "
                          f"{type(e).__name__}: {e}.") from e


def not_found(kind, name, why):
    return ConfigError(f"{kind.field}={name!r} is not {kind.noun}: {why}. Use {kind.shipped}, "
                       f"or 'module:name' for your own (any importable module).")


def attribute(kind, name, module, attr):
    if attr is None:
        raise not_found(kind, name, f"{module.__name__} is a module; name what in it to use, "
                                    f"'{name}:NAME'")
    if not hasattr(module, attr):
        raise not_found(kind, name, f"module {module.__name__} has no {attr!r}")
    return getattr(module, attr)


def find(kind: Kind, name: str):
    """The object `name` stands for, by the rule above; a ConfigError if there is none."""
    if not isinstance(name, str) or not name.strip(":"):
        raise not_found(kind, name, "the name is empty")
    if name.startswith(GIVEN):
        if name not in _given:
            raise ConfigError(
                f"{kind.field}={name!r} is an object given to trainer.api.fit() in Python, which a "
                f"run's config.json names but cannot hold: use this run from Python, giving the "
                f"same object again: trainer.api.fit(..., {kind.keyword}=...) or "
                f"trainer.api.load(workdir, {kind.keyword}=...).")
        return _given[name]
    module_name, colon, attr = name.partition(":")
    shipped = import_if_exists(f"{kind.home}.{module_name}", kind, name)
    if shipped is not None:
        return attribute(kind, name, shipped, attr if colon else kind.default)
    if not colon:
        home = importlib.import_module(kind.home)
        if hasattr(home, name) and not inspect.ismodule(getattr(home, name)):
            return getattr(home, name)
    module = import_if_exists(module_name, kind, name)
    if module is None:
        raise not_found(kind, name, f"there is no module {module_name!r}" if colon else
                        f"neither {kind.home} nor an importable module has {name!r}")
    return attribute(kind, name, module, attr if colon else kind.default)


def section_fields(section):
    """(name, other fields) of a config section that names a part (config.model, config.dataset);
    a field that is None is left out, so the part's own default applies."""
    fields = {field: value for field, value in section.to_dict().items() if value is not None}
    return fields.pop("name"), fields


def takes_anything(signature):
    return [p.kind for p in signature.parameters.values()] == [
        inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]


def signature_of(target):
    """What `target` can be called with; None where nothing tells (some builtins). A class whose
    metaclass hides its own signature as (*args, **kwargs) (NNX's) by its __init__'s, also inside
    a functools.partial, whose arguments, positional or keyword, are bound to __init__'s names
    as Python binds them (`partial(Net, 8, 12)`: din and dhidden given)."""
    try:
        signature = inspect.signature(target)
        base = target.func if isinstance(target, functools.partial) else target
        if isinstance(base, type) and takes_anything(signature):
            args, keywords = ((target.args, target.keywords)
                              if isinstance(target, functools.partial) else ((), {}))
            # self bound to None: __init__'s signature less self and what the partial binds
            signature = inspect.signature(functools.partial(base.__init__, None, *args,
                                                            **keywords))
        return signature
    except (TypeError, ValueError):
        return None


def arguments(signature):
    """The names a call can give as keywords (a linen module's `parent` and `name` are Flax's)."""
    return [n for n, p in signature.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("parent", "name")]


def check_fields(target, fields, section, described, supplied=()):
    """Raises ConfigError for a field `target` does not take (naming those it does) or an
    argument it needs that neither the fields nor `supplied` (the trainer's own) give."""
    signature = signature_of(target)
    if signature is None:
        return
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    names = arguments(signature)
    unknown = sorted(set(fields) - set(names))
    if unknown and not takes_any:
        own = [n for n in names if n not in supplied]
        given = f" (and {listed(supplied)}, which the trainer gives)" if supplied else ""
        raise ConfigError(f"{section}.{unknown[0]} is not an argument of {described}; its "
                          f"arguments are {', '.join(own) or 'none'}{given}.")
    missing = [n for n in names if signature.parameters[n].default is inspect.Parameter.empty
               and n not in fields and n not in supplied]
    if missing:
        raise ConfigError(f"{described} needs {section}.{missing[0]}; add it to the config.")


def no_fields(fields, section, given_as):
    """An object given built takes no fields of its config section."""
    if fields:
        raise ConfigError(f"{section}.{sorted(fields)[0]}: the part was given as {given_as}, which "
                          f"takes no fields; build it with them yourself, or give the class.")


def call_checked(target, arguments_given, section, described):
    """target(**arguments_given), its own TypeError or ValueError (a value it refuses) as one
    line."""
    try:
        return target(**arguments_given)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{section} ({described}): {e}.") from e


def call_with_fields(target, fields, section, described):
    """target(**fields), checked first; `section` ("config.model") names the fields in messages,
    `described` ("model 'cnn'") the target."""
    check_fields(target, fields, section, described)
    return call_checked(target, fields, section, described)


def call_with_context(target, context, described):
    """target(**those of `context` its signature names); used where the framework, not the
    config, has what a part needs (a writer's workdir)."""
    signature = signature_of(target)
    names = arguments(signature) if signature is not None else list(context)
    missing = [n for n in names if n not in context
               and signature.parameters[n].default is inspect.Parameter.empty]
    if missing:
        raise ConfigError(f"{described} needs the argument {missing[0]!r}, which the trainer does "
                          f"not have; it can take {', '.join(context)}.")
    return target(**{n: context[n] for n in names if n in context})
