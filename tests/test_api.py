"""The Python API (api.fit, api.load) in this process, as a notebook calls it: objects
defined here (a linen and an NNX model class, arrays of real MNIST, an Optax transformation), the
history, a SIGINT from another thread then the same call again, ten calls in a row that leave
nothing behind, and bad objects and fields each one typed error of one line."""
import fcntl
import functools
import gc
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import MNIST_DIR, REPO, files, history, run_train
from datasets import mnist
from test_reliability import saved_state
from trainer import api
from trainer.api import given_name
from trainer.errors import ConfigError, Stopped, WorkdirError


class TinyMLP(nn.Module):
    """Defined here, given as an object: no name of a module finds it."""
    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1))))


class TinyNnx(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs, hidden=32):
        self.hidden = nnx.Linear(784, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))


@pytest.fixture(scope="module")
def arrays():
    """Real MNIST as float arrays in [0, 1]: the first 4000 training and 1000 test examples."""
    data = mnist.load(data_dir=str(MNIST_DIR))
    return tuple((split["inputs"][:n].astype(np.float32) / 255, split["targets"][:n])
                 for split, n in ((data.train, 4000), (data.test, 1000)))


SETTINGS = dict(num_steps=400, batch_size=32, log_every_steps=20, eval_every_epochs=0,
                eval_every_steps=100, checkpoint_every_steps=50, plots=False)


def fit_mlp(workdir, arrays, **changes):
    return api.fit(None, workdir, model=TinyMLP, dataset=arrays,
                   optimizer=optax.adam(1e-3), **{**SETTINGS, **changes})


@pytest.fixture(scope="module")
def whole(arrays, tmp_path_factory):
    return fit_mlp(tmp_path_factory.mktemp("whole"), arrays)


def test_objects_of_a_cell_train_and_the_history_is_metrics_jsonl(whole):
    assert whole.final["eval/accuracy"] > 0.85 and whole.step == 400
    logged = [json.loads(line) for line in open(os.path.join(whole.workdir, "metrics.jsonl"))]
    assert whole.history == logged and len(logged) == 20 + 4
    frame = whole.history_frame()
    assert list(frame.index) == list(range(20, 401, 20))
    assert frame.loc[400, "eval/accuracy"] == whole.final["eval/accuracy"]
    recorded = json.loads(open(os.path.join(whole.workdir, "config.json")).read())
    assert recorded["model"]["name"].startswith("given:test_api.TinyMLP#")
    assert recorded["optimizer"]["name"].startswith("given:optax.")
    assert "learning_rate" not in logged[0]  # the optimizer's own, which the trainer cannot see


def test_evaluate_predict_and_load_from_python(whole, arrays):
    (_, _), (test_inputs, test_targets) = arrays
    assert whole.evaluate() == whole.final
    assert whole.evaluate((test_inputs[:500], test_targets[:500]))["eval/accuracy"] > 0.8
    outputs = whole.predict(test_inputs[:10])
    assert outputs.shape == (10, 10)
    again = api.load(whole.workdir, model=TinyMLP, dataset=arrays, optimizer=optax.adam(1e-3))
    assert again.step == 400 and again.final == whole.final
    assert np.array_equal(again.predict(test_inputs[:10]), outputs)
    with pytest.raises(ConfigError, match="is an object given to trainer.api.fit"):
        api.load(whole.workdir)  # config.json names objects it cannot hold


def test_a_sigint_from_another_thread_saves_and_the_same_call_resumes_bitwise(whole, arrays,
                                                                              tmp_path):
    metrics = tmp_path / "metrics.jsonl"

    def interrupt():
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.read_text()) and time.time() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # the kernel's own; SIG_IGN in a `cmd &` of a shell
    thread = threading.Thread(target=interrupt)
    thread.start()
    with pytest.raises(Stopped) as stopped:
        fit_mlp(tmp_path, arrays)
    thread.join()
    assert isinstance(stopped.value, KeyboardInterrupt) and "\n" not in str(stopped.value)
    assert str(stopped.value).startswith("Stopped by SIGINT at step ")
    assert signal.getsignal(signal.SIGINT) is before  # put back
    resumed = fit_mlp(tmp_path, arrays)
    assert history(tmp_path) == history(pathlib.Path(whole.workdir))  # less steps/s
    assert resumed.final == whole.final
    expected, actual = saved_state(pathlib.Path(whole.workdir), 400), saved_state(tmp_path, 400)
    assert jax.tree.all(jax.tree.map(np.array_equal, expected["params"], actual["params"]))


def test_resuming_with_another_object_or_from_the_command_line_is_refused(whole, arrays,
                                                                          tmp_path):
    class TinyMLP(nn.Module):  # pylint: disable=redefined-outer-name  (the same name, other code)
        hidden: int = 64

        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.tanh(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1))))

    before = files(tmp_path) if tmp_path.exists() else {}
    with pytest.raises(WorkdirError, match="was trained with other settings that define it: "
                       "model.name \\('given:test_api.TinyMLP#") as refused:
        api.fit(None, whole.workdir, model=TinyMLP, dataset=arrays,
                optimizer=optax.adam(1e-3), **{**SETTINGS, "num_steps": 500})
    assert "(model.name: another object given in Python)" in str(refused.value)
    assert "resume_with_changes=True to resume with these" in str(refused.value)
    result = run_train("--config=configs/mnist_mlp.py", f"--config.dataset.data_dir={MNIST_DIR}",
                       f"--workdir={whole.workdir}")
    assert result.returncode == 2
    assert "model.name ('given:test_api.TinyMLP#" in result.stderr
    assert "--config.resume_with_changes=True to resume with these" in result.stderr
    evaluated = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"),
                                f"--workdir={whole.workdir}"], capture_output=True, text=True,
                               cwd=REPO)
    assert evaluated.returncode == 2
    assert "is an object given to trainer.api.fit() in Python, which a run's config.json names but " \
           "cannot hold" in evaluated.stderr
    assert files(tmp_path) == before


def test_fields_set_back_to_none_take_the_parts_default(tmp_path):
    """mnist_mlp's SGD momentum, gone for Adam: a field that cannot be None on the command line.
    And gone for an Optax object, which takes no fields."""
    given = api.fit("configs/mnist_mlp.py", tmp_path / "optax", num_steps=30, plots=False,
                    dataset=dict(data_dir=str(MNIST_DIR)), optimizer=optax.adam(1e-3))
    assert given.config.optimizer.momentum is None and given.final["test/accuracy"] > 0.5
    run = api.fit("configs/mnist_mlp.py", tmp_path, num_steps=30, plots=False,
                  dataset=dict(data_dir=str(MNIST_DIR)),
                  optimizer=dict(name="adam", learning_rate=1e-3, momentum=None))
    assert run.config.optimizer.momentum is None and run.final["test/accuracy"] > 0.5
    command = run_train("--config=configs/mnist_mlp.py", f"--workdir={tmp_path / 'cli'}",
                        "--config.num_steps=30", "--config.plots=False",
                        f"--config.dataset.data_dir={MNIST_DIR}", "--config.optimizer.name=adam",
                        "--config.optimizer.momentum=None")
    assert command.returncode == 0, command.stderr[-2000:]


BAD = [
    (dict(batch_sise=32), ConfigError, "batch_sise=32: the config has no such field (did you "
                                       "mean 'batch_size'?)"),
    (dict(num_epochs="two"), ConfigError, "num_epochs='two': config.num_epochs is int"),
    (dict(batch_size=-5), ConfigError, "config.batch_size=-5 is invalid: it must be a positive "
                                       "integer"),
    (dict(model=TinyNnx(rngs=nnx.Rngs(0))), ConfigError, "is an nnx.Module already built"),
    (dict(model=dict(name="mlp", depth=3)), ConfigError, "config.model.depth is not an argument of "
                                                          "model 'mlp'; its arguments are"),
    (dict(model=dict), ConfigError, "gave a dict, not a linen or NNX Module"),
    (dict(dataset=([1, 2], [3])), ConfigError, "dataset=(train, test): train: give arrays as "
                                               "(inputs, targets)"),
    (dict(task=42), ConfigError, "task=42: give a trainer.tasks.Task"),
    (dict(optimizer=dict(b3=0.5)), ConfigError, "config.optimizer.b3 is not an argument of "
                                                "optimizer 'sgd'; its arguments are learning_rate"),
    (dict(config="configs/nope.py"), ConfigError, "the config file could not be read"),
]


@pytest.mark.parametrize("arguments, error, message", BAD, ids=[m[:30] for _, _, m in BAD])
def test_bad_objects_and_fields_are_one_typed_error_and_write_nothing(arguments, error, message,
                                                                      tmp_path, monkeypatch):
    def no_exit(*args):
        raise AssertionError(f"sys.exit{args} on the API path")

    monkeypatch.setattr(sys, "exit", no_exit)
    arguments = {"config": "configs/xor_mlp.py", **arguments}
    with pytest.raises(error) as raised:
        api.fit(workdir=tmp_path / "run", **arguments)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "run").exists()


def process_resources():
    """What a call could leave behind in this process: threads, open files, child processes,
    logging handlers and filters (once what is unreachable is collected)."""
    from absl import logging  # pylint: disable=import-outside-toplevel
    import logging as std_logging  # pylint: disable=import-outside-toplevel
    import multiprocessing  # pylint: disable=import-outside-toplevel
    gc.collect()
    return dict(threads=threading.active_count(), files=len(os.listdir("/proc/self/fd")),
                children=len(multiprocessing.active_children()),
                handlers=len(std_logging.root.handlers),
                filters=len(logging.get_absl_handler().filters))


def test_ten_calls_leave_nothing_behind_and_reuse_the_compilation_cache(arrays, tmp_path):
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits"
        else None)
    (train_inputs, train_targets), test = arrays
    images = ((train_inputs[:512].reshape(-1, 28, 28, 1), train_targets[:512]),
              (test[0][:256].reshape(-1, 28, 28, 1), test[1][:256]))
    def xor(workdir, steps):
        api.fit("configs/xor_mlp.py", tmp_path / workdir, num_steps=steps, plots=False)

    def mlp(steps):
        fit_mlp(tmp_path / "mlp", arrays, num_steps=steps)

    def nnx_model(steps):
        api.fit(None, tmp_path / "nnx", model=TinyNnx, dataset=arrays, num_steps=steps,
                batch_size=32, plots=False)

    def streamed(steps):  # random crops, read by a worker process
        api.fit(None, tmp_path / "augmented", model=TinyMLP, dataset=images, num_steps=steps,
                batch_size=32, plots=False, augment=dict(crop_padding=2),
                pipeline=dict(workers=1))

    calls = [(xor, "xor", 50), (xor, "xor", 100), (mlp, 40), (nnx_model, 40),
             (streamed, 20),  # one of each kind
             (xor, "xor", 100), (xor, "xor_again", 50), (mlp, 60), (nnx_model, 60), (streamed, 40)]
    counts = []
    for call, *arguments in calls:
        call(*arguments)
        counts.append(process_resources())
    assert counts[-1] == counts[4], counts  # after one of each kind of call, nothing more
    assert counts[-1]["children"] == 0
    for lock in tmp_path.glob("*/.lock.process0"):  # every workdir free again
        with open(lock, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert hits  # the same programs, compiled once


def test_an_object_has_the_same_name_in_a_new_session_and_a_changed_one_another():
    """What lets a notebook restarted tomorrow resume its run, and refuses another object."""
    names = [given_name(TinyMLP), given_name(optax.adam(1e-3))]
    again = subprocess.run(
        [sys.executable, "-c", "import optax; from test_api import TinyMLP; "
         "from trainer.api import given_name; "
         "print(given_name(TinyMLP), given_name(optax.adam(1e-3)))"],
        capture_output=True, text=True, cwd=REPO, check=True,
        env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
    assert again.stdout.split() == names
    assert given_name(optax.adam(2e-3)) != names[1]
    assert given_name(functools.partial(TinyMLP, hidden=32)) != names[0]
