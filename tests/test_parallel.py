"""Data parallel on fake CPU devices (XLA_FLAGS must be set before JAX starts: each run is a
subprocess), and across two real processes."""
import json

import pytest

from conftest import devices, logged, run_train, train, train_in_two_processes

@pytest.mark.parametrize("mode", ["jit", "pmap"])
@pytest.mark.parametrize("steps", ["per_step", "fused"])
def test_eight_devices_learn_what_one_learns(mode, steps, mnist_dir, tmp_path, one_device_run):
    result = train(tmp_path, mnist_dir, 8, "--config.num_steps=20", f"--config.parallelism={mode}",
                   f"--config.steps={steps}")
    assert f"{mode} over 8 cpu device(s)" in result.stderr
    one_losses, one_accuracy = one_device_run
    eight_losses, eight_accuracy = logged(tmp_path)
    assert len(one_losses) == len(eight_losses) == 20
    # Reduction order differs between device counts (gradients, and BatchNorm statistics under
    # pmap); Adam scales near-zero gradients up, so 1e-7 differences grow: measured at most 5e-4
    # relative over these 20 steps (pmap; jit stays within 2e-7).
    for a, b in zip(one_losses, eight_losses):
        assert abs(a - b) <= 3e-3 * abs(a)
    assert abs(one_accuracy[-1] - eight_accuracy[-1]) <= 0.002


def test_checkpoints_move_between_device_counts_and_modes(mnist_dir, tmp_path):
    steps = [(8, "jit", 10), (1, "jit", 20), (2, "pmap", 30), (8, "pmap", 40)]
    for num_devices, mode, end in steps:
        result = train(tmp_path, mnist_dir, num_devices, f"--config.num_steps={end}",
                       f"--config.parallelism={mode}", "--config.optimizer.schedule=constant")
        if end > 10:
            assert f"Resuming from the checkpoint at step {end - 10}" in result.stderr
        assert json.loads((tmp_path / "results.json").read_text())["step"] == end
    losses, _ = logged(tmp_path)
    assert len(losses) == 40 and sum(losses[-5:]) < sum(losses[:5])  # it kept learning


def test_batch_that_does_not_split_names_the_device_count(tmp_path):
    result = run_train("--config=configs/mnist_cnn.py", "--config.batch_size=100",
                       f"--workdir={tmp_path}", env=devices(8))
    assert result.returncode == 2
    assert "config.batch_size=100 does not split evenly over the 8 devices" in result.stderr


def test_two_processes_train_like_one_with_all_devices(mnist_dir, tmp_path):
    args = ["--config.num_steps=10", "--config.checkpoint_every_steps=5"]
    train(tmp_path / "single", mnist_dir, 8, *args)
    outputs = train_in_two_processes(tmp_path / "multi", mnist_dir, *args)
    assert "over 8 cpu device(s) in 2 process(es)" in outputs[0]
    assert "step 10: train/loss" not in outputs[1]  # only process 0 logs metrics
    single_losses, single_accuracy = logged(tmp_path / "single")
    multi_losses, multi_accuracy = logged(tmp_path / "multi")
    assert len(multi_losses) == 10
    for a, b in zip(single_losses, multi_losses):
        assert abs(a - b) <= 1e-5 * abs(a)
    assert single_accuracy == multi_accuracy
    assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()) == ["10", "5"]
