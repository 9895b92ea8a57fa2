"""What a run's devices really hold at the most in its train steps, against what the check
(trainer/preflight.py) predicts: run by tests/test_preflight.py in a process of its own, as

    MALLOC_MMAP_THRESHOLD_=65536 XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python tests/memory_peak.py '{"config": "configs/wide_mlp.py", "overrides": {...}}'

It prints one JSON line. On the CPU every (fake) device's buffers are the process's memory, and
with glibc's mmap threshold fixed low every large buffer is its own mapping, given back when
freed: the resident set follows the live buffers. The run's own jitted step (the check compiles
it, so nothing compiles while measuring) runs once, then the peak resident set is reset
(/proc/self/clear_refs) and measured over 3 more steps: measured = that peak - the resident set
before them + the device buffers already live then (the state, the batch or the fused path's
data: their shards' bytes).
"""
import gc
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=wrong-import-position

from trainer import api, batching, preflight, runners  # pylint: disable=wrong-import-position
from trainer.setup import build  # pylint: disable=wrong-import-position

KB = 1024


def status(field):
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * KB for line in f if line.startswith(field + ":"))


def device_bytes(tree):
    return sum(shard.data.nbytes for x in jax.tree.leaves(tree) for shard in x.addressable_shards)


def main(case):
    config, _ = api.resolved(case["config"], case.get("overrides", {}), dict.fromkeys(
        ("model", "dataset", "task", "optimizer", "writers")))
    setup = build(config, abstract=True)
    report = preflight.report(config, setup, count_flops=False)
    fused = runners.use_fused_steps(config, setup)
    setup = setup.materialized()
    parallel = setup.parallel
    step = runners.jitted_steps(config, setup, fused)
    metrics = parallel.empty_metrics(setup.task.collection)
    if fused:
        inputs = (parallel.put_replicated(setup.dataset.train), parallel.put_replicated(
            batching.epoch_order(config.seed, 0, len(setup.dataset.train["targets"]))))

        def train(state, metrics):
            return step(state, *inputs, metrics, 0, 1)
    else:
        inputs = parallel.put_batch(next(setup.train_batches(0)))

        def train(state, metrics):
            return step(state, metrics, inputs)
    state = parallel.to_device_form(setup.state)
    del setup
    state, metrics = train(state, metrics)  # the first call: the runtime's one-time allocations
    jax.block_until_ready((state, metrics))
    gc.collect()
    resident = device_bytes((state, metrics, inputs))
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets the peak resident set (VmHWM) to the present one
    baseline = status("VmRSS")
    for _ in range(3):
        state, metrics = train(state, metrics)
        jax.block_until_ready((state, metrics))
    print(json.dumps({"predicted": report.total * jax.device_count(),
                      "measured": status("VmHWM") - baseline + resident, "resident": resident,
                      "path": report.path, "devices": jax.device_count()}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
