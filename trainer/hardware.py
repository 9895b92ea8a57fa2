"""What the devices can do: the peak FLOP/s of each device kind, for the model FLOPs utilisation
(MFU) a run logs on an accelerator and the step time a check (preflight.py) quotes."""

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
