"""Data parallel on fake CPU devices (XLA_FLAGS must be set before JAX starts: each run is a
subprocess). Two real processes, and checkpoints moving between device counts: test_fsdp.py."""
import pytest

from conftest import devices, logged, run_train, train


# The fused path under jit: test_fsdp.py (a mesh of 8 devices, data x fsdp).
@pytest.mark.parametrize("steps, mode", [("per_step", "jit"), ("per_step", "pmap"),
                                         ("fused", "pmap")])
def test_eight_devices_learn_what_one_learns(steps, mode, mnist_dir, tmp_path, one_device_run):
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


def test_batch_that_does_not_split_names_the_device_count(tmp_path):
    result = run_train("--config=configs/mnist_cnn.py", "--config.batch_size=100",
                       f"--workdir={tmp_path}", env=devices(8))
    assert result.returncode == 2
    assert "config.batch_size=100 does not split evenly over the 8 devices" in result.stderr
