import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
from absl import flags
from PIL import Image

from datasets import mnist

# In-process tests use libraries that read absl flags (Grain) without a command line to parse.
flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_dir():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST is expected at {MNIST_DIR} (see its README)")
    return str(MNIST_DIR)


def run_train(*args, env=None, timeout=300):
    """Runs scripts/train.py as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def files(folder):
    """Every file under `folder` with its bytes, to show that nothing was touched."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# Multi-device runs: XLA_FLAGS must be set before JAX starts, so each run is a subprocess.
SMALL_CNN = ["--config=configs/mnist_cnn.py", "--config.model.conv_features=(8, 16)",
             "--config.log_every_steps=1", "--config.checkpoint_every_steps=10",
             "--config.plots=False"]


def devices(n):
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def train(workdir, mnist_dir, num_devices, *args, base=SMALL_CNN):
    """`base` (SMALL_CNN) on `num_devices` fake CPU devices; asserts that it succeeded."""
    result = run_train(*base, f"--config.dataset.data_dir={mnist_dir}", f"--workdir={workdir}",
                       *args, env=devices(num_devices))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def history(workdir):
    """The logged metrics, less the wall-clock speed."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_per_sec")}
            for line in lines]


def logged(workdir):
    """(train losses, every evaluation's accuracies) as logged, step by step."""
    entries = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [e["train/loss"] for e in entries if "train/loss" in e]
    return losses, [value for e in entries for name, value in sorted(e.items())
                    if name.endswith("/accuracy") and not name.startswith("train/")]


def results(workdir):
    """results.json less what it adds to the final evaluation (best_step and best/...: the
    test figures of the best checkpoint): what evaluate.py gives of the run's last step."""
    saved = json.loads((workdir / "results.json").read_text())
    return {name: value for name, value in saved.items() if not name.startswith("best")}


def assert_logged_alike(expected, actual, relative=1e-5):
    """Two runs' logged(): the same number of train losses, each to `relative`, and the same eval
    accuracies."""
    (expected_losses, expected_accuracy), (losses, accuracy) = expected, actual
    assert len(losses) == len(expected_losses) > 0
    for a, b in zip(expected_losses, losses):
        assert abs(a - b) <= relative * abs(a)
    assert accuracy == expected_accuracy


def train_in_turns(workdir, mnist_dir, turns):
    """SMALL_CNN 10 steps a turn, each turn given as (num_devices, args) and resumed from the
    checkpoint of the turn before; asserts that each resumed and that the whole kept learning."""
    for turn, (num_devices, args) in enumerate(turns):
        end = 10 * (turn + 1)
        result = train(workdir, mnist_dir, num_devices, *args, f"--config.num_steps={end}",
                       "--config.optimizer.schedule=constant")
        if turn:
            assert f"Resuming from the checkpoint at step {end - 10}" in result.stderr
        assert json.loads((workdir / "results.json").read_text())["step"] == end
    losses, _ = logged(workdir)
    assert len(losses) == 10 * len(turns) and sum(losses[-5:]) < sum(losses[:5])


@pytest.fixture(scope="session")
def one_device_run(tmp_path_factory):
    """logged() of 20 steps of SMALL_CNN on one device, which multi-device runs must match."""
    workdir = tmp_path_factory.mktemp("one_device")
    train(workdir, MNIST_DIR, 1, "--config.num_steps=20", "--config.steps=per_step")
    return logged(workdir)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_two_processes(workdir, mnist_dir, *args):
    """SMALL_CNN in two processes of 4 fake devices each, as on two hosts; returns the
    (returncode, stdout and stderr together) of each."""
    address = f"127.0.0.1:{free_port()}"
    processes = [subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *SMALL_CNN,
         f"--config.dataset.data_dir={mnist_dir}", *args, f"--workdir={workdir}",
         f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
        cwd=REPO, env={**os.environ, **devices(4)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    return [(p.returncode, output) for p, output in zip(processes, outputs)]


def train_in_two_processes(workdir, mnist_dir, *args):
    """in_two_processes, asserting that both succeeded; returns their outputs."""
    (first, first_output), (second, second_output) = in_two_processes(workdir, mnist_dir, *args)
    assert (first, second) == (0, 0), first_output[-3000:] + second_output[-3000:]
    return [first_output, second_output]


SUBSET = {"train": 2000, "test": 500}  # of MNIST, for the image folder and the TFDS data set


@pytest.fixture(scope="session")
def mnist_folder(tmp_path_factory):
    """The first images of each MNIST split as PNG files, <split>/<label>/<index>.png."""
    root = tmp_path_factory.mktemp("images")
    data = mnist.load(data_dir=str(MNIST_DIR))
    for split, arrays in (("train", data.train), ("test", data.test)):
        for i in range(SUBSET[split]):
            folder = root / split / str(arrays["targets"][i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arrays["inputs"][i, ..., 0]).save(folder / f"{i:05d}.png")
    return root
