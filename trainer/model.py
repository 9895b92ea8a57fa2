"""What a model is, for linen and NNX alike. The one module that imports flax.linen or flax.nnx, or
knows a collection: a new version of either API is a change here.

A model is found by the name rule (trainer/parts.py): a linen Module class, or a callable that
returns one; or an `nnx.Module` subclass, or a function that takes `rngs` and returns one. The
config section's other fields go to it, checked against its signature first. The trainer supplies
what is its own: to an NNX model its `rngs` (streams named `params` and `dropout`); `dtype` and
`param_dtype` (config.precision) where the constructor or linen fields take them; and under pmap the `axis_name` over which BatchNorm
averages its statistics (a linen field of that name, an NNX constructor argument, or else set on
each nnx.BatchNorm).

Whichever the API, the trainer sees a `Model`:

    init(params_key, dropout_key, example_inputs) -> (params, model_state)
    apply(params, model_state, inputs, train, dropout_key) -> (outputs, new model_state)
    annotations(example_inputs) -> {parameter name: PartitionSpec}, the model's own sharding

`params` are nested dicts of arrays; `model_state` the model's other variables, grouped by
collection as linen names them ({"batch_stats": {...}}), never RNG keys or counts, nor what a
model sows. A parameter's name is its path, `params/Conv_0/kernel` (linen) or NNX's attribute path
`params/conv1/kernel`, `params/layers/0/kernel`: the one name sharding rules, optimizer.frozen,
init_from_regex, the parameter table and checkpoints use.

Inputs are an array, or a dict with "tokens" (a language model's, datasets/text.py): the tokens
are the first argument, and each other entry (`segment_ids`, `positions`, a generation's `cache`)
goes by keyword to a __call__ that takes it, so a sequence model takes what it wants of them.

Modes and randomness are the trainer's: `train` is True in the train step only (dropout on,
batch statistics), False in evaluation, prediction and the figures. Linen models get `train=`,
`training=` or `deterministic=` as their __call__ asks; an NNX model is put in that mode
(`model.train()`/`model.eval()`, and `nnx.view` for layers that take their mode that way), and its
__call__ gets the mode argument or `rngs` where it takes them. Dropout keys come from
`dropout_key`, which the train step folds from (seed, step), so a resumed run draws the same masks.
"""
import functools
import inspect
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import spmd, traversals, variablelib
from jax.sharding import PartitionSpec

from models.remat import KEYWORDS as REMAT_KEYWORDS
from trainer import parts
from trainer.errors import ConfigError, setting

# How a model's __call__ is told whether it trains, in the order looked for.
MODE_ARGUMENTS = ("train", "training", "deterministic")
# What a linen model sows for inspection: not state (carried, it would grow every step).
SOWN = "intermediates"


def path_name(path):
    """'params/Dense_0/kernel' for a tree path, whatever the kinds of its keys."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def parameter_names(params):
    """The names of a tree of parameters, "params/Conv_0/kernel", in the order of its leaves."""
    return ["params/" + path_name(path)
            for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def map_parameters(function, params):
    """`params` with each leaf replaced by function(its name, the leaf)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: function("params/" + path_name(path), leaf), params)


def mode_argument(call):
    parameters = inspect.signature(call).parameters
    return next((name for name in MODE_ARGUMENTS if name in parameters), None)


def taken_inputs(call):
    """(argument name -> whether it is taken) of a model's __call__, for `split_inputs`."""
    parameters = inspect.signature(call).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return None  # takes every keyword
    return frozenset(parameters)


def split_inputs(inputs, taken):
    """(positional, keyword) arguments of the inputs, for a __call__ taking `taken` (None: any)."""
    if not (isinstance(inputs, dict) and "tokens" in inputs):
        return (inputs,), {}
    return (inputs["tokens"],), {name: value for name, value in inputs.items()
                                 if name != "tokens" and (taken is None or name in taken)}


def mode_keywords(argument, train):
    if argument is None:
        return {}
    return {argument: (not train) if argument == "deterministic" else train}


class LinenModel:
    """A linen Module, called with the mode argument its __call__ takes (or none: a model that
    behaves the same in training and evaluation); every collection it keeps besides `params`
    (BatchNorm's `batch_stats`, or its own) is mutable in training."""

    def __init__(self, module):
        self.module = module
        self.mode_argument = mode_argument(type(module).__call__)
        self.taken = taken_inputs(type(module).__call__)

    def variables(self, params_key, dropout_key, example_inputs):
        """linen's init, boxed where the model annotates sharding (nn.with_partitioning)."""
        args, keywords = split_inputs(example_inputs, self.taken)
        return self.module.init({"params": params_key, "dropout": dropout_key}, *args, **keywords,
                                **mode_keywords(self.mode_argument, False))

    def init(self, params_key, dropout_key, example_inputs):
        variables = dict(nn.meta.unbox(self.variables(params_key, dropout_key, example_inputs)))
        variables.pop(SOWN, None)
        return variables.pop("params", {}), variables

    def apply(self, params, model_state, inputs, train, dropout_key=None):
        variables = {"params": params, **model_state}
        args, keywords = split_inputs(inputs, self.taken)
        keywords.update(mode_keywords(self.mode_argument, train))
        if not train:
            return self.module.apply(variables, *args, **keywords), model_state
        outputs, updates = self.module.apply(variables, *args, rngs={"dropout": dropout_key},
                                             mutable=list(model_state), **keywords)
        return outputs, {**model_state, **updates}

    def annotations(self, example_inputs):
        key = jax.random.PRNGKey(0)
        boxed = jax.eval_shape(self.variables, key, key, example_inputs).get("params", {})
        specs = nn.get_partition_spec(boxed)
        # Named unboxed: a boxed leaf's path ends in the box's own `value`.
        return {name: spec for name, spec in zip(
            parameter_names(nn.meta.unbox(boxed)), jax.tree.leaves(specs, is_leaf=is_spec))
            if spec}


def is_spec(x):
    return isinstance(x, PartitionSpec)


class NnxModel:
    """An NNX Module, held as its graph definition (taken once from an abstract build) and pure
    trees of arrays: merged into a module at trace time in each step, put in the step's mode,
    called, and split again, so the compiled step is the same work as a linen model's. RNG
    variables are never carried: each call gets keys drawn from `dropout_key`."""

    def __init__(self, make, axis_name=None):
        """`make(rngs)`: the module, built."""
        self.make, self.axis_name = make, axis_name
        abstract = nnx.eval_shape(lambda: self.build(nnx.Rngs(params=0, dropout=0)))
        self.graphdef, state = nnx.split(abstract)
        # (collection, path as strings) -> (NNX's path, its variable as built, abstract)
        self.variables = {(collection(v), tuple(map(str, path))): (path, v)
                          for path, v in nnx.to_flat_state(state) if collection(v)}
        self.random = [(path, v) for path, v in nnx.to_flat_state(state)
                       if isinstance(v, nnx.RngState)]
        self.abstract = abstract  # its plain methods serve (the transformer's init_cache)
        call = type(abstract).__call__
        self.mode_argument = mode_argument(call)
        self.taken = taken_inputs(call)
        self.takes_rngs = "rngs" in inspect.signature(call).parameters
        self.specs = {"params/" + "/".join(strings): spmd.get_var_pspec(v)
                      for (kind, strings), (_, v) in self.variables.items() if kind == "params"}

    def build(self, rngs):
        # Sharding annotations (nnx.with_partitioning) are read, not applied as the variables are
        # made: the trainer places every array itself (trainer/sharding.py).
        with nnx.use_eager_sharding(False):
            module = self.make(rngs)
        if not isinstance(module, nnx.Module):
            raise ConfigError(f"config.model.name gave a {type(module).__name__}, not an "
                              f"nnx.Module: name an nnx.Module class, or a function that takes "
                              f"rngs and returns one.")
        if self.axis_name:  # pmap: BatchNorm statistics over the devices' shares of the batch
            for _, layer in nnx.iter_modules(module):
                if isinstance(layer, nnx.BatchNorm) and layer.axis_name is None:
                    layer.axis_name = self.axis_name
        return module

    def carried(self, state):
        """{"params": {...}, "batch_stats": {...}, ...} of an nnx.State: nested dicts keyed by the
        attribute path's parts (as strings, which Orbax keeps)."""
        tree = {}
        for path, variable in nnx.to_flat_state(state):
            if collection(variable):
                node = tree.setdefault(collection(variable), {})
                *parents, leaf = map(str, path)
                for key in parents:
                    node = node.setdefault(key, {})
                node[leaf] = variable.get_value()
        return tree

    def module(self, params, model_state, key):
        """The module of these trees, its random streams keyed from `key`."""
        flat = []
        for kind, tree in {"params": params, **model_state}.items():
            for strings, value in traversals.flatten_mapping(tree).items():
                path, variable = self.variables[kind, strings]
                flat.append((path, variable.replace(value)))
        for path, variable in self.random:  # streams stored in the model (nnx.Dropout(rngs=...))
            # Keyed by the stream's path too: two layers' streams of one tag draw apart.
            where = zlib.crc32("/".join(map(str, path)).encode())
            flat.append((path, variable.replace(
                jax.random.wrap_key_data(jax.random.fold_in(jax.random.fold_in(
                    key, zlib.crc32(variable.tag.encode())), where))
                if isinstance(variable, nnx.RngKey) else jnp.zeros((), jnp.uint32))))
        return nnx.merge(self.graphdef, nnx.from_flat_state(flat))

    def init(self, params_key, dropout_key, example_inputs):
        tree = self.carried(nnx.state(self.build(nnx.Rngs(params=params_key,
                                                          dropout=dropout_key))))
        params, model_state = tree.pop("params", {}), tree
        self.apply(params, model_state, example_inputs, False)  # traced: does it take the inputs?
        return params, model_state

    def apply(self, params, model_state, inputs, train, dropout_key=None):
        key = jax.random.PRNGKey(0) if dropout_key is None else dropout_key
        modes = dict(deterministic=not train, use_running_average=not train)
        module = nnx.view(self.module(params, model_state, key), raise_if_not_found=False, **modes)
        module.set_attributes(raise_if_not_found=False, **modes)
        args, keywords = split_inputs(inputs, self.taken)
        keywords.update(mode_keywords(self.mode_argument, train))
        if train and self.takes_rngs:  # the tutorial's style: __call__(x, rngs=None)
            keywords["rngs"] = nnx.Rngs(dropout=key)
        outputs = module(*args, **keywords)
        if not train:
            return outputs, model_state
        new = self.carried(nnx.state(module))
        new.pop("params", None)
        return outputs, new

    def annotations(self, example_inputs):
        del example_inputs  # read from the variables as built
        return {name: spec for name, spec in self.specs.items() if spec}


def module_of(model):
    """The user's module of a Model (an NNX one abstract: its fields and plain methods only)."""
    return model.module if isinstance(model, LinenModel) else model.abstract


def empty_cache(model, batch_size, length):
    """A sequence model's key-value cache for generation, as its `init_cache(batch_size, length)`
    makes it (models/transformer.py); None for a model without one (recomputed each token)."""
    make = getattr(module_of(model), "init_cache", None)
    return None if make is None else make(batch_size, length)


def collection(variable):
    """The linen collection an NNX variable is carried in; None for what is never carried: RNG
    keys and counts (drawn afresh each call) and what a model sows."""
    if isinstance(variable, (nnx.RngState, nnx.Intermediate)):
        return None
    if isinstance(variable, nnx.Param):
        return "params"
    return variablelib.variable_name_from_type(type(variable), allow_register=True)


def is_nnx(target):
    """An nnx.Module class, or a function that takes `rngs` (and returns one); either inside a
    functools.partial too."""
    base = target.func if isinstance(target, functools.partial) else target
    if isinstance(base, type):
        return issubclass(base, nnx.Module)
    signature = parts.signature_of(target)
    return signature is not None and "rngs" in signature.parameters


# config.precision: (the dtype the model computes in, the dtype its parameters are kept in; the
# optimizer state follows them). float16's narrow range comes with loss scaling (trainer/steps.py).
PRECISIONS = {"float32": ("float32", "float32"), "mixed_bfloat16": ("bfloat16", "float32"),
              "bfloat16": ("bfloat16", "bfloat16"), "mixed_float16": ("float16", "float32")}


def precision_of(config):
    """config.precision, config.dtype='bfloat16' read as its older name for 'mixed_bfloat16'."""
    if config.dtype != "bfloat16":
        return config.precision
    if config.precision not in ("float32", "mixed_bfloat16"):
        raise ConfigError(f"config.dtype='bfloat16' is the older name of "
                          f"{setting('precision', 'mixed_bfloat16')}, and config.precision="
                          f"{config.precision!r} says otherwise: give the precision alone "
                          f"({setting('dtype', 'float32')}).")
    return "mixed_bfloat16"


def remat_of(remat):
    """config.remat as a model's `remat` field takes it: a keyword of models/remat.py, or the
    tuple of activation names that "name,name" lists (is_remat checked the form)."""
    remat = remat.strip()
    if remat in REMAT_KEYWORDS:
        return remat
    return tuple(name.strip() for name in remat.split(","))


def is_remat(value):
    if not isinstance(value, str):
        return False
    names = remat_of(value)
    return isinstance(names, str) or all(
        name.isidentifier() and name not in REMAT_KEYWORDS for name in names)


def build(section, precision="float32", axis_name=None, remat="none", scan_unroll=False):
    """The Model config.model names, built with its fields; `precision`: config.precision (a
    name of PRECISIONS), given to a model by its fields `dtype` and `param_dtype`; `remat`:
    config.remat, by its field `remat`; `axis_name`: pmap's; `scan_unroll`: True to a model with
    that field, for XLA to count every pass of a scan's body, which it counts once
    (trainer/preflight.py)."""
    # What the trainer gives by fields of these names, and the value that a model without the
    # field computes by anyway (so it may lack the field). remat and scan_unroll only when set:
    # a model keeps its own default otherwise.
    given = {**dict(zip(("dtype", "param_dtype"), PRECISIONS[precision])),
             **({"remat": remat_of(remat)} if remat_of(remat) != "none" else {}),
             **({"scan_unroll": True} if scan_unroll else {})}
    defaults = {"dtype": "float32", "param_dtype": "float32", "remat": "none", "scan_unroll": True}
    settings = dict(precision=precision, remat=remat, scan_unroll=scan_unroll)
    name, fields = parts.section_fields(section)
    if "remat" in given and "remat" in fields:
        raise ConfigError(f"config.remat={remat!r} and config.model.remat={fields['remat']!r}: "
                          f"give remat once, as config.remat (none of config.model's).")
    target = parts.find(parts.MODEL, name)
    described = parts.MODEL.described(name)
    if isinstance(target, nnx.Module):
        raise ConfigError(f"config.model.name={name!r} is an nnx.Module already built, whose seed "
                          f"and placement are not the run's: name its class (or a function that "
                          f"takes rngs and returns one), and the trainer builds it.")
    if is_nnx(target):
        make = nnx_maker(target, fields, described, given, defaults, settings, axis_name)
        try:
            return NnxModel(make, axis_name)
        except ConfigError:
            raise
        except Exception as e:  # pylint: disable=broad-except  (the user's constructor raised)
            raise ConfigError(f"config.model ({described}) could not be built: "
                              f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    if isinstance(target, nn.Module):  # a linen module is only a description: used as given
        parts.no_fields(fields, "config.model", "a linen module built")
        module = target
    else:
        module = parts.call_with_fields(target, fields, "config.model", described)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"config.model.name={name!r} gave a {type(module).__name__}, not a "
                          f"linen or NNX Module: name a Module class, or a function that returns "
                          f"one.")
    for field, value in given.items():
        if field not in module.__dataclass_fields__:
            if value != defaults[field]:
                raise ConfigError(no_field(field, settings, type(module).__name__))
            continue
        try:
            module = module.clone(**{field: value})
        except ValueError as e:  # the model's own check of the value (a remat name it lacks)
            name = config_field(field)
            raise ConfigError(f"config.{name}={settings[name]!r}: "
                              f"{str(e).splitlines()[0]}") from e
    if axis_name and "axis_name" in module.__dataclass_fields__:
        module = module.clone(axis_name=axis_name)
    return LinenModel(module)


def config_field(field):
    return "precision" if field.endswith("dtype") else field


def no_field(field, settings, model_name):
    """A model without a field for a setting it was given otherwise than its default."""
    name = config_field(field)
    how = {"precision": "given to its layers, as the shipped models do",
           "remat": "applied to its repeated blocks in a scan, docs/models.md"}[name]
    return (f"config.{name}={settings[name]!r} needs a model with a field `{field}`, and "
            f"{model_name} has none: add one ({how}), or use "
            f"{setting(name, {'precision': 'float32', 'remat': 'none'}[name])}.")


def nnx_maker(target, fields, described, given, defaults, settings, axis_name):
    """rngs -> the NNX module, with the config's fields and what the trainer supplies; the fields
    checked first, against __init__ (NNX's metaclass hides the class's own signature)."""
    signature = parts.signature_of(target)
    takes = signature.parameters if signature is not None else {}
    supplied = {"rngs": None} if "rngs" in takes else {}
    for field, value in given.items():
        if field in takes:
            supplied[field] = jnp.dtype(value) if field.endswith("dtype") else value
        elif value != defaults[field]:
            raise ConfigError(no_field(field, settings, getattr(target, "__name__", str(target))))
    if axis_name and "axis_name" in takes:
        supplied["axis_name"] = axis_name
    parts.check_fields(target, fields, "config.model", described, supplied=supplied)

    def make(rngs):
        arguments = {**fields, **supplied}
        if "rngs" in arguments:
            arguments["rngs"] = rngs
        return parts.call_checked(target, arguments, "config.model", described)

    return make


def linen_module(section):
    """The plain linen Module of config.model, for code that calls it as linen itself
    (scripts/hand_loop.py)."""
    model = build(section)
    if not isinstance(model, LinenModel):
        raise ConfigError("a linen model is needed here; config.model names an NNX one.")
    return model.module
