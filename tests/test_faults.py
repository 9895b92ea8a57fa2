"""The machine's faults, real ones: a full file system (a small tmpfs) while a checkpoint is saved,
mid-run and at the end, and while metrics are written; image files deleted and an ArrayRecord
shard cut short mid-run; a data worker killed, once and on every try of a batch. Each is one
`error:` line (or, for a worker killed once, nothing), the newest good checkpoint intact, and the
same command, once the fault is gone, ends bitwise equal to a run never stopped."""
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from datasets import DataError
from trainer import input_pipeline

from conftest import MNIST_DIR, REPO, history, run_train
from test_reliability import finished_steps, saved_state

# No best checkpoint: the saves are those of checkpoint_every_steps alone, whose disk fills.
MLP = ["--config=configs/mnist_mlp.py", f"--config.dataset.data_dir={MNIST_DIR}",
       "--config.num_steps=600", "--config.steps=per_step", "--config.plots=False",
       "--config.best_metric="]


def same_params(expected, actual, step):
    expected, actual = saved_state(expected, step), saved_state(actual, step)
    return jax.tree.all(jax.tree.map(np.array_equal, expected["params"], actual["params"]))


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB file system (tmpfs) at tmp_path/disk: two checkpoints of mnist_mlp fit, not three.
    Mounting needs root (CI and these machines run as root); elsewhere the tests are skipped."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"a full disk needs a small tmpfs, which needs root: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def grow(disk):
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    assert run_train(*MLP, f"--workdir={workdir}").returncode == 0
    return workdir


def one_line(stderr):
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr[-3000:]
    assert all(not line.startswith("error") for line in lines[:-1]), stderr[-3000:]
    return lines[-1]


@pytest.mark.parametrize("checkpoint_every, failing", [(100, 300), (200, 600)],
                         ids=["mid_run", "final_save"])
def test_a_full_disk_during_a_save_is_one_line_and_the_same_command_resumes(
        checkpoint_every, failing, small_disk, uninterrupted):
    workdir = small_disk / "run"
    command = [*MLP, f"--config.checkpoint_every_steps={checkpoint_every}", f"--workdir={workdir}"]
    result = run_train(*command)
    assert result.returncode == 4
    newest = failing - checkpoint_every
    assert re.fullmatch(
        rf"error: saving the checkpoint of step {failing} failed: No space left on device \(errno "
        rf"28\); the newest intact checkpoint is step {newest} in {workdir}/checkpoints, and "
        rf"{workdir} has [\d.]+ MB free\. Free space \(or make the folder writable again\) and run "
        rf"the same command to resume\.", one_line(result.stderr))
    assert finished_steps(workdir)[-1] == newest
    assert not [n for n in os.listdir(workdir / "checkpoints") if "tmp" in n]  # partial: removed
    grow(small_disk)
    resumed = run_train(*command)
    assert resumed.returncode == 0 and f"Resuming from the checkpoint at step {newest}" in (
        resumed.stderr), resumed.stderr[-3000:]
    assert same_params(uninterrupted, workdir, 600)
    assert history(workdir) == history(uninterrupted)


def test_a_full_disk_while_writing_metrics_is_one_line(small_disk, uninterrupted):
    workdir = small_disk / "run"
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    subprocess.run(["fallocate", "-l", str(free - 64 * 1024), str(filler)], check=True)
    command = [*MLP, "--config.log_every_steps=1", f"--workdir={workdir}"]
    result = run_train(*command)
    assert result.returncode == 4
    assert re.fullmatch(r"error: writing the metrics of step \d+ with the '(tensorboard|jsonl)' "
                        r"writer failed: No space left on device \(errno 28\); no checkpoint had "
                        r"been saved yet, and .* has [\d.]+ MB free\. Free space .*",
                        one_line(result.stderr))
    filler.unlink()
    assert run_train(*command).returncode == 0
    assert same_params(uninterrupted, workdir, 600)


STREAMED = ["--config=configs/mnist_mlp.py", "--config.num_steps=120",
            "--config.checkpoint_every_steps=60", "--config.log_every_steps=5",
            "--config.eval_every_epochs=0", "--config.plots=False", "--config.pipeline.workers=1"]


def streamed(name, data, workdir, *args):
    return [sys.executable, str(REPO / "scripts" / "train.py"), *STREAMED,
            f"--config.dataset.name={name}", f"--config.dataset.data_dir={data}",
            f"--workdir={workdir}", *args]


def logged_step(workdir):
    metrics = workdir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return int(re.search(r'"step": (\d+)', lines[-1])[1]) if lines else 0


def break_mid_run(command, workdir, damage):
    """Runs `command`, does `damage` once step 30 is logged; returns (the step logged then, the
    finished process)."""
    run = subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while logged_step(workdir) < 30 and run.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    at = logged_step(workdir)
    damage()
    run.stderr_text = run.communicate(timeout=180)[1]
    return at, run


@pytest.fixture(scope="module")
def whole_image_run(mnist_folder, tmp_path_factory):
    """STREAMED on the image folder, never stopped."""
    workdir = tmp_path_factory.mktemp("whole_images")
    whole = subprocess.run(streamed("image_folder", mnist_folder, workdir), cwd=REPO,
                           capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-3000:]
    return workdir


@pytest.mark.parametrize("source", ["image_folder", "array_record"])
def test_data_that_breaks_mid_run_is_one_prompt_line_and_the_last_step_is_saved(
        source, mnist_folder, whole_image_run, tmp_path):
    """Files of a class deleted; a shard cut to half. Seen within a few steps (the pipeline reads
    2 batches ahead a worker, no longer 500), said with the file and the step, the last completed
    step saved; once the files are back, the same command ends as a run never stopped."""
    data = tmp_path / "data"
    if source == "image_folder":
        shutil.copytree(mnist_folder, data)
    else:  # the same images as records: the same batches, bit for bit (test_pipeline.py)
        subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"),
                        f"--from_images={mnist_folder}", f"--out={data}", "--shards=2"],
                       check=True, capture_output=True, cwd=REPO)
    shutil.copytree(data, tmp_path / "kept")
    if source == "image_folder":
        broken = sorted((data / "train" / "5").iterdir())
        damage = lambda: [path.unlink() for path in broken]  # pylint: disable=unnecessary-lambda-assignment
    else:
        broken = [data / "train-00001-of-00002.array_record"]
        damage = lambda: os.truncate(broken[0], broken[0].stat().st_size // 2)  # pylint: disable=unnecessary-lambda-assignment
    workdir = tmp_path / "run"
    at, run = break_mid_run(streamed(source, data, workdir), workdir, damage)
    assert run.returncode == 2, run.stderr_text[-3000:]
    line = one_line(run.stderr_text)
    read_at = int(re.search(r"reading the batch of step (\d+): ", line)[1])
    assert read_at - at < 40, (at, read_at)  # promptly: it was ~500 steps
    assert any(str(path) in line for path in broken), line
    saved = int(re.search(r"the checkpoint of step (\d+), the last completed, is saved", line)[1])
    assert saved < read_at and finished_steps(workdir)[-1] == saved
    assert "leaked" not in run.stderr_text  # no shared memory left behind
    shutil.rmtree(data)
    shutil.copytree(tmp_path / "kept", data)
    resumed = subprocess.run(streamed(source, data, workdir), cwd=REPO, capture_output=True,
                             text=True)
    assert resumed.returncode == 0 and f"Resuming from the checkpoint at step {saved}" in (
        resumed.stderr), resumed.stderr[-3000:]
    assert same_params(whole_image_run, workdir, 120)
    assert history(workdir) == history(whole_image_run)


def children(pid):
    """The child processes of `pid`, each with its command line; of any of its threads."""
    found = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        for child in open(f"/proc/{pid}/task/{task}/children").read().split():
            found[int(child)] = open(f"/proc/{child}/cmdline").read().replace("\0", " ")
    return found


def test_a_killed_worker_changes_no_bit(mnist_folder, whole_image_run, tmp_path):
    """As the OOM killer would: SIGKILL to one of two workers mid-run. The workers start again
    from the next batch, a function of the step: the run ends as one never disturbed (with one
    worker, so also as with any number of them)."""
    args = ["--config.pipeline.workers=2"]
    workdir = tmp_path / "run"
    killed = []

    def kill_a_worker():
        (trainer,) = [p for p, line in children(os.getpid()).items() if "train.py" in line]
        workers = [p for p, line in children(trainer).items() if "resource_tracker" not in line]
        killed.append(workers[0])
        os.kill(killed[0], signal.SIGKILL)

    _, run = break_mid_run(streamed("image_folder", mnist_folder, workdir, *args), workdir,
                           kill_a_worker)
    assert killed and run.returncode == 0, run.stderr_text[-3000:]
    assert "A data worker process ended unexpectedly" in run.stderr_text
    assert same_params(whole_image_run, workdir, 120)
    assert history(workdir) == history(whole_image_run)


def batch_that_kills_its_reader(index):
    """Batch 3 ends the worker process that reads it, each time, as a reader that crashes on it
    (or an out-of-memory kill at the same point) would."""
    if index == 3 and multiprocessing.parent_process() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"index": np.array(index)}


def test_workers_that_end_on_every_try_of_a_batch_are_one_data_error(monkeypatch):
    monkeypatch.setattr(input_pipeline, "RESTARTS", 1)  # 2 tries, not 4: workers start slowly
    read = []
    with pytest.raises(DataError, match=r"ended unexpectedly 2 times in a row, reading ahead from "
                                        r"batch [0-3] .*fewer config.pipeline.workers"):
        for batch in input_pipeline.iterate(batch_that_kills_its_reader, 0, 6, workers=1, buffer=2):
            read.append(int(batch["index"]))
    assert read == list(range(len(read))) and len(read) <= 3  # in order, none past the fault
