"""End-to-end runs of the shipped configs on real data, in process and as a user runs them."""
import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import mnist_cnn, poly_regression, xor_mlp
from conftest import REPO, run_train
from trainer.loop import train_and_evaluate


def test_mnist_cnn_short_run_learns(mnist_dir, tmp_path):
    config = mnist_cnn.get_config()
    config.dataset.data_dir = mnist_dir
    config.num_steps = 300
    config.log_every_steps = 100
    config.checkpoint_every_steps = 200
    _, metrics = train_and_evaluate(config, str(tmp_path))
    assert metrics["accuracy"] > 0.9
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["200", "300"]
    assert list(tmp_path.glob("events.out.tfevents.*"))
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_steps = [entry["step"] for entry in logged if "train/loss" in entry]
    assert train_steps == [100, 200, 300]
    assert logged[-1] == {"step": 300, "eval/loss": metrics["loss"],
                          "eval/accuracy": metrics["accuracy"]}


def test_xor_gets_all_four_points(tmp_path):
    _, metrics = train_and_evaluate(xor_mlp.get_config(), str(tmp_path))
    assert metrics["accuracy"] == 1.0


def test_polynomial_reaches_its_target(tmp_path):
    _, metrics = train_and_evaluate(poly_regression.get_config(), str(tmp_path))
    assert metrics["loss"] <= 0.05


def test_completed_run_says_so_and_keeps_its_checkpoints(tmp_path):
    args = ["--config=configs/xor_mlp.py", f"--workdir={tmp_path}", "--config.num_epochs=20"]
    assert run_train(*args).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}
    again = run_train(*args)
    assert again.returncode == 0
    assert "already complete: step 20 of 20" in again.stderr
    after = {p: p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}
    assert after == before


def saved_state(workdir, step):
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def test_resume_after_sigkill_ends_where_an_uninterrupted_run_ends(mnist_dir, tmp_path):
    args = ["--config=configs/mnist_cnn.py", f"--config.dataset.data_dir={mnist_dir}",
            "--config.model.conv_features=(4, 8)", "--config.model.dense_features=(16,)",
            "--config.batch_size=32", "--config.num_steps=300", "--config.eval_every_epochs=0",
            "--config.log_every_steps=50", "--config.checkpoint_every_steps=50"]
    train_cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *args]
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    subprocess.run([*train_cmd, f"--workdir={whole}"], check=True, capture_output=True, cwd=REPO)

    run = subprocess.Popen([*train_cmd, f"--workdir={interrupted}"], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (interrupted / "checkpoints" / "50").exists() and time.time() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    killed_at = max(int(p.name) for p in (interrupted / "checkpoints").iterdir() if p.name.isdigit())
    assert 50 <= killed_at < 300  # killed mid-run, after its first checkpoint

    resumed = subprocess.run([*train_cmd, f"--workdir={interrupted}"], capture_output=True,
                             text=True, cwd=REPO, check=True)
    assert f"Resuming from the checkpoint at step {killed_at}" in resumed.stderr
    expected, actual = saved_state(whole, 300), saved_state(interrupted, 300)
    for part in ("params", "batch_stats", "opt_state", "step", "rng"):
        assert jax.tree.all(jax.tree.map(np.array_equal, expected[part], actual[part])), part
