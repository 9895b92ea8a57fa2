"""Data parallel on fake CPU devices (XLA_FLAGS must be set before JAX starts: each run is a
subprocess), and across two real processes."""
import pytest

from conftest import (assert_logged_alike, devices, logged, run_train, train, train_in_turns,
                      train_in_two_processes)


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
    train_in_turns(tmp_path, mnist_dir, [(8, ["--config.parallelism=jit"]),
                                         (1, ["--config.parallelism=jit"]),
                                         (2, ["--config.parallelism=pmap"])])


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
    assert len(logged(tmp_path / "multi")[0]) == 10
    assert_logged_alike(logged(tmp_path / "single"), logged(tmp_path / "multi"))
    assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()) == ["10", "5"]
