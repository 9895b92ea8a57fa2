"""The pipeline's worker processes never hang a run: they do not run the user's script again (a
script without `if __name__ == "__main__":` trains once), a stop signal ends a wait on a stuck
worker within seconds, saving the last completed step, and data that cannot reach the workers is
one line within seconds. Real scripts, run as files, with real worker processes."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import MNIST_DIR, REPO, history, run_train

ERROR_LINE = re.compile(r"^error: .+$", re.MULTILINE)

# A data set of random 8x8 images, as a module of its own (the workers import it): its reads in a
# worker process stall for ever after STALL_<SPLIT>_AFTER of them, first writing STALL_FILE.
STALLING = '''
import multiprocessing
import os
import time

import numpy as np

from datasets import ArraySource, Dataset, scale_to_unit


class Stalling(ArraySource):
    def __getitem__(self, index):
        after = os.environ.get(f"STALL_{self.name}_AFTER")
        if after is not None and multiprocessing.parent_process() is not None:
            READS[self.name] = READS.get(self.name, 0) + 1
            if READS[self.name] > int(after):
                open(os.environ["STALL_FILE"], "w").close()
                time.sleep(600)
        return super().__getitem__(index)


READS = {}


def split(rng, n, name):
    source = Stalling({"inputs": rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8),
                       "targets": rng.integers(0, 10, n).astype(np.int32)})
    object.__setattr__(source, "name", name)
    return source


def load(data_dir=None):
    rng = np.random.default_rng(0)
    return Dataset(split(rng, 512, "TRAIN"), split(rng, 64, "TEST"), prepare_inputs=scale_to_unit)
'''

# The same data, its source class in a module that a worker process cannot import.
UNIMPORTABLE = '''
import multiprocessing

if multiprocessing.parent_process() is not None:
    raise ImportError("this module reads a file only the trainer's machine has")

from datasets import ArraySource


class Elsewhere(ArraySource):
    pass
'''

BROKEN_DATA = '''
import numpy as np

from datasets import Dataset, scale_to_unit
from elsewhere import Elsewhere


def load(data_dir=None):
    rng = np.random.default_rng(0)
    def split(n):
        return Elsewhere({"inputs": rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8),
                          "targets": rng.integers(0, 10, n).astype(np.int32)})
    return Dataset(split(512), split(64), prepare_inputs=scale_to_unit)
'''

SMALL = ["--config=configs/mnist_mlp.py", "--config.model.features=(32, 10)",
         "--config.plots=False", "--config.steps=per_step", "--config.batch_size=8",
         "--config.pipeline.workers=1", "--config.log_every_steps=1"]


def script(tmp_path, text):
    path = tmp_path / "user_script.py"
    path.write_text(textwrap.dedent(text))
    return path


def run_script(path, env=None, timeout=120):
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=timeout, cwd=path.parent, env={**os.environ, **(env or {})})


def test_a_script_without_the_main_guard_trains_once(tmp_path):
    """Streamed MNIST (augmented: read by a worker process) from a script that calls fit() at its
    top level: the worker does not run the script again, so its top-level code runs once and the
    runs folder holds one run, whole."""
    runs = tmp_path / "runs"
    path = script(tmp_path, f'''
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        os.makedirs({str(runs)!r}, exist_ok=True)
        open(os.path.join({str(runs)!r}, f"started-by-{{os.getpid()}}"), "w").close()
        print("top-level code ran", flush=True)
        from trainer import api
        run = api.fit({str(REPO / "configs" / "mnist_mlp.py")!r}, {str(runs / "mnist")!r},
                      num_steps=6, log_every_steps=3, plots=False,
                      dataset=dict(data_dir={str(MNIST_DIR)!r}), augment=dict(crop_padding=2),
                      pipeline=dict(workers=1))
        print("accuracy", run.final["test/accuracy"], flush=True)
    ''')
    start = time.time()
    result = run_script(path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.time() - start < 60
    assert result.stdout.count("top-level code ran") == 1, result.stdout
    assert "accuracy" in result.stdout
    assert "read and augmented by 1 worker process(es)" in result.stderr
    assert len(list(runs.glob("started-by-*"))) == 1
    assert (runs / "mnist" / "results.json").is_file()
    assert (runs / "mnist" / "checkpoints" / "6").is_dir()
    assert "Traceback" not in result.stderr and "bootstrapping phase" not in result.stderr


def test_a_source_defined_in_the_script_reaches_the_workers(tmp_path):
    """A data source written in the user's script (no main guard): cloudpickle sends it to the
    worker by value, and the script still runs once."""
    path = script(tmp_path, f'''
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from datasets import Dataset, scale_to_unit
        from trainer import api
        print("top-level code ran", flush=True)

        class Mine:
            def __init__(self, n):
                rng = np.random.default_rng(n)
                self.inputs = rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8)
                self.targets = rng.integers(0, 10, n).astype(np.int32)
            def __len__(self):
                return len(self.targets)
            def __getitem__(self, i):
                return {{"inputs": self.inputs[i], "targets": self.targets[i]}}

        run = api.fit({str(REPO / "configs" / "mnist_mlp.py")!r}, {str(tmp_path / "run")!r},
                      dataset=Dataset(Mine(256), Mine(64), prepare_inputs=scale_to_unit),
                      num_steps=4, batch_size=8, plots=False, pipeline=dict(workers=1))
        print("steps", int(run.state.step), flush=True)
    ''')
    result = run_script(path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("top-level code ran") == 1, result.stdout
    assert "steps 4" in result.stdout


def stalling_args(num_steps):
    """A run on the stalling data: an evaluation of the validation and test splits every 4
    steps."""
    return [*SMALL, "--config.dataset.name=stalling", f"--config.num_steps={num_steps}",
            "--config.eval_every_epochs=0", "--config.eval_every_steps=4",
            "--config.evals.test.every_steps=4", "--config.eval_batch_size=8"]


@pytest.fixture(scope="module")
def never_stopped(tmp_path_factory):
    """num_steps -> the history of a run on the stalling data (not stalled) never stopped: what
    a stopped and resumed one must log. Trained once for the tests that ask for it."""
    folder, histories = tmp_path_factory.mktemp("never_stopped"), {}
    (folder / "stalling.py").write_text(STALLING)

    def history_of(num_steps):
        if num_steps not in histories:
            result = run_train(*stalling_args(num_steps), f"--workdir={folder / str(num_steps)}",
                               env={"PYTHONPATH": str(folder)})
            assert result.returncode == 0, result.stderr[-3000:]
            histories[num_steps] = history(folder / str(num_steps))
        return histories[num_steps]
    return history_of


def resumed_history(tmp_path, num_steps):
    """The stopped run in tmp_path/run resumed, its data whole again: its history."""
    result = run_train(*stalling_args(num_steps), f"--workdir={tmp_path / 'run'}",
                       env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    return history(tmp_path / "run")


def stop_while_waiting(tmp_path, split, after, num_steps):
    """scripts/train.py on the stalling data, SIGTERM once a worker is stuck and the trainer
    waits for it: (the run's CompletedProcess-like result, seconds from the signal to the end)."""
    (tmp_path / "stalling.py").write_text(STALLING)
    stall = tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), f"STALL_{split}_AFTER": str(after),
           "STALL_FILE": str(stall)}
    run = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"),
                            *stalling_args(num_steps), f"--workdir={tmp_path / 'run'}"],
                           cwd=REPO, env=env, text=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not stall.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # the batches read before the stall used up: the trainer waits on the worker
    sent = time.time()
    run.send_signal(signal.SIGTERM)
    try:
        stderr = run.communicate(timeout=30)[1]
    finally:
        run.kill()
    return run.returncode, stderr, time.time() - sent


def test_sigterm_while_waiting_on_a_stuck_worker_saves_and_stops(tmp_path, never_stopped):
    """The worker reads 5 batches of 8 and sticks on the sixth: the trainer, waiting for it,
    stops at once, saving the last step it completed, the worker is ended, and the run resumed
    (the data whole again) logs what a run never stopped logs, bit for bit."""
    code, stderr, seconds = stop_while_waiting(tmp_path, "TRAIN", 40, 8)
    assert code == 128 + signal.SIGTERM and seconds < 3, (code, seconds, stderr[-3000:])
    step = int(re.search(r"Stopped by SIGTERM at step (\d+), with a checkpoint saved", stderr)[1])
    assert 1 <= step <= 5
    assert (tmp_path / "run" / "checkpoints" / str(step)).is_dir()
    assert "Traceback" not in stderr and "leaked" not in stderr
    assert resumed_history(tmp_path, 8) == never_stopped(8)


def test_ctrl_c_to_the_whole_process_group_stops_a_python_run(tmp_path):
    """Ctrl-C reaches the workers too (the terminal signals its whole foreground group): they
    leave the stop to the trainer, and fit() raises Stopped, the step saved, within seconds."""
    (tmp_path / "stalling.py").write_text(STALLING)
    stall = tmp_path / "stalled"
    path = script(tmp_path, f'''
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from trainer import api
        from trainer.errors import Stopped
        try:
            api.fit({str(REPO / "configs" / "mnist_mlp.py")!r}, {str(tmp_path / "run")!r},
                    dataset=dict(name="stalling"), num_steps=100, batch_size=8, plots=False,
                    eval_every_epochs=0, pipeline=dict(workers=1))
        except Stopped as e:
            print("Stopped:", e, flush=True)
    ''')
    run = subprocess.Popen([sys.executable, str(path)], cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                           env={**os.environ, "PYTHONPATH": str(tmp_path),
                                "STALL_TRAIN_AFTER": "40", "STALL_FILE": str(stall)})
    deadline = time.time() + 60
    while not stall.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    sent = time.time()
    os.killpg(run.pid, signal.SIGINT)
    try:
        stdout, stderr = run.communicate(timeout=30)
    finally:
        run.kill()
    seconds = time.time() - sent
    assert run.returncode == 0 and seconds < 3, (run.returncode, seconds, stderr[-3000:])
    step = int(re.search(r"Stopped: Stopped by SIGINT at step (\d+), with a checkpoint saved",
                         stdout)[1])
    assert (tmp_path / "run" / "checkpoints" / str(step)).is_dir()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


@pytest.mark.parametrize("num_steps", [8, 4])  # 4: the final evaluation cut short
def test_sigterm_during_a_streamed_evaluation_stops_and_the_resume_evaluates_first(
        num_steps, tmp_path, never_stopped):
    """The test split sticks mid-evaluation at step 4: no evaluation is written, step 4 is
    saved, and the run resumed from there evaluates step 4 first: its history is that of a run
    never stopped, bit for bit."""
    code, stderr, seconds = stop_while_waiting(tmp_path, "TEST", 24, num_steps)
    assert code == 128 + signal.SIGTERM and seconds < 3, (code, seconds, stderr[-3000:])
    assert "Stopped by SIGTERM at step 4, with a checkpoint saved" in stderr, stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "4").is_dir()
    assert "test/accuracy" not in stderr and "Traceback" not in stderr
    resumed = resumed_history(tmp_path, num_steps)
    assert resumed == never_stopped(num_steps)
    assert [row["step"] for row in resumed if "test/accuracy" in row] == (
        list(range(4, num_steps + 1, 4)))


def test_a_source_the_workers_cannot_import_is_one_line_within_seconds(tmp_path):
    (tmp_path / "elsewhere.py").write_text(UNIMPORTABLE)
    (tmp_path / "broken.py").write_text(BROKEN_DATA)
    start = time.time()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *SMALL,
                             "--config.dataset.name=broken", "--config.num_steps=10",
                             f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr[-3000:]
    assert time.time() - start < 30
    (line,) = ERROR_LINE.findall(result.stderr)
    assert ("the pipeline's worker processes could not import what the data needs (ImportError: "
            "this module reads a file only the trainer's machine has)") in line
    assert "--config.pipeline.workers=0" in line
    assert "Traceback" not in result.stderr


def test_a_source_that_cannot_be_pickled_is_one_data_error(tmp_path):
    """A source in the script that holds a lock: cloudpickle cannot send it to the workers."""
    path = script(tmp_path, f'''
        import sys, threading
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from datasets import DataError, Dataset, scale_to_unit
        from trainer import api

        class Locked:
            def __init__(self, n):
                self.lock = threading.Lock()
                self.inputs = np.zeros((n, 8, 8, 1), np.uint8)
                self.targets = np.zeros(n, np.int32)
            def __len__(self):
                return len(self.targets)
            def __getitem__(self, i):
                return {{"inputs": self.inputs[i], "targets": self.targets[i]}}

        try:
            api.fit({str(REPO / "configs" / "mnist_mlp.py")!r}, {str(tmp_path / "run")!r},
                    dataset=Dataset(Locked(64), Locked(16), prepare_inputs=scale_to_unit),
                    num_steps=4, batch_size=8, plots=False, pipeline=dict(workers=1))
        except DataError as e:
            print("DataError:", e, flush=True)
    ''')
    start = time.time()
    result = run_script(path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.time() - start < 30
    (line,) = [l for l in result.stdout.splitlines() if l.startswith("DataError:")]
    assert ("could not be sent to the pipeline's worker processes (TypeError: cannot pickle "
            "'_thread.lock' object)") in line
    assert "pipeline=dict(workers=0)" in line


def test_training_in_a_process_that_multiprocessing_is_starting_is_refused(tmp_path):
    """A script without the guard that starts a process of its own (spawn): the child runs the
    script again as it starts, and training there is refused in one line naming the guard."""
    path = script(tmp_path, f'''
        import multiprocessing, sys
        sys.path.insert(0, {str(REPO)!r})
        from trainer import input_pipeline
        input_pipeline.refuse_in_a_starting_process()  # what fit() does first
        print("top-level code ran", flush=True)
        child = multiprocessing.get_context("spawn").Process(target=print)
        child.start()
        child.join()
        print("child exit code", child.exitcode, flush=True)
    ''')
    result = run_script(path, timeout=60)
    assert result.stdout.count("top-level code ran") == 1, result.stdout
    assert "child exit code 1" in result.stdout
    assert re.search(r'ConfigError: training was started while multiprocessing was starting this '
                     r'process.*`if __name__ == "__main__":`', result.stderr), result.stderr


def spawned_workers(pid):
    """The pids of the worker processes `pid` started (any of its threads), not yet reaped."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children = open(f"/proc/{pid}/task/{task}/children").read().split()
        except OSError:
            continue
        for child in children:
            try:
                command = open(f"/proc/{child}/cmdline").read()
            except OSError:
                continue
            if "spawn_main" in command and "resource_tracker" not in command:
                found.append(int(child))
    return found


def test_a_worker_killed_as_it_starts_is_started_again(tmp_path):
    """SIGKILL to the worker the moment it exists, while the trainer still writes it its data
    (MNIST in memory, augmented: 47 MB): that write would block for ever. The start is
    unblocked, the worker started again, and the run ends as one never disturbed."""
    args = ["--config=configs/mnist_mlp.py", "--config.num_steps=6", "--config.plots=False",
            "--config.augment.crop_padding=2", "--config.pipeline.workers=1",
            "--config.log_every_steps=3", f"--config.dataset.data_dir={MNIST_DIR}"]
    run = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args,
                            f"--workdir={tmp_path / 'run'}"], cwd=REPO, text=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed, deadline = [], time.time() + 60
    while not killed and run.poll() is None and time.time() < deadline:
        for pid in spawned_workers(run.pid):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.002)
    try:
        stderr = run.communicate(timeout=60)[1]
    finally:
        run.kill()
    assert killed and run.returncode == 0, stderr[-3000:]
    assert "A data worker process ended unexpectedly" in stderr
    whole = run_train(*args, f"--workdir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert history(tmp_path / "run") == history(tmp_path / "whole")
