"""Parameters and optimizer state sharded over the mesh (config.mesh, config.sharding_rules), on 8
fake CPU devices: the same training as on one device, a fraction of the state on each device,
checkpoints that move between meshes, device counts and pmap, resume after SIGKILL, two processes
(data parallel and sharded across both), and bad rules."""
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs.base import get_base_config
from conftest import (REPO, SMALL_CNN, assert_logged_alike, devices, history, in_two_processes,
                      logged, run_train, train, train_in_turns, train_in_two_processes)
from trainer import sharding
from trainer.model import LinenModel
from trainer.optim import create_optimizer
from trainer.state import create_train_state

# The small CNN's conv kernel and both dense kernels are over this many elements: all sharded.
FSDP = ["--config.mesh.fsdp=4", "--config.fsdp_min_size=1000"]


class Inner(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(8)(x)


class NamedLikeAdamsMoment(nn.Module):
    """Parameters Dense_0/kernel and mu/Dense_0/kernel: Adam's first moment of the one has the
    path of the other, so only the state's structure tells which parameter it follows."""
    @nn.compact
    def __call__(self, x):
        return Inner(name="mu")(nn.Dense(8)(x))


def test_optimizer_state_and_average_follow_their_parameter_by_structure():
    config = get_base_config().optimizer
    config.frozen = "params/Dense_0/bias"  # optax.partition: masked places in Adam's state
    tx, _ = create_optimizer(config, steps_per_epoch=10, total_steps=100)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1})  # specs are kept on axes of size 1 too
    rules = (("params/Dense_0/kernel", ("fsdp", None)), ("params/mu/Dense_0/kernel", (None, "fsdp")))
    state = create_train_state(LinenModel(NamedLikeAdamsMoment()), tx, jnp.zeros((1, 8)), 0,
                               lambda s, annotations: sharding.state_shardings(s, mesh, rules),
                               ema=True)
    specs = collections.Counter(str(x.sharding.spec) for x in jax.tree.leaves(state))
    # Each kernel, its two moments and its average: four arrays split as the kernel is.
    assert specs["P('fsdp', None)"] == specs["P(None, 'fsdp')"] == 4
    assert str(state.ema_params["mu"]["Dense_0"]["kernel"].sharding.spec) == "P(None, 'fsdp')"
    assert sum(specs.values()) == len(jax.tree.leaves(state))


def state_checksums(workdir, step):
    """The checksum of every array of the checkpoint at `step`, as saved with it: equal checksums
    are equal bits."""
    return json.loads((workdir / "checkpoints" / str(step) / "checksums" / "metadata").read_text())


TENSOR_PARALLEL = ["--config.mesh.model=2", "--config.sharding_rules=("
                   "('params/Dense_0/kernel', (None, 'model')), ('params/Dense_1/kernel', "
                   "('model', None)))"]


@pytest.mark.parametrize("steps, args, mesh, table", [
    ("per_step", FSDP, "mesh data=2 x fsdp=4", "('fsdp', None)"),
    ("fused", FSDP, "mesh data=2 x fsdp=4", "('fsdp', None)"),
    ("per_step", TENSOR_PARALLEL, "mesh data=4 x model=2", "(None, 'model')"),
])
def test_a_sharded_run_learns_what_one_device_learns(steps, args, mesh, table, mnist_dir, tmp_path,
                                                     one_device_run):
    result = train(tmp_path, mnist_dir, 8, *args, "--config.num_steps=20", f"--config.steps={steps}")
    assert mesh in result.stderr
    assert table in result.stderr  # the parameter table shows how the kernel is split
    assert len(logged(tmp_path)[0]) == 20
    assert_logged_alike(one_device_run, logged(tmp_path))


MEMORY = """
import json, sys
import jax
from configs import mnist_cnn
from trainer.checkpoint import path_name
from trainer.setup import build
from trainer.sharding import bytes_on

config = mnist_cnn.get_config()
config.dataset.data_dir, config.mesh.fsdp = sys.argv[1], 4
state = build(config).state
arrays = {"params": state.params, "opt_state": state.opt_state}
leaves = jax.tree.leaves(arrays)
print(json.dumps(dict(
    on_device_0=bytes_on(arrays, jax.devices()[0]), total=sum(x.nbytes for x in leaves),
    replicated=sum(x.nbytes for x in leaves if x.sharding.is_fully_replicated),
    specs={path_name(p): str(x.sharding.spec)
           for p, x in jax.tree_util.tree_flatten_with_path(arrays)[0]})))
"""


def test_each_device_holds_a_quarter_of_the_sharded_state(mnist_dir):
    result = subprocess.run([sys.executable, "-c", MEMORY, mnist_dir], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, **devices(8)},
                            timeout=300, check=True)
    memory = json.loads(result.stdout.splitlines()[-1])
    sharded = memory["total"] - memory["replicated"]
    assert sharded > 0.95 * memory["total"]  # the kernels are nearly all of it
    assert memory["on_device_0"] == sharded // 4 + memory["replicated"]
    specs = memory["specs"]
    # Adam's moments are split as the parameter they follow; BatchNorm's scale is too small.
    moments = [spec for name, spec in specs.items() if name.endswith(("mu/Dense_0/kernel",
                                                                      "nu/Dense_0/kernel"))]
    assert moments == [specs["params/Dense_0/kernel"]] * 2 == ["P('fsdp', None)"] * 2
    assert specs["params/BatchNorm_0/scale"] == "P()"


def test_checkpoints_go_on_on_other_meshes_device_counts_and_modes(mnist_dir, tmp_path):
    train_in_turns(tmp_path, mnist_dir, [(8, [*FSDP[1:], "--config.mesh.fsdp=4"]),
                                         (8, [*FSDP[1:], "--config.mesh.data=8"]),
                                         (1, FSDP[1:]),
                                         (2, [*FSDP[1:], "--config.parallelism=pmap"])])


def test_sigkill_then_resume_of_a_sharded_run_is_bitwise_the_uninterrupted_run(mnist_dir,
                                                                              tmp_path):
    args = [*FSDP, "--config.num_steps=30", "--config.steps=per_step"]
    train(tmp_path / "uninterrupted", mnist_dir, 8, *args)
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *SMALL_CNN, *args,
               f"--config.dataset.data_dir={mnist_dir}", f"--workdir={tmp_path / 'killed'}"]
    run = subprocess.Popen(command, cwd=REPO, env={**os.environ, **devices(8)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while run.poll() is None and time.time() < deadline:
        if (tmp_path / "killed" / "checkpoints" / "10").is_dir():
            break
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL  # killed, not finished
    assert not (tmp_path / "killed" / "results.json").exists()
    result = train(tmp_path / "killed", mnist_dir, 8, *args)
    assert "Resuming from the checkpoint at step" in result.stderr
    assert (state_checksums(tmp_path / "killed", 30)
            == state_checksums(tmp_path / "uninterrupted", 30))
    assert history(tmp_path / "killed") == history(tmp_path / "uninterrupted")


def test_two_processes_shard_over_both_like_one_process(mnist_dir, tmp_path):
    """As on two hosts: the batch split over both, the kernels too, the small arrays replicated;
    one writer of metrics, checkpoints written by both."""
    args = [*FSDP[1:], "--config.mesh.fsdp=8", "--config.num_steps=10",
            "--config.checkpoint_every_steps=5"]
    train(tmp_path / "single", mnist_dir, 8, *args)
    outputs = train_in_two_processes(tmp_path / "multi", mnist_dir, *args)
    assert "8 cpu device(s) in 2 process(es), mesh fsdp=8" in outputs[0]
    assert "step 10: train/loss" not in outputs[1]  # only process 0 logs metrics
    assert len(logged(tmp_path / "multi")[0]) == 10
    assert_logged_alike(logged(tmp_path / "single"), logged(tmp_path / "multi"))
    assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()) == ["10", "5"]


BAD_MESHES_AND_RULES = [
    ({"sharding_rules": [["params/Dense_9/.*", ["fsdp"]]]},
     "config.sharding_rules[0]=('params/Dense_9/.*', ('fsdp',)) matches no parameter"),
    ({"sharding_rules": [["params/Dense_0/kernel", [None, "tensor"]]]},
     "axis 'tensor' is not in config.mesh (axes: data, fsdp, model)"),
    ({"mesh.data": 3}, "config.mesh={'data': 3, 'fsdp': 4, 'model': 1} does not fit the 8 devices"),
    ({"sharding_rules": [["params/Dense_1/kernel", [None, "fsdp"]]]},
     "dimension 1 of params/Dense_1/kernel (256, 10) does not divide into the 4 parts of 'fsdp'"),
    ({"parallelism": "pmap"}, "config.parallelism='pmap' runs data parallel only, and config.mesh "
                              "has fsdp=4"),
    ({"sharding_rules": [["params/Dense_0/kernel", [[None, "fsdp"], None]]]},
     "(None, 'fsdp') is not a spec entry"),
    ({"sharding_rules": [["params/Dense_.*", [None]], ["params/Dense_0/kernel", []]]},
     "config.sharding_rules[1]=('params/Dense_0/kernel', ()): every parameter it matches is taken "
     "by an earlier rule"),
]

# Each case through api.fit, all in one process of 8 fake devices (one start of JAX).
CHECK_ALL = """
import json, sys
from trainer import api
from trainer.errors import ConfigError
cases, mnist, workdir = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
found = []
for overrides in cases:
    try:
        api.fit("configs/mnist_cnn.py", workdir, dataset=dict(data_dir=mnist),
                **{"mesh.fsdp": 4, **overrides})
        found.append("no error")
    except ConfigError as e:
        found.append(str(e))
print(json.dumps(found))
"""


def test_a_bad_mesh_or_rule_is_one_error_line(mnist_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", CHECK_ALL, json.dumps([o for o, _ in BAD_MESHES_AND_RULES]),
         mnist_dir, str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **devices(8)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    for (_, message), error in zip(BAD_MESHES_AND_RULES, found):
        assert message in error and "\n" not in error, (message, error)
    assert not (tmp_path / "run").exists()  # found before anything was written


def test_the_rule_format_error_gives_an_example_that_fits(mnist_dir, tmp_path):
    args = ["--config=configs/mnist_mlp.py", "--config.mesh.fsdp=8", "--config.num_steps=2",
            "--config.eval_every_epochs=0", "--config.plots=False",
            f"--config.dataset.data_dir={mnist_dir}"]
    result = run_train(*args, '--config.sharding_rules=("params/Dense_0/kernel",)',
                       f"--workdir={tmp_path / 'refused'}", env=devices(8))
    assert result.returncode == 2
    example = re.search(r"e\.g\. (\(.*\))\.$", result.stderr.strip())[1]
    assert example == "('params/Dense_0/kernel', ('fsdp', None))"  # the largest, 784 rows
    result = run_train(*args, f"--config.sharding_rules=({example},)",
                       f"--workdir={tmp_path / 'run'}", env=devices(8))
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_axis_that_does_not_split_the_batch_must_stay_within_a_process(mnist_dir, tmp_path):
    """Each process feeds its own rows of the batch: a `model` axis over both processes would
    need the whole batch on each, and would train on half of it unseen. Refused instead."""
    for returncode, output in in_two_processes(tmp_path, mnist_dir, "--config.mesh.model=8"):
        assert returncode == 2 and "each process must hold its own rows of the batch" in output
