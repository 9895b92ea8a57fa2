"""Know before you run: what each device will hold and do in a run's train step.

`report(config, setup)` takes a setup built with an abstract state (setup.build(...,
abstract=True): shapes, dtypes and the mesh's shardings, nothing allocated) and compiles, ahead of
time, the very jitted function the run's steps call (trainer/runners.py: the same shardings,
donation, accumulation and compute type) for the devices JAX sees. XLA's memory analysis of that
program says what each device holds while a step runs; its cost analysis, the FLOPs a step takes.
Nothing is written. The run calls the same function object, so on the same shapes this compile is
the run's (JAX's cache), not a second one.

scripts/train.py --check prints the Report; a run checks first, on an accelerator
(config.memory_check), and refuses a step that would pass FIT_FRACTION of a device's memory.
"""
import dataclasses
import os

import jax
import numpy as np

from trainer import configuration, evaluation, hardware, runners
from trainer.errors import ConfigError, setting
from trainer.model import build as build_model, precision_of

# Of a device's memory limit (on a GPU, the part JAX's allocator may take: 75 % of the card by
# default); the rest for the runtime, fragmentation and what XLA's analysis does not see.
FIT_FRACTION = 0.9
ASSUMED_UTILISATION = 0.4  # of the peak FLOP/s, for the step time a report quotes
MB = 1e6


class DoesNotFit(ConfigError):
    """A run whose train step would not fit in a device's memory (config.memory_check)."""


@dataclasses.dataclass(frozen=True)
class Report:
    """What one device holds and does in a train step; bytes and FLOPs per device."""
    compiler: str  # the platform and JAX version asked, said with every report
    devices: str  # how the step runs over them (Parallel.describe)
    path: str  # the runner's: fused or per_step
    parts: dict  # {what: bytes}: the step's arguments on each device
    temporaries: int | None  # XLA's buffers inside the step; None where the compiler says nothing
    total: int | None  # while a step runs: arguments, outputs not donated, temporaries, code
    evaluation: int | None  # the total while the largest evaluation step runs; None for none
    limit: int | None  # a device's memory, None where unknown
    limit_source: str
    flops: float | None  # one step on one device (forward, backward, update)
    device_count: int
    peak: float | None  # the device kind's peak FLOP/s (hardware.py), None off its table
    loops_counted_once: bool = False  # the model loops and cannot unroll: its FLOPs are short

    @property
    def peak_total(self):
        """What a device holds at the most, in a train step or an evaluation step."""
        return None if self.total is None else max(self.total, self.evaluation or 0)

    @property
    def fits(self):
        """True unless both the peak total and the limit are known and the total passes
        FIT_FRACTION of the limit."""
        return (self.total is None or self.limit is None
                or self.peak_total <= FIT_FRACTION * self.limit)

    def largest_part(self):
        parts = {**self.parts, "temporaries": self.temporaries or 0}
        return max(parts.items(), key=lambda item: item[1])

    def __str__(self):
        rows = [(what, size) for what, size in self.parts.items() if size]
        lines = [f"The train step ({self.path}), {self.devices}, as {self.compiler} compiles it:",
                 "  per device:"]
        lines += [f"    {what:<22}{megabytes(size)}" for what, size in rows]
        if self.total is None:
            lines.append("    (this JAX's compiler gives no memory analysis: no temporaries or "
                         "total)")
        else:
            lines += [f"    {'temporaries':<22}{megabytes(self.temporaries)}",
                      f"    {'total':<22}{megabytes(self.total)}"]
            if self.evaluation is not None:
                lines.append(f"    {'evaluation step':<22}{megabytes(self.evaluation)} (the "
                             f"state, a batch of evaluation, temporaries)")
        if self.limit is not None:
            lines.append(f"    {'limit':<22}{megabytes(self.limit)} ({self.limit_source})")
            if self.total is not None:
                lines.append(f"    {'headroom':<22}{megabytes(self.limit - self.peak_total)} "
                             f"({self.peak_total / self.limit:.0%} used at the most; a run "
                             f"refuses over {FIT_FRACTION:.0%})")
        if self.flops:
            lines.append(f"  FLOPs per step: {self.flops / 1e9:,.3g} GFLOP per device, "
                         f"{self.flops * self.device_count / 1e9:,.3g} GFLOP on all "
                         f"{self.device_count}")
            if self.peak:
                seconds = self.flops / (ASSUMED_UTILISATION * self.peak)
                lines.append(f"  at {ASSUMED_UTILISATION:.0%} of the device's peak "
                             f"({self.peak / 1e12:g} TFLOP/s): {seconds * 1e3:.3g} ms a step")
            if self.loops_counted_once:
                lines.append("  (too few: the model loops, and XLA counts a loop's body once; a "
                             "model field `scan_unroll` lets the check unroll its scan, as the "
                             "shipped transformer's does)")
        if jax.default_backend() == "cpu":
            lines.append("  (figures of XLA's CPU compiler: a GPU's or TPU's differ; check on the "
                         "accelerator itself)")
        return "\n".join(lines)


def megabytes(size):
    if abs(size) >= MB / 10:
        return f"{size / MB:,.1f} MB"
    return f"{size / 1e3:,.1f} kB" if abs(size) >= 100 else f"{size} bytes"


def compiler():
    device = jax.devices()[0]
    kind = f" ({device.device_kind})" if device.device_kind != device.platform else ""
    return f"XLA {device.platform}{kind}, jax {jax.__version__}"


def device_limit():
    """(bytes a device may use, where that figure comes from): the accelerator's own limit; on the
    CPU the host's available memory, shared by its (fake) devices."""
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except  (a backend without the call)
        stats = {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"], f"{device.device_kind}'s memory"
    if device.platform != "cpu":
        return None, "unknown"
    available, count = host_available(), jax.local_device_count()
    if available is None:
        return None, "unknown"
    return available // count, (f"the host's available {megabytes(available)} shared by "
                                f"{count} CPU device(s)")


def host_available():
    """The host's available memory (Linux's MemAvailable), None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def shapes_of(tree):
    """Arrays (or abstract ones) as jax.ShapeDtypeStruct with their shardings."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), tree)


def on_each_device(tree):
    """Bytes of `tree` (abstract, with shardings) on the device holding the most of it."""
    def shard_bytes(x):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        return int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    return sum(shard_bytes(x) for x in jax.tree.leaves(tree))


def abstract_batch(setup, rows=None):
    """A training batch of `rows` examples (default config.batch_size) as the step sees it,
    global and split over the mesh's data axes."""
    rows = rows or setup.config.batch_size
    return {name: jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        (rows, *np.shape(x)[1:]), np.asarray(x).dtype, sharding=setup.parallel.split), value)
        for name, value in setup.example.items()}


def step_arguments(setup, fused):
    """(the step's arguments in the global form, as abstract arrays; {part: bytes on each
    device}). Fused: (state, data, order, metrics, start_step, num_steps); per step: (state,
    metrics, batch)."""
    parallel, state = setup.parallel, shapes_of(setup.state)
    metrics = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                          sharding=parallel.replicated),
                           setup.task.collection.empty())
    parts = {"parameters": on_each_device(state.params),
             "optimizer state": on_each_device(state.opt_state),
             "other state": on_each_device(state.replace(params=None, opt_state=None)) +
             on_each_device(metrics)}
    if not fused:
        batch = abstract_batch(setup)
        return (state, metrics, batch), {**parts, "batch": on_each_device(batch)}
    data = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=parallel.replicated),
                        setup.dataset.train)
    order = jax.ShapeDtypeStruct((len(setup.dataset.train["targets"]),), np.int32,
                                 sharding=parallel.replicated)
    count = jax.ShapeDtypeStruct((), np.int32, weak_type=True)
    return ((state, data, order, metrics, count, count),
            {**parts, "training data": on_each_device(data) + on_each_device(order)})


def device_form(parallel, arguments):
    """pmap's form of abstract arguments: a leading axis of local devices, the batch's rows split
    over it; jit's is the global form itself."""
    if parallel.mode == "jit":
        return arguments
    count = jax.local_device_count()

    def stacked(x):
        if isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding == parallel.split:
            # A batch: each device's rows of the global one (every process's devices alike).
            return jax.ShapeDtypeStruct((count, x.shape[0] // jax.device_count(), *x.shape[1:]),
                                        x.dtype)
        if x.shape == () and x.weak_type:  # a host value (the fused path's step numbers)
            return x
        return jax.ShapeDtypeStruct((count, *x.shape), x.dtype)
    return jax.tree.map(stacked, arguments)


def cost(compiled_or_lowered, key):
    costs = compiled_or_lowered.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs  # older JAX: one per program
    return float((costs or {}).get(key, 0.0)) or None


def step_flops(config, setup, per_device=True, remat=None):
    """(FLOPs of one train step as XLA counts them, whether a loop was left counted once): on one
    device, in the compiled step (the replicated parts of data parallel counted on each); or
    (`per_device` False) the model's on the global batch, in the step lowered and not compiled
    (for MFU, cheap). XLA counts a loop's body once, so this is the step without accumulation on
    the whole batch, and the model built with its scan over blocks unrolled (its `scan_unroll`
    field): the same arithmetic, counted whole. `remat`: config.remat's, unless given ("none":
    the model's FLOPs, without recomputation, as MFU counts them)."""
    parallel = setup.parallel
    unrolled = build_model(config.model, precision_of(config), axis_name=parallel.axis_name,
                           remat=config.remat if remat is None else remat, scan_unroll=True)
    setup = dataclasses.replace(setup, state=setup.state.replace(model=unrolled), jitted={})
    jitted = parallel.compile(runners.train_step_into, **runners.step_args(
        config, setup, grad_accum_steps=1))
    arguments, _ = step_arguments(setup, fused=False)
    lowered = jitted.lower(*device_form(parallel, arguments))
    loops = "stablehlo.while" in lowered.as_text()
    if per_device:
        return cost(lowered.compile(), "flops"), loops
    flops = cost(lowered, "flops")  # jit: the global program; pmap: one device's
    return flops and flops * (jax.device_count() if parallel.mode == "pmap" else 1), loops


def analysis(compiled):
    """XLA's memory analysis of `compiled`, None where this JAX's compiler gives none (it is not
    a stable API)."""
    try:
        return compiled.memory_analysis()
    except Exception:  # pylint: disable=broad-except
        return None


def memory_of(compiled):
    """(temporaries, total) bytes on each device while `compiled` runs: its arguments, its outputs
    but those written over donated arguments, its temporaries and code; (None, None) where the
    compiler says nothing."""
    memory = analysis(compiled)
    if memory is None:
        return None, None
    return memory.temp_size_in_bytes, (
        memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)


def evaluation_total(config, setup, parts):
    """Bytes on each device while the largest of the run's evaluation steps runs: what stays
    resident through training (`parts` but the batch: the state whole, the fused path's data),
    an evaluation batch (config.eval_batch_size), the step's temporaries and outputs. None for no
    evaluation or where the compiler says nothing; evaluations of a data set of their own are
    not compiled here."""
    own = [each for each in setup.evaluations if each.name not in setup.evaluated_datasets]
    if not own:
        return None
    state = shapes_of(setup.state)
    batch = {**abstract_batch(setup, config.eval_batch_size),
             "mask": jax.ShapeDtypeStruct((config.eval_batch_size,), np.bool_,
                                          sharding=setup.parallel.split)}
    resident = sum(size for what, size in parts.items() if what != "batch")
    totals = []
    for step in set(evaluation.compile_eval(setup, own).values()):
        memory = analysis(step.lower(*device_form(setup.parallel, (state, batch))).compile())
        if memory is None:
            return None
        # Its arguments but the batch are the state, counted resident (and jit leaves out those
        # it does not read: the optimizer state).
        totals.append(resident + on_each_device(batch) + memory.temp_size_in_bytes
                      + memory.output_size_in_bytes + memory.generated_code_size_in_bytes)
    return max(totals)


def report(config, setup, count_flops=True) -> Report:
    """The Report of the run of `config`, whose `setup` (setup.build) holds its abstract state.
    `count_flops` False: no FLOPs (None), and so no compile but the run's own steps'."""
    fused = runners.use_fused_steps(config, setup)
    arguments, parts = step_arguments(setup, fused)
    compiled = runners.jitted_steps(config, setup, fused).lower(
        *device_form(setup.parallel, arguments)).compile()
    temporaries, total = memory_of(compiled)
    flops, loops = step_flops(config, setup) if count_flops else (None, False)
    limit, limit_source = device_limit()
    return Report(compiler(), setup.parallel.describe(), "fused" if fused else "per_step",
                  parts, temporaries, total, evaluation_total(config, setup, parts), limit,
                  limit_source, flops, jax.device_count(),
                  hardware.peak_flops(jax.devices()[0].device_kind), loops)


def utilisation_of(config, setup):
    """A function of steps/s to the run's model FLOPs utilisation, or None off the devices of
    hardware.PEAK_FLOPS (or where XLA counts nothing)."""
    peak = hardware.peak_flops(jax.devices()[0].device_kind)
    flops = step_flops(config, setup, per_device=False, remat="none")[0] if peak else None
    if not flops:
        return None
    return lambda steps_per_sec: flops * steps_per_sec / (peak * jax.device_count())


def check_before_run(config, setup, build):
    """Refuses, before anything is written, a run whose step would pass FIT_FRACTION of a
    device's memory, naming its largest part and what would help, each figure compiled here
    (`build(config)`: a setup of another config, abstract). config.memory_check: 'auto' checks on
    accelerators only, 'on' on the CPU too, 'off' never."""
    if config.memory_check == "off" or (config.memory_check == "auto"
                                        and jax.default_backend() == "cpu"):
        return
    checked = report(config, setup, count_flops=False)
    if checked.fits:
        return
    part, size = checked.largest_part()
    by_evaluation = (checked.evaluation or 0) > checked.total
    if by_evaluation:
        part, size = f"evaluation step (a batch of {config.eval_batch_size})", checked.evaluation
    tried = alternatives(config, build, by_evaluation)
    helps = [f"{change}: {megabytes(other.peak_total)}" for change, other in tried
             if other.total is not None and other.peak_total < checked.peak_total]
    if helps:
        helping = f"Compiled here, each device would need with {'; with '.join(helps)}. "
    elif tried:
        helping = (f"Compiled here, neither {' nor '.join(change for change, _ in tried)} would "
                   f"lower it: a smaller model or batch, or more devices. ")
    else:
        helping = ""
    raise DoesNotFit(
        f"the run needs {megabytes(checked.peak_total)} on each device and a device has "
        f"{megabytes(checked.limit)} ({checked.limit_source}; a run uses at most "
        f"{FIT_FRACTION:.0%}); the largest part is the {part}, {megabytes(size)}. {helping}"
        f"See it all with --check; to run anyway, {setting('memory_check', 'off')}.")


def alternatives(config, build, by_evaluation=False):
    """[(a setting, the Report under it)] of the changes that lower a step's memory: the state
    sharded over every device (fsdp), the blocks' activations recomputed (remat, for a model
    that takes it), and more gradient accumulation (a smaller microbatch); a smaller evaluation
    batch where the evaluation step is the larger."""
    changes = []
    half = config.eval_batch_size // 2
    if by_evaluation and half and half % jax.device_count() == 0:
        changes.append(({"eval_batch_size": half}, setting("eval_batch_size", half)))
    if jax.device_count() > 1 and config.parallelism == "jit" and config.mesh.fsdp != -1:
        changes.append(({"mesh": dict(data=1, fsdp=-1)}, setting("mesh", dict(data=1, fsdp=-1))))
    if config.remat != "full":
        changes.append(({"remat": "full"}, setting("remat", "full")))
    for k in (2, 4, 8):
        k *= config.grad_accum_steps
        if config.batch_size % (k * jax.device_count()) == 0:
            changes.append(({"grad_accum_steps": k}, setting("grad_accum_steps", k)))
    found = []
    for fields, said in changes:
        other = config.copy_and_resolve_references()
        configuration.override(other, fields)
        try:
            found.append((said, report(other, build(other), count_flops=False)))
        except ConfigError:  # a change the config cannot take (a mesh its rules refuse, remat
            # for a model without the field)
            continue
    return found
