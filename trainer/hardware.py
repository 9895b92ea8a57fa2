"""What the devices can do, for the model FLOPs utilisation (MFU) a run logs on an accelerator:
the peak of each device kind, and the FLOPs of one train step counted by XLA."""
import functools

import jax
import numpy as np

import datasets
from trainer import steps

# Dense bfloat16 matrix-multiply peak of one JAX device, FLOP/s, from the vendors' data sheets.
# MFU is quoted against it whatever the compute type, as PaLM and MaxText quote it. The first
# entry whose name is in jax.Device.device_kind applies (so "H100 PCIe" before "H100").
PEAK_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
    ("TPU v6 lite", 918e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12), ("TPU v3", 61.5e12),  # v3: a JAX device is one of a chip's two cores
)


def peak_flops(device_kind):
    """The table's peak for a jax.Device.device_kind, None where it has none (CPUs)."""
    return next((peak for name, peak in PEAK_FLOPS if name in device_kind), None)


def train_step_flops(setup):
    """FLOPs of one train step on the global batch (forward, backward and update, all devices
    together), as XLA counts them in the step lowered from shapes, nothing compiled or run."""
    config = setup.config
    first = datasets.examples(setup.dataset.train, [0])
    batch = {name: jax.ShapeDtypeStruct((config.batch_size, *np.shape(value)[1:]),
                                        np.asarray(value).dtype)
             for name, value in first.items() if name in ("inputs", "targets")}
    step = functools.partial(steps.train_step, task=setup.task,
                             prepare_inputs=setup.dataset.prepare_inputs)
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
                                  setup.state)
    costs = jax.jit(step).lower(abstract_state, batch).cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs  # older JAX: one per program
    return float((costs or {}).get("flops", 0.0)) or None


def utilisation_of(setup):
    """A function of steps/s to the run's MFU, or None off the table's devices."""
    peak = peak_flops(jax.devices()[0].device_kind)
    if peak is None:
        return None
    flops = train_step_flops(setup)
    if flops is None:  # a JAX whose XLA counts nothing
        return None
    return lambda steps_per_sec: flops * steps_per_sec / (peak * jax.device_count())
