"""Know before you run (trainer/preflight.py): the check's figures against the memory a real run's
train steps take on 8 fake CPU devices, --check from the command line writing nothing, and a run
that cannot fit refused before it touches its workdir."""
import json
import re
import os
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from conftest import REPO, devices, run_train
from trainer import api, preflight

MNIST = str(REPO.parent / "shared" / "data" / "mnist")
SHAKESPEARE = str(REPO.parent / "shared" / "data" / "shakespeare")
NARROW = [1024] * 4 + [10]  # wide_mlp's shape, narrower: its data parallel copies stay small

# The check's total against the measured peak (tests/memory_peak.py): a model of each kind, data
# parallel and sharded, the fused path and the per-step one.
CASES = {
    "wide_mlp data parallel": ("configs/wide_mlp.py", dict(
        dataset=dict(data_dir=MNIST), model=dict(features=NARROW), mesh=dict(data=-1, fsdp=1))),
    "wide_mlp fsdp=8": ("configs/wide_mlp.py", dict(
        dataset=dict(data_dir=MNIST), model=dict(features=NARROW))),
    "mnist_cnn": ("configs/mnist_cnn.py", dict(dataset=dict(data_dir=MNIST))),
    "transformer": ("configs/shakespeare_lm.py", dict(
        dataset=dict(path=SHAKESPEARE), batch_size=64, steps="per_step")),
}


@pytest.mark.parametrize("case", CASES)
def test_the_checks_total_is_within_10_percent_of_the_measured_peak(case):
    config, overrides = CASES[case]
    env = {**os.environ, **devices(8), "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "memory_peak.py"),
         json.dumps({"config": config, "overrides": overrides})],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["devices"] == 8
    assert figures["predicted"] == pytest.approx(figures["measured"], rel=0.10), figures


def test_check_prints_each_devices_figures_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    result = run_train("--config=configs/wide_mlp.py", f"--config.dataset.data_dir={MNIST}",
                       "--check", "--cpu_devices=8", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "jit over 8 cpu device(s) in 1 process(es), mesh fsdp=8" in out
    for part in ("parameters", "optimizer state", "temporaries", "total", "evaluation step",
                 "limit", "headroom", "FLOPs per step", "XLA's CPU compiler"):
        assert part in out, out
    # 104 M parameters and Adam's two moments, float32, over 8 devices: 52 MB and 104 MB each.
    assert "parameters            52.1 MB" in out and "optimizer state       104.1 MB" in out
    assert not workdir.exists()


def test_the_same_check_from_python_gives_its_figures():
    report = api.check("configs/wide_mlp.py", dataset=dict(data_dir=MNIST), model=dict(
        features=NARROW))
    assert report.fits and report.flops > 0 and report.limit > 0
    assert report.parts["parameters"] == 4 * (784 * 1024 + 3 * 1024 * 1024 + 1024 * 10
                                               + 4 * 1024 + 10)  # one device: all of them


def test_remat_trades_the_transformers_activations_for_flops():
    """The check compiles the run's remat: under full remat each block keeps only its input (its
    total against a real run's peak: docs/devices.md); every block's FLOPs are counted (the scan
    unrolled for the count), a recomputed forward pass more than without."""
    def check(remat):
        return api.check("configs/shakespeare_lm.py", dataset=dict(path=SHAKESPEARE),
                         batch_size=64, remat=remat)
    plain, full = check("none"), check("full")
    assert full.temporaries < plain.temporaries / 2
    assert 1.1 * plain.flops < full.flops < 1.35 * plain.flops
    assert not plain.loops_counted_once and not full.loops_counted_once  # the scan unrolled
    assert full.parts == plain.parts  # the same state and batch: remat changes no state


class Looping(nn.Module):
    """A model of one's own that loops (three Dense layers of one width in a fori_loop's body,
    their kernels stacked) and has no field to unroll it."""
    @nn.compact
    def __call__(self, x, train=False):
        kernels = self.param("kernels", nn.initializers.lecun_normal(), (3, 2, 2))
        x = jax.lax.fori_loop(0, 3, lambda i, h: nn.relu(h @ kernels[i]), x)
        return nn.Dense(1)(x)


def test_flops_of_a_loop_the_check_cannot_unroll_are_said_to_be_short():
    unrolled = api.check("configs/xor_mlp.py")
    looping = api.check("configs/xor_mlp.py", model=Looping)
    assert not unrolled.loops_counted_once and "XLA counts a loop's body once" not in str(unrolled)
    assert looping.loops_counted_once and "XLA counts a loop's body once" in str(looping)


def impossible_width():
    """An MLP width whose three square layers' Adam state alone passes this host's memory."""
    width = 1024
    while 3 * 3 * 4 * width ** 2 < preflight.host_available():
        width *= 2
    return width


def test_a_run_that_cannot_fit_is_refused_before_it_writes(tmp_path):
    width = impossible_width()
    workdir = tmp_path / "run"
    with pytest.raises(preflight.DoesNotFit) as refused:
        api.fit("configs/mnist_mlp.py", workdir, dataset=dict(data_dir=MNIST),
                model=dict(features=(width,) * 4 + (10,)), memory_check="on")
    message = str(refused.value)
    assert "\n" not in message and "the largest part is the temporaries" in message
    # The MLP's layers are not scanned: remat saves nothing. On the CPU microbatches are unrolled
    # (runners.step_args): more of them need more memory.
    assert ("Compiled here, neither remat='full' nor grad_accum_steps=2 nor grad_accum_steps=4 "
            "nor grad_accum_steps=8 would lower it" in message)
    assert "memory_check='off'" in message
    assert not workdir.exists()
    # From the command line: the report on stdout, one error line, exit 2.
    result = run_train("--config=configs/mnist_mlp.py", f"--config.dataset.data_dir={MNIST}",
                       f"--config.model.features=({width}, {width}, {width}, {width}, 10)",
                       "--check", f"--workdir={workdir}")
    assert result.returncode == 2 and "optimizer state" in result.stdout
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert not workdir.exists()


def test_a_run_on_8_devices_that_cannot_fit_is_told_what_fsdp_would_need(tmp_path):
    width = impossible_width()
    workdir = tmp_path / "run"
    result = run_train("--config=configs/mnist_mlp.py", f"--config.dataset.data_dir={MNIST}",
                       f"--config.model.features=({width}, {width}, {width}, {width}, 10)",
                       "--config.memory_check=on", f"--workdir={workdir}", env=devices(8))
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert "shared by 8 CPU device(s)" in line
    assert "each device would need with --config.mesh.data=1 --config.mesh.fsdp=-1: " in line
    assert "--config.memory_check=off" in line
    assert not workdir.exists()


def test_a_compiler_that_gives_no_memory_analysis_is_said_and_refuses_nothing():
    """memory_analysis() is not a stable JAX API: where it gives nothing, or is missing, the
    report says so and a run goes on."""
    class NoAnalysis:  # a compiled program of such a JAX
        def memory_analysis(self):
            return None

    class Missing:
        def memory_analysis(self):
            raise NotImplementedError

    assert preflight.memory_of(NoAnalysis()) == preflight.memory_of(Missing()) == (None, None)
    report = preflight.Report(
        compiler="XLA cpu, jax 0.0", devices="jit over 1 cpu device(s)", path="per_step",
        parts={"parameters": 4000}, temporaries=None, total=None, evaluation=None, limit=1000,
        limit_source="test", flops=None, device_count=1, peak=None)
    assert report.fits and "gives no memory analysis" in str(report)


@pytest.mark.parametrize("steps", ["fused", "per_step"])
def test_the_check_before_a_run_is_the_runs_own_compile(steps, tmp_path):
    """config.memory_check='on' on the CPU, as 'auto' on an accelerator: the check compiles the
    step function the run then calls, on the same shapes and shardings, so the run compiles its
    train step and its evaluation step once each, as without the check."""
    result = run_train("--config=configs/mnist_mlp.py", f"--config.dataset.data_dir={MNIST}",
                       "--config.model.features=(32, 10)", "--config.num_steps=4",
                       f"--config.steps={steps}", "--config.memory_check=on",
                       "--config.plots=False", f"--workdir={tmp_path}",
                       env={"JAX_LOG_COMPILES": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = re.findall(r"Finished XLA compilation of jit\((\w+)\)", result.stderr)
    step = "train_steps" if steps == "fused" else "train_step_into"
    assert compiled.count(step) == 1 and compiled.count("eval_step") == 1, compiled
