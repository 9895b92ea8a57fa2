"""A run killed at any moment, stopped by a signal, fed a damaged or foreign checkpoint, or hit by
a NaN: it resumes to the run that would have happened, or stops with its checkpoints intact."""
import gc
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing import event_accumulator

from configs import poly_regression
from conftest import REPO, files, history, run_train
from trainer import api
from trainer.checkpoint import CheckpointMismatch, Checkpoints
from trainer.errors import WorkdirError
from trainer.loop import train_and_evaluate

CNN_ARGS = ["--config=configs/mnist_cnn.py", "--config.batch_size=32", "--config.num_steps=120",
            "--config.eval_every_epochs=0", "--config.eval_every_steps=40",
            "--config.log_every_steps=10", "--config.checkpoint_every_steps=25",
            "--config.plots=False"]
POLY = ["--config=configs/poly_regression.py", "--config.plots=False"]


def train_command(mnist_dir, workdir):
    return [sys.executable, str(REPO / "scripts" / "train.py"), *CNN_ARGS,
            f"--config.dataset.data_dir={mnist_dir}", f"--workdir={workdir}"]


def saved_state(workdir, step):
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def assert_same_state(expected_workdir, actual_workdir, step):
    expected, actual = saved_state(expected_workdir, step), saved_state(actual_workdir, step)
    for part in ("params", "model_state", "opt_state", "step", "rng"):
        assert jax.tree.all(jax.tree.map(np.array_equal, expected[part], actual[part])), part


def tensorboard_scalars(workdir):
    """Every scalar TensorBoard shows, as {tag: [(step, value)]}, less the wall-clock speed."""
    events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if not tag.endswith("_per_sec")}


def config_texts(workdir):
    events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()
    return events.Tensors("config/text_summary")


def refused(workdir, *args, exit_code=2):
    """Runs train.py on a workdir that holds checkpoints; checks that it stops with one message
    and leaves the checkpoints byte-identical; returns the message."""
    before = files(workdir / "checkpoints")
    result = run_train(*args, f"--workdir={workdir}")
    assert result.returncode == exit_code and "Traceback" not in result.stderr
    assert files(workdir / "checkpoints") == before
    return result.stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import MNIST_DIR  # pylint: disable=import-outside-toplevel
    workdir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(train_command(MNIST_DIR, workdir), check=True, capture_output=True, cwd=REPO)
    return workdir


def finished_steps(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if folder.exists() else []


# A kill at a step past a checkpoint: in
# test_a_second_run_on_a_busy_workdir_is_refused_and_the_first_goes_on.
KILL_POINTS = {
    # trained a little, nothing saved yet
    "before_first_checkpoint": lambda w: (w / "metrics.jsonl").exists() and not finished_steps(w),
    # the second save is under way: its temporary folder exists beside a finished checkpoint
    "during_a_save": lambda w: bool(finished_steps(w)) and any(
        "tmp" in n for n in os.listdir(w / "checkpoints")),
}


@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_sigkill_then_resume_is_bitwise_the_uninterrupted_run(kill_point, mnist_dir, tmp_path,
                                                              uninterrupted):
    run = subprocess.Popen(train_command(mnist_dir, tmp_path), cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while run.poll() is None and time.time() < deadline:
        if (tmp_path / "checkpoints").exists() and KILL_POINTS[kill_point](tmp_path):
            break
        time.sleep(0.0005)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL  # killed, not finished
    killed_at = finished_steps(tmp_path)[-1] if finished_steps(tmp_path) else 0
    assert killed_at < 120

    resumed = subprocess.run(train_command(mnist_dir, tmp_path), capture_output=True, text=True,
                             cwd=REPO, check=True)
    if killed_at:
        assert f"Resuming from the checkpoint at step {killed_at}" in resumed.stderr
    assert_same_state(uninterrupted, tmp_path, 120)
    # What was logged past the restored step is dropped: the history reads as one run's.
    assert history(tmp_path) == history(uninterrupted)
    assert tensorboard_scalars(tmp_path) == tensorboard_scalars(uninterrupted)
    assert config_texts(tmp_path)  # written on every start


def test_a_second_run_on_a_busy_workdir_is_refused_and_the_first_goes_on(mnist_dir, tmp_path,
                                                                         uninterrupted):
    """A scheduler restarting a job that did not die: the second start names the first and
    touches nothing; once the first is killed, with SIGKILL, the same command resumes to the
    state and history of a run never stopped."""
    command = train_command(mnist_dir, tmp_path)
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not finished_steps(tmp_path) and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # hung, still holding the workdir: its files stay still
    try:
        before = files(tmp_path)
        second = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: --workdir={tmp_path} is in use by another run (pid {first.pid}); nothing was "
            f"changed. Wait for it to end or stop it, or give another --workdir."]
        assert files(tmp_path) == before
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.poll() is None  # unharmed, training on
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    resumed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert resumed.returncode == 0 and "Resuming from the checkpoint" in resumed.stderr
    assert_same_state(uninterrupted, tmp_path, 120)
    assert history(tmp_path) == history(uninterrupted)
    assert tensorboard_scalars(tmp_path) == tensorboard_scalars(uninterrupted)


MLP_ARGS = ["--config=configs/mnist_mlp.py", "--config.num_steps=60", "--config.log_every_steps=20",
            "--config.eval_every_epochs=0", "--config.eval_every_steps=30",
            "--config.checkpoint_every_steps=1000", "--config.plots=False"]


@pytest.mark.parametrize("path", ["per_step", "fused"])
def test_a_stop_off_every_boundary_resumes_to_the_same_logged_history(path, mnist_dir, tmp_path):
    """The running train metrics of the steps since the last log live in the checkpoint: the log
    after a resume averages the same steps, bit for bit, as in a run never stopped."""
    args = [*MLP_ARGS, f"--config.steps={path}", f"--config.dataset.data_dir={mnist_dir}"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert run_train(*args, f"--workdir={whole}").returncode == 0
    run = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args,
                            f"--workdir={stopped}"], cwd=REPO, text=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for line in run.stderr:
        if "Steps run" in line:  # compiling the first step: the stop comes a step or two later
            run.send_signal(signal.SIGTERM)
            break
    stderr = run.communicate(timeout=120)[1]
    assert run.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    stopped_at = int(re.search(r"Stopped by SIGTERM at step (\d+), with a checkpoint saved",
                               stderr)[1])
    assert "Traceback" not in stderr
    assert stopped_at % 20 and stopped_at % 30  # off every log and eval boundary
    resumed = run_train(*args, f"--workdir={stopped}")
    assert f"Resuming from the checkpoint at step {stopped_at}" in resumed.stderr
    assert history(stopped) == history(whole)
    assert tensorboard_scalars(stopped) == tensorboard_scalars(whole)


MLP_FUSED = ["--config=configs/mnist_mlp.py", "--config.num_epochs=8", "--config.eval_every_epochs=0",
             "--config.log_every_steps=4000", "--config.checkpoint_every_steps=4000",
             "--config.steps=fused", "--config.plots=False"]


@pytest.mark.parametrize("signals", [1, 2])
def test_a_stop_is_prompt_and_a_second_signal_ends_the_run_at_once(signals, mnist_dir, tmp_path):
    """The fused path runs thousands of steps a call: a stop must still come within about a second
    of device work, not at the next log or checkpoint (3744 steps here, about 15 s)."""
    run = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *MLP_FUSED,
                            f"--config.dataset.data_dir={mnist_dir}", f"--workdir={tmp_path}"],
                           cwd=REPO, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for line in run.stderr:
        if "Steps run fused" in line:
            break
    time.sleep(4)  # past the compile, into the steps
    sent = time.time()
    run.send_signal(signal.SIGINT)
    if signals == 2:  # once the first is taken: two at once would be one to the process
        for line in run.stderr:
            if "SIGINT: the run stops at the end of this step" in line:
                break
        run.send_signal(signal.SIGINT)
    stderr = run.communicate(timeout=60)[1]
    seconds = time.time() - sent
    if signals == 1:
        assert run.returncode == 130 and seconds < 5, (run.returncode, seconds, stderr[-2000:])
        stopped_at = int(re.search(r"Stopped by SIGINT at step (\d+)", stderr)[1])
        assert finished_steps(tmp_path) == [stopped_at] and stopped_at < 3744
        assert "To resume, run the same command." in stderr
        assert "Traceback" not in stderr
    else:  # the default action of SIGINT: the process ends, killed by the signal
        assert run.returncode == -signal.SIGINT and seconds < 3, (run.returncode, seconds)


# Damage done to the newest checkpoint of the `uninterrupted` run (step 120; 75 and 100 before it):
# each returns the path in the checkpoint that its one line must name, and the kind of damage.

def data_files(step_folder):
    """OCDBT's files of the state: its index's nodes in state/d/, the arrays' data (and more
    nodes) in state/ocdbt.process_0/d/."""
    return sorted(p for p in (step_folder / "state").rglob("*") if p.parent.name == "d")


def largest_data_file(step_folder):
    return max(data_files(step_folder), key=lambda p: p.stat().st_size)


def flip_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def damage_flip_bytes(step_folder):
    """8 bytes flipped in the middle of the largest data file, its size unchanged: the arrays
    still read, with other values, which only the checksums catch."""
    largest = largest_data_file(step_folder)
    flip_middle(largest)
    return str(largest.relative_to(step_folder)), "bytes changed"


def damage_flip_index(step_folder):
    """Bytes that fail the storage's own CRC (OCDBT's b-tree nodes, in state/d/)."""
    nodes = sorted((step_folder / "state" / "d").iterdir())
    for path in nodes:
        flip_middle(path)
    return str(nodes[0].relative_to(step_folder)), "bytes changed (CRC-32C checksum verification"


def damage_truncate_data(step_folder):
    largest = largest_data_file(step_folder)
    largest.write_bytes(largest.read_bytes()[:10])
    return str(largest.relative_to(step_folder)), "is truncated"


def damage_truncate(step_folder):
    """Every file of the index and data cut to 10 bytes: the index's root fails first."""
    for path in data_files(step_folder):
        path.write_bytes(path.read_bytes()[:10])
    root = sorted((step_folder / "state" / "d").iterdir())[0]
    return str(root.relative_to(step_folder)), "is truncated"


def damage_delete_data(step_folder):
    largest = largest_data_file(step_folder)
    largest.unlink()
    return str(largest.relative_to(step_folder)), "is missing"


def damage_delete_metadata(step_folder):
    (step_folder / "state" / "_METADATA").unlink()
    return "state/_METADATA", "unreadable metadata"


# What a damaged checkpoint must never bring to stderr beside its one line: tracebacks (from
# Orbax's threads or its coroutines left unfinished, asyncio's of failed reads never retrieved),
# TensorStore's specs (60 lines each), Orbax's misleading note about a handler registry.
NOISE = ("Traceback", "tensorstore_spec", "TensorStore(", "Exception ignored", "pybind11",
         "never retrieved", "CheckpointHandlerRegistry")


def damaged_copy(uninterrupted, tmp_path, damage):
    """A copy of the uninterrupted run, its checkpoint of step 120 damaged: (workdir, the path
    its line must name, the kind of damage)."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    return workdir, *damage(workdir / "checkpoints" / "120")


@pytest.mark.parametrize("damage", [damage_flip_bytes, damage_truncate_data, damage_delete_data,
                                    damage_truncate, damage_delete_metadata])
def test_damaged_latest_checkpoint_falls_back_to_the_one_before(damage, mnist_dir, tmp_path,
                                                                uninterrupted):
    """One warning line naming the step, the file and the kind of damage, and nothing else about
    it on stderr; the checkpoint set aside, not deleted; the run resumed from the one before, to
    the bits and history of the run never damaged."""
    workdir, path, kind = damaged_copy(uninterrupted, tmp_path, damage)
    resumed = subprocess.run(train_command(mnist_dir, workdir), capture_output=True, text=True,
                             cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = resumed.stderr.strip().splitlines()
    about = [line for line in lines if "damaged" in line or path in line]
    assert len(about) == 1, resumed.stderr[-5000:]  # the whole of it, should it fail
    assert not [noise for noise in NOISE if noise in resumed.stderr], resumed.stderr[-5000:]
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines), resumed.stderr[-5000:]
    assert path in about[0] and kind in about[0], about[0]
    assert about[0].split(" ", 1)[1].startswith("The checkpoint at step 120 is damaged: ")
    assert f"moving it to {workdir}/damaged_checkpoints/120 and trying the one before." in about[0]
    assert "Resuming from the checkpoint at step 100" in resumed.stderr
    assert (workdir / "damaged_checkpoints" / "120").is_dir()  # set aside, not deleted
    assert_same_state(uninterrupted, workdir, 120)
    assert history(workdir) == history(uninterrupted)


@pytest.mark.parametrize("damage", [damage_flip_index, damage_flip_bytes, damage_truncate_data,
                                    damage_delete_data, damage_delete_metadata])
def test_a_damaged_checkpoint_used_by_the_scripts_is_one_line_naming_step(damage, tmp_path,
                                                                           uninterrupted, capfd):
    """evaluate.py, predict.py, plot.py and api.load: the same one line, naming the step, the file
    and the kind of damage; nothing else on stderr. The three scripts restore through the same
    code (trainer/inference.py): all three read the first two kinds of damage, evaluate.py the
    others."""
    workdir, path, kind = damaged_copy(uninterrupted, tmp_path, damage)
    every = damage in (damage_flip_index, damage_flip_bytes)
    scripts = {script: subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / script), f"--workdir={workdir}"], cwd=REPO,
        text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for script in ("evaluate.py", "predict.py", "plot.py")[:3 if every else 1]}
    for script, run in scripts.items():
        stderr = run.communicate(timeout=120)[1]
        assert run.returncode == 2, (script, stderr[-3000:])
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (script, stderr[:3000], stderr[-2000:])  # its start and end
        line = lines[0]
        assert not [noise for noise in NOISE if noise in line], line
        assert path in line and kind in line, line
        assert line.startswith(f"error: the checkpoint at step 120 in {workdir}/checkpoints is "
                               f"damaged: "), line
        others = [step for step in finished_steps(workdir) if step != 120]  # 80: the best
        assert line.endswith(f"Give another --step (there are {others}).")
    with pytest.raises(WorkdirError) as error:
        api.load(workdir)
    assert f"error: {error.value}" == line.replace("another --step", "another step")
    gc.collect()  # what Orbax's reads left unfinished would print comes when they are collected
    assert not [noise for noise in NOISE if noise in capfd.readouterr().err]
    if damage is damage_flip_index:  # the checkpoint before is whole, and used as asked
        earlier = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"),
                                  f"--workdir={workdir}", "--step=100"], capture_output=True,
                                 text=True, cwd=REPO)
        assert earlier.returncode == 0 and json.loads(earlier.stdout)["step"] == 100


def test_checkpoint_of_another_model_is_named_and_left_alone(tmp_path):
    assert run_train(*POLY, "--config.num_epochs=50", f"--workdir={tmp_path}").returncode == 0
    before = files(tmp_path / "checkpoints")
    message = refused(tmp_path, *POLY, "--config.num_epochs=50", "--config.model.features=(64, 1)")
    assert "was trained with other settings that define it: model.features ([128, 1] there, " \
           "[64, 1] here)" in message  # the record says so before any checkpoint is read
    # Resumed with changes on purpose, the checkpoint does not fit: it says where.
    message = refused(tmp_path, *POLY, "--config.num_epochs=50", "--config.model.features=(64, 1)",
                      "--config.resume_with_changes=True")
    assert "params/Dense_0/bias is (128,) there and (64,) in the config" in message
    assert "The run's config.json differs in model.features ([128, 1] there, [64, 1] here)." in (
        message)
    # The same check from Python (the same message): another model that also keeps an EMA names
    # the model's own parameters first; a change of the frozen parameters alone names the setting.
    with pytest.raises(CheckpointMismatch) as mismatch:
        api.fit("configs/poly_regression.py", tmp_path, num_epochs=50, plots=False, ema_decay=0.9,
                model=dict(features=(64, 1)), resume_with_changes=True)
    assert "params/Dense_0/bias is (128,) there and (64,) in the config" in str(mismatch.value)
    assert "ema_decay (0.0 there, 0.9 here)" in str(mismatch.value)
    with pytest.raises(CheckpointMismatch) as mismatch:
        api.fit("configs/poly_regression.py", tmp_path, num_epochs=50, plots=False,
                optimizer=dict(frozen="params/Dense_0/.*"))
    assert "opt_state" in str(mismatch.value) and (
        "The run's config.json differs in optimizer.frozen ('' there, 'params/Dense_0/.*' "
        "here).") in str(mismatch.value)

    fresh = run_train(*POLY, "--config.num_epochs=50", "--config.model.features=(64, 1)",
                      "--config.resume=False", f"--workdir={tmp_path}")
    assert fresh.returncode == 0, fresh.stderr
    assert finished_steps(tmp_path / "restart_1") == [50]
    assert files(tmp_path / "checkpoints") == before


def test_nonfinite_loss_stops_the_run_with_its_checkpoints_intact(tmp_path):
    assert run_train(*POLY, "--config.num_epochs=100", f"--workdir={tmp_path}").returncode == 0
    message = refused(tmp_path, *POLY, "--config.num_epochs=200",
                      "--config.optimizer.learning_rate=1e30", exit_code=3)  # not bad input: 3
    first_bad = int(re.search(r"a NaN or Inf in the loss or gradients at step (\d+) ", message)[1])
    assert 100 < first_bad <= 200  # after the good checkpoint, where the learning rate exploded
    assert "latest: step 100" in message


def test_nonfinite_stops_a_fused_run_at_the_end_of_its_call(tmp_path):
    """Not at the next log or checkpoint, 50000 steps on."""
    result = run_train(*POLY, "--config.num_epochs=100000", "--config.log_every_steps=50000",
                       "--config.checkpoint_every_steps=50000", "--config.eval_every_epochs=0",
                       "--config.steps=fused", "--config.optimizer.learning_rate=1e30",
                       f"--workdir={tmp_path}")
    assert result.returncode == 3
    first, seen = map(int, re.search(r"at step (\d+) \(seen at step (\d+)\)", result.stderr).groups())
    assert first <= seen < 50000


def test_nonfinite_before_any_checkpoint_says_so(tmp_path):
    result = run_train(*POLY, "--config.optimizer.learning_rate=1e30", f"--workdir={tmp_path}")
    assert result.returncode == 3
    assert "without applying it or any update after it, and no checkpoint had been saved yet" in (
        result.stderr)
    assert "None" not in result.stderr and not finished_steps(tmp_path)


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_nonfinite_updates_can_be_skipped_and_counted(tmp_path):
    result = run_train(*POLY, "--config.num_epochs=20", "--config.optimizer.learning_rate=1e30",
                       "--config.nonfinite=skip", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    state = saved_state(tmp_path, 20)
    assert int(state["nonfinite_updates"]) > 0 and int(state["first_nonfinite_step"]) >= 0
    assert jax.tree.all(jax.tree.map(lambda x: bool(np.isfinite(x).all()), state["params"]))
    logged = [strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged[-2]["train/nonfinite_updates"] == int(state["nonfinite_updates"])
    # The one finite but huge update made the outputs overflow: no Infinity in the JSON files.
    assert strict_json((tmp_path / "results.json").read_text())["eval/loss"] is None
    assert "eval/loss is inf at the end; results.json holds null for it." in result.stderr
    assert "NaN or Inf found in input tensor" not in result.stderr


def test_restoring_unpickles_nothing(tmp_path, monkeypatch):
    config = poly_regression.get_config()
    config.num_epochs = 5
    state = train_and_evaluate(config, str(tmp_path)).state

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    restored, _ = Checkpoints(str(tmp_path), keep=1).restore(state)
    assert jax.tree.all(jax.tree.map(np.array_equal, state.params, restored.params))
    shutil.rmtree(tmp_path)
