"""How the steps run over devices: over a mesh of every device JAX sees, on one host or many.

`jit` (the default, as current JAX recommends): one program over the Mesh of config.mesh. The
batch is split over its data-like axes; each array of the state is replicated or sharded as
trainer/sharding.py says (the default mesh: data parallel, everything replicated; with an "fsdp"
axis, parameters and optimizer state are split over it). XLA inserts the collectives, so the
global batch is computed as on one device (BatchNorm statistics included).

`pmap`: data parallel only: the per-device step under jax.pmap with axis name "data": gradients
averaged with lax.pmean, metrics gathered, BatchNorm statistics synchronised through the model's
`axis_name`.

Both run the same step functions of trainer/steps.py. Between steps the state is in "device form"
(global arrays on the mesh for jit, stacked per device for pmap); checkpoints hold global arrays,
written shard by shard, and restore onto any mesh and device count in either mode.
"""
import functools
import inspect

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trainer import sharding
from trainer.errors import ConfigError, setting

AXIS = "data"
MODES = ("jit", "pmap")


def local_copy(tree):
    """A tree of replicated global arrays as this process's own copy."""
    return jax.tree.map(lambda x: x.addressable_data(0), tree)


class Parallel:

    def __init__(self, mode, axis_sizes=None, rules=(), fsdp_min_size=0):
        """`axis_sizes`: config.mesh (None: data parallel over every device); `rules`:
        config.sharding_rules (trainer/sharding.py)."""
        self.mode = mode
        self.sizes = sharding.mesh_sizes({AXIS: -1} if axis_sizes is None else axis_sizes)
        sharded_axes = [axis for axis, size in self.sizes.items() if axis != AXIS and size > 1]
        if mode == "pmap" and (rules or sharded_axes):
            what = (f"config.mesh has {', '.join(f'{a}={self.sizes[a]}' for a in sharded_axes)}"
                    if sharded_axes else "config.sharding_rules are set")
            raise ConfigError(f"config.parallelism='pmap' runs data parallel only, and {what}: "
                              f"use {setting('parallelism', 'jit')} to shard the state.")
        self.mesh = sharding.make_mesh(self.sizes)
        self.rules, self.fsdp_min_size = rules, fsdp_min_size
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.split = NamedSharding(self.mesh, sharding.batch_spec(self.mesh))
        sharding.check_rows_per_process(self.split, self.sizes)
        # On the CPU, several multi-device programs in flight deadlock XLA's all-reduce.
        self.one_step_in_flight = jax.default_backend() == "cpu" and jax.device_count() > 1

    def describe(self):
        mesh = " x ".join(f"{axis}={size}" for axis, size in self.sizes.items() if size > 1)
        return (f"{self.mode} over {jax.device_count()} {jax.default_backend()} device(s) in "
                f"{jax.process_count()} process(es){f', mesh {mesh}' if mesh else ''}")

    @property
    def axis_name(self):
        """The axis a step's collectives name (pmap), for the model's BatchNorm; None under jit,
        where XLA computes over the global batch itself."""
        return AXIS if self.mode == "pmap" else None

    def state_shardings(self, abstract_state, annotations=None):
        """Where each array of a state (jax.eval_shape's abstract form) goes (sharding.py);
        `annotations`: the model's own sharding annotations."""
        return sharding.state_shardings(abstract_state, self.mesh, self.rules, self.fsdp_min_size,
                                        annotations)

    def step_sharding(self, state):
        """jit: the shardings the train step keeps the state in (those it was created with)."""
        return jax.tree.map(lambda x: x.sharding, state) if self.mode == "jit" else None

    def check_batch_size(self, field, batch_size):
        if batch_size % jax.device_count():
            raise ConfigError(
                f"config.{field}={batch_size} does not split evenly over the "
                f"{jax.device_count()} devices ({jax.process_count()} process(es)). "
                f"Use a multiple of {jax.device_count()}.")

    def put_batch(self, local):
        """This process's rows of a global batch (host arrays) on its devices, in device form."""
        if self.mode == "pmap":
            n = jax.local_device_count()
            return {name: a.reshape(n, a.shape[0] // n, *a.shape[1:]) for name, a in local.items()}
        return {name: jax.make_array_from_process_local_data(self.split, a)
                for name, a in local.items()}

    def to_device_form(self, state):
        """pmap: the replicated state stacked along a leading axis of local devices."""
        if self.mode == "jit":
            return state
        devices = jax.local_devices()
        stacked = NamedSharding(Mesh(np.array(devices), (AXIS,)), PartitionSpec(AXIS))

        def stack(x):
            copies = {shard.device: shard.data for shard in x.addressable_shards}
            return jax.make_array_from_single_device_arrays(
                (len(devices), *x.shape), stacked, [copies[d][None] for d in devices])

        return jax.tree.map(stack, state)

    def replicate(self, tree):
        """Host arrays (the same in every process) as global arrays whole on every device."""
        return jax.tree.map(
            lambda a: jax.make_array_from_process_local_data(self.replicated, np.asarray(a)), tree)

    def put_replicated(self, tree):
        """Host arrays (the same in every process) on every device, in device form."""
        return self.to_device_form(self.replicate(tree))

    def to_checkpoint_form(self, state):
        """The global form, which checkpoints hold whatever the device count."""
        if self.mode == "jit":
            return state
        return jax.tree.map(
            lambda x: jax.make_array_from_single_device_arrays(
                x.shape[1:], self.replicated, [shard.data[0] for shard in x.addressable_shards]),
            state)

    def to_host(self, tree):
        """Device-form values every device holds whole (metrics, counters), as arrays this
        process can read."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], tree)
        return local_copy(tree)

    def gather_rows(self, tree):
        """An eval step's gathered rows (whole batches, in device form) as this process's NumPy
        arrays: under jit from every process (a batch's rows are split over them)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.asarray(x[0]), tree)
        return multihost_utils.process_allgather(tree, tiled=True)

    def empty_metrics(self, collection):
        """An empty metrics collection in device form, to accumulate into on the device: placed
        as a step's metrics come out of it, so that the first step's call compiles the same
        program as the others (host arrays would compile it once more)."""
        return self.put_replicated(collection.empty())

    def metrics_values(self, metrics):
        """Running metrics (device form) as JSON numbers, exact: float32 and int32 values are
        Python floats and ints without rounding."""
        return [x.item() for x in jax.tree.leaves(self.to_host(metrics))]

    def metrics_from_values(self, collection, values):
        """metrics_values() back in device form; an empty collection where they do not fit it
        (none saved, or another task's)."""
        leaves, treedef = jax.tree.flatten(collection.empty())
        if not isinstance(values, list) or len(values) != len(leaves):
            return self.empty_metrics(collection)
        return self.put_replicated(jax.tree.unflatten(
            treedef, [np.asarray(v, dtype=leaf.dtype) for leaf, v in zip(leaves, values)]))

    def compile(self, step, donate_state=False, host_values=(), **step_args):
        """jit or pmap of `step(state, ..., **step_args)`, every argument in device form but those
        at the positions `host_values` (plain numbers, the same for every device)."""
        donate = (0,) if donate_state else ()
        if self.mode == "pmap":
            positional = [p for p in inspect.signature(step).parameters.values()
                          if p.kind == p.POSITIONAL_OR_KEYWORD]
            return jax.pmap(functools.partial(step, axis_name=AXIS, **step_args), axis_name=AXIS,
                            in_axes=tuple(None if i in host_values else 0
                                          for i in range(len(positional))),
                            donate_argnums=donate)
        return jax.jit(functools.partial(step, **step_args), donate_argnums=donate)

    @property
    def batch_sharding(self):
        """jit: how a batch gathered inside a step is split over the devices (pmap: each device
        gathers its own rows)."""
        return self.split if self.mode == "jit" else None
