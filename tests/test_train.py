"""End-to-end runs of the shipped configs on real data, in process and as a user runs them."""
import json

from configs import mnist_cnn, poly_regression, xor_mlp
from conftest import run_train
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
