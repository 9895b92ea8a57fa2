"""Where each array of the train state lives on the device mesh: config.mesh, config.sharding_rules.

The mesh has named axes, e.g. {"data": 2, "fsdp": 4}. The batch is split over its data-like axes
(BATCH_AXES); an array is either replicated or split over some axes by a PartitionSpec.

Each parameter takes the spec of the first rule whose regex matches its whole path
("params/Dense_0/kernel", as in config.optimizer.frozen); one that no rule matches takes the
model's own annotation where it has one (nn.with_partitioning, nnx.with_partitioning, with the
axes named as in config.mesh), else the fsdp rule: split over the "fsdp" axis along its largest
dimension that divides by the axis size, replicated if it has fewer than config.fsdp_min_size
elements or no such dimension. Of equal
dimensions the last is split: a Dense kernel by its output features, which XLA computes in place,
gathering the (small) activations rather than the kernel (measured: docs/devices.md). The
optimizer state and the moving average follow the parameter they mirror (found by structure: a
copy of the parameters' tree); the model's other state (BatchNorm statistics), step and RNG key
are replicated.
"""
import math
import re
from collections.abc import Mapping

import jax
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from trainer.errors import ConfigError, setting
from trainer.model import map_parameters, parameter_names

BATCH_AXES = ("data", "fsdp")  # the mesh axes the batch is split over, where the mesh has them
FSDP = "fsdp"


def mesh_sizes(mesh_config):
    """{axis: size} of config.mesh, -1 resolved to the devices left; checked against the devices."""
    sizes = dict(mesh_config)
    devices = jax.device_count()
    # Data parallel always fits: the first axis takes every device, the others none.
    fitting = setting("mesh", {axis: -1 if i == 0 else 1 for i, (axis, size)
                               in enumerate(sizes.items()) if size != 1 or i == 0})
    fix = (f"Give sizes that multiply to {devices}, or one size -1 for the devices left, e.g. "
           f"{fitting}.")
    if not sizes or not all(isinstance(name, str) and isinstance(size, int) and not isinstance(
            size, bool) and (size > 0 or size == -1) for name, size in sizes.items()):
        raise ConfigError(f"config.mesh={sizes}: give named axes and positive sizes, one of them "
                          f"may be -1, e.g. dict(data=2, fsdp=4).")
    rest = [name for name, size in sizes.items() if size == -1]
    if len(rest) > 1:
        raise ConfigError(f"config.mesh={sizes}: only one size may be -1 (the devices left); "
                          f"{', '.join(rest)} are.")
    known = math.prod(size for size in sizes.values() if size != -1)
    if rest and devices % known == 0:
        sizes[rest[0]] = devices // known
    if math.prod(sizes.values()) != devices:
        raise ConfigError(f"config.mesh={dict(mesh_config)} does not fit the {devices} devices "
                          f"JAX sees ({jax.process_count()} process(es)). {fix}")
    return sizes


def make_mesh(sizes):
    return jax.make_mesh(tuple(sizes.values()), tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))


def batch_spec(mesh):
    return PartitionSpec(tuple(axis for axis in mesh.axis_names if axis in BATCH_AXES))


def check_rows_per_process(batch_sharding, sizes):
    """Each process feeds its own contiguous rows of every batch (batching.py): the devices of a
    process must hold just those rows, which an axis that does not split the batch (`model`)
    spanning processes, or placed before the batch axes, breaks."""
    count, index, rows = jax.process_count(), jax.process_index(), jax.device_count()
    held = batch_sharding.addressable_devices_indices_map((rows,))
    held = {i for index_slice in held.values() for i in range(rows)[index_slice[0]]}
    if held != set(range(index * rows // count, (index + 1) * rows // count)):
        raise ConfigError(
            f"config.mesh={sizes} over {count} processes: each process must hold its own rows of "
            f"the batch, so the axes that split it ({', '.join(BATCH_AXES)}) come first and "
            f"together span the processes; an axis that does not split the batch must stay within "
            f"a process. Give it fewer devices or move it last.")


def example_rule(params, mesh):
    """A rule that fits this model and mesh, for messages: its largest parameter, split over
    "fsdp" along a dimension that divides."""
    named = dict(zip(parameter_names(params), (leaf.shape for leaf in jax.tree.leaves(params))))
    name = max(named, key=lambda n: math.prod(named[n]))
    spec = tuple(fsdp_spec(named[name], mesh, 0)) or (None,) * len(named[name])
    return f"({name!r}, {spec})"


def parse_rules(rules, mesh, example):
    """config.sharding_rules as [(compiled regex, PartitionSpec)], each checked against the mesh;
    `example`: a rule that fits, for messages."""
    parsed = []
    for i, rule in enumerate(rules):
        where = f"config.sharding_rules[{i}]={tuple(rule) if isinstance(rule, list) else rule!r}"
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
                and isinstance(rule[1], (tuple, list))):
            raise ConfigError(f"{where}: a rule is (regex over parameter paths, spec), the spec a "
                              f"tuple with an axis name, a tuple of names or None per dimension, "
                              f"e.g. {example}.")
        pattern, spec = rule
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{where}: {pattern!r} is not a regular expression ({e}).") from e
        spec = tuple(tuple(s) if isinstance(s, list) else s for s in spec)
        for entry in spec:
            if not (entry is None or isinstance(entry, str) or isinstance(entry, tuple) and entry
                    and all(isinstance(a, str) for a in entry)):
                raise ConfigError(f"{where}: {entry!r} is not a spec entry: give, per dimension, "
                                  f"None (whole), an axis name, or a tuple of axis names.")
        check_axes(where, spec, mesh)
        parsed.append((regex, PartitionSpec(*spec), where))
    return parsed


def check_axes(where, spec, mesh):
    """Every axis a spec names is one of the mesh's, and splits one dimension at most."""
    axes = [a for s in spec if s is not None for a in (s if isinstance(s, tuple) else (s,))]
    for axis in axes:
        if axis not in mesh.axis_names:
            raise ConfigError(f"{where}: axis {axis!r} is not in config.mesh (axes: "
                              f"{', '.join(mesh.axis_names)}). Name one of them (sized "
                              f"by config.mesh.AXIS), or add {axis!r} to config.mesh "
                              f"in the config file.")
    if len(set(axes)) < len(axes):
        raise ConfigError(f"{where}: an axis splits at most one dimension.")


def check_fits(where, name, shape, spec, mesh):
    """A spec has no more entries than the parameter has dimensions, each dividing its own."""
    if len(spec) > len(shape):
        raise ConfigError(f"{where}: {name} has {len(shape)} dimensions {shape}, the spec "
                          f"{len(spec)}.")
    for d, entry in enumerate(spec):
        if shape[d] % spec_size(mesh, entry):
            raise ConfigError(f"{where}: dimension {d} of {name} {shape} does not divide into the "
                              f"{spec_size(mesh, entry)} parts of {entry!r}. Split another "
                              f"dimension, or give the axis a size that divides it.")


def spec_size(mesh, entry):
    """How many parts an entry of a PartitionSpec splits its dimension into."""
    axes = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[a] for a in axes if a is not None)


def fsdp_spec(shape, mesh, min_size):
    """The fsdp rule: the largest dimension dividing by the fsdp axis (the last of equal ones)."""
    parts = mesh.shape.get(FSDP, 1)
    if parts == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    dividing = [d for d in range(len(shape)) if shape[d] % parts == 0]
    if not dividing:
        return PartitionSpec()
    split = max(dividing, key=lambda d: (shape[d], d))
    return PartitionSpec(*(FSDP if d == split else None for d in range(len(shape))))


def params_specs(params, mesh, rules, min_size, annotations=None):
    """The PartitionSpec of every parameter (a tree of abstract arrays, like `params`): by the
    first rule that matches its name, else by the model's own annotation (`annotations`, {name:
    PartitionSpec}: nn.with_partitioning, nnx.with_partitioning), else by the fsdp rule."""
    rules = parse_rules(rules, mesh, example_rule(params, mesh))
    annotations = annotations or {}
    matching, used, sizes = set(), set(), {}

    def spec_of(name, leaf):
        sizes[name] = math.prod(leaf.shape)
        matches = [rule for rule in rules if rule[0].fullmatch(name)]
        matching.update(where for _, _, where in matches)
        if matches:
            _, spec, where = matches[0]
            used.add(where)
        elif name in annotations:
            spec, where = annotations[name], f"the model's sharding annotation of {name}"
            check_axes(where, tuple(spec), mesh)
        else:
            return fsdp_spec(leaf.shape, mesh, min_size)
        check_fits(where, name, leaf.shape, spec, mesh)
        return spec

    specs = map_parameters(spec_of, params)
    for _, _, where in rules:
        if where in matching and where not in used:
            raise ConfigError(f"{where}: every parameter it matches is taken by an earlier rule "
                              f"(the first match wins). Reorder the rules or remove it.")
        if where not in used:
            some = ", ".join(sorted(sizes, key=lambda name: -sizes[name])[:3])  # the largest
            raise ConfigError(f"{where} matches no parameter (its regex must match a whole path, "
                              f"e.g. {some}). Fix the regex or remove the rule.")
    return specs


def mirrors(tree, params):
    """Whether `tree` has the structure of `params`, each array of a parameter's shape or masked
    out (optax.MaskedNode: a frozen parameter's place in the trained part's state)."""
    if isinstance(params, Mapping):
        return (isinstance(tree, Mapping) and set(tree) == set(params)
                and all(mirrors(tree[key], params[key]) for key in params))
    return isinstance(tree, optax.MaskedNode) or getattr(tree, "shape", None) == params.shape


def follow_params(tree, params, shardings, replicated):
    """Shardings for `tree` (an optimizer state): each copy of the parameters' tree in it (Adam's
    moments, found by structure, not by name) is sharded as `shardings` say; the rest (a step
    count) is replicated."""
    def is_masked(x):
        return isinstance(x, optax.MaskedNode)

    def place(subtree):
        if not isinstance(subtree, Mapping):  # an array outside any copy: is_leaf stopped at copies
            return replicated
        return jax.tree.map(lambda x, sharding: x if is_masked(x) else sharding, subtree, shardings,
                            is_leaf=is_masked)

    return jax.tree.map(place, tree, is_leaf=lambda x: mirrors(x, params))


def state_shardings(state, mesh, rules=(), min_size=0, annotations=None):
    """The NamedSharding of every array of `state` (a TrainState of abstract arrays);
    `annotations`: the model's own, as params_specs takes them."""
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                             params_specs(state.params, mesh, rules, min_size, annotations),
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda _: replicated, state).replace(
        params=shardings, opt_state=follow_params(state.opt_state, state.params, shardings,
                                                  replicated),
        ema_params=None if state.ema_params is None else shardings)


def bytes_on(tree, device):
    """Bytes of the arrays of `tree` that `device` holds."""
    return sum(shard.data.nbytes for x in jax.tree.leaves(tree) for shard in x.addressable_shards
               if shard.device == device)
