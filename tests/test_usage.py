"""Day-to-day use of a trained run: evaluate, predict, plots, progress, TensorBoard."""
import gzip
import json
import os
import pty
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from datasets import mnist

from conftest import MNIST_DIR, REPO, results, run_train


def run_script(name, *args, env=None):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args],
                            capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cnn")
    result = run_train("--config=configs/mnist_cnn.py", f"--config.dataset.data_dir={MNIST_DIR}",
                       "--config.model.conv_features=(8, 16)", "--config.num_steps=200", "--config.eval_every_steps=100",
                       "--config.checkpoint_every_steps=100", "--config.log_every_steps=50",
                       f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def poly_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("poly")
    assert run_train("--config=configs/poly_regression.py", f"--workdir={workdir}").returncode == 0
    return workdir


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("devices", [1, 8])
def test_evaluate_reproduces_the_accuracy_logged_at_the_end(cnn_run, devices):
    """Bitwise on the device count training used; on another, the loss is a sum in another order
    (to 1e-6 relative), and the accuracy, a count of right answers, is the same."""
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    printed = json.loads(run_script("evaluate.py", f"--workdir={cnn_run}", env=env))
    logged = results(cnn_run)
    if devices == 1:
        assert printed == logged
    else:
        for name in ("val", "test"):
            assert printed[f"{name}/accuracy"] == logged[f"{name}/accuracy"]
            assert printed[f"{name}/loss"] == pytest.approx(logged[f"{name}/loss"], rel=1e-6)
    assert json.loads((cnn_run / "eval_200.json").read_text()) == printed


def test_evaluate_an_earlier_step(cnn_run):
    printed = json.loads(run_script("evaluate.py", f"--workdir={cnn_run}", "--step=100",
                                    "--eval=val"))
    logged = [json.loads(line) for line in (cnn_run / "metrics.jsonl").read_text().splitlines()]
    at_100 = next(e for e in logged if e["step"] == 100 and "val/accuracy" in e)
    assert printed == at_100


def test_predict_mnist_by_index_and_from_an_image_file(cnn_run, tmp_path):
    indices = list(range(20))
    lines = run_script("predict.py", f"--workdir={cnn_run}",
                       f"--indices={','.join(map(str, indices))}").splitlines()[1:]
    test = mnist.load(data_dir=str(MNIST_DIR)).test
    predicted = [int(re.search(r"predicted (\d+)", line)[1]) for line in lines]
    assert len(predicted) == 20
    assert np.mean(np.array(predicted) == test["targets"][indices]) >= 0.9
    Image.fromarray(test["inputs"][0, ..., 0]).save(tmp_path / "digit.png")
    from_file = run_script("predict.py", f"--workdir={cnn_run}", f"--images={tmp_path / 'digit.png'}")
    assert from_file.splitlines()[1] == f"{tmp_path / 'digit.png'}: predicted {predicted[0]}"


def test_predict_shows_a_few_test_images_unless_asked(cnn_run):
    lines = run_script("predict.py", f"--workdir={cnn_run}").splitlines()
    assert lines[1] == "# test examples 0 to 9 of 10000; --indices=... for others"
    assert [line.split(":")[0] for line in lines[2:]] == [f"test #{i}" for i in range(10)]


def refused(script, *args):
    """One `error:` line and exit 2."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("xor")
    assert run_train("--config=configs/xor_mlp.py", f"--workdir={workdir}").returncode == 0
    return workdir


def test_predict_xor_prints_the_four_bits(xor_run):
    lines = run_script("predict.py", f"--workdir={xor_run}").splitlines()[1:]
    bits = {line.split(":")[0]: int(re.search(r"predicted (\d)", line)[1]) for line in lines}
    assert bits == {"[0. 0.]": 0, "[0. 1.]": 1, "[1. 0.]": 1, "[1. 1.]": 0}


def test_predict_refuses_what_it_cannot_read(cnn_run, xor_run, tmp_path):
    message = refused("predict.py", f"--workdir={cnn_run}", "--indices=a")
    assert "--indices=a: write the indices of test examples as integers" in message
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    message = refused("predict.py", f"--workdir={xor_run}", f"--images={tmp_path / 'digit.png'}")
    assert "--images needs a run on image data; this run's inputs have shape (2,)" in message
    message = refused("predict.py", f"--workdir={xor_run}", "--inputs=0,1;1")
    assert message.strip() == ("error: --inputs='0,1;1': row 2 has 1 value(s); this model takes "
                               "2 an input, ',' between values and ';' between rows.")


def test_a_run_is_read_from_any_folder_and_its_config_overridden(tmp_path):
    """train.py stores the run's paths absolute: evaluate.py works from elsewhere, and takes
    --config.FIELD overrides of the run's own config without --config."""
    workdir = tmp_path / "run"
    result = run_train("--config=configs/mnist_mlp.py", "--config.num_steps=30",
                       "--config.dataset.data_dir=../shared/data/mnist",  # relative to the checkout
                       "--config.plots=False", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    elsewhere = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"),
                                f"--workdir={workdir}"], capture_output=True, text=True, cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    assert json.loads(elsewhere.stdout) == results(workdir)
    smaller_batches = run_script("evaluate.py", f"--workdir={workdir}",
                                 "--config.eval_batch_size=500")
    assert json.loads(smaller_batches)["test/accuracy"] == json.loads(elsewhere.stdout)[
        "test/accuracy"]


def test_predict_polynomial_curve_in_natural_units(poly_run):
    lines = run_script("predict.py", f"--workdir={poly_run}", "--inputs=-10;-5;0;5;10").splitlines()
    values = [float(re.search(r"predicted \[ *([-\d.e+]+)\]", line)[1]) for line in lines[1:]]
    truth = [x**3 - 2 * x**2 + x - 2 for x in (-10, -5, 0, 5, 10)]  # -1212 ... 808
    assert values == sorted(values)  # rising, like the cubic
    assert max(abs(v - t) for v, t in zip(values, truth)) < 0.3 * (truth[-1] - truth[0])


def test_training_writes_the_figures_and_plot_py_redraws_them(cnn_run, poly_run):
    expected = {cnn_run / "curves.png": (1200, 400), cnn_run / "confusion_matrix.png": (700, 660),
                cnn_run / "misclassified.png": (1000, 1100),
                poly_run / "curves.png": (600, 400), poly_run / "predictions.png": (600, 400)}
    for path, size in expected.items():
        assert png_size(path) == size, path
    for path in expected:
        path.unlink()
    for run in (cnn_run, poly_run):
        run_script("plot.py", f"--workdir={run}")
    for path, size in expected.items():
        assert png_size(path) == size, path


def test_tensorboard_reads_the_scalars_and_the_config(cnn_run):
    events = event_accumulator.EventAccumulator(
        str(cnn_run), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "learning_rate",
                "steps_per_sec"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("train/loss")] == [50, 100, 150, 200]
    final = json.loads((cnn_run / "results.json").read_text())["test/accuracy"]
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(final)
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(config_text)["model"]["name"] == "cnn"


def test_progress_bar_on_a_terminal_and_lines_elsewhere(tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/xor_mlp.py",
            "--config.num_epochs=300", "--config.log_every_steps=100", "--config.plots=False"]
    controller, terminal = pty.openpty()
    run = subprocess.Popen([*args, f"--workdir={tmp_path / 'tty'}"], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    assert run.wait() == 0
    screen = shown.decode(errors="replace")
    assert "epoch 300/300" in screen and "step/s" in screen and "\r" in screen
    assert "steps/s, ETA" not in screen  # the bar shows it

    plain = run_train(*args[2:], f"--workdir={tmp_path / 'plain'}")
    assert "epoch 100.00, " in plain.stderr and "steps/s, ETA" in plain.stderr
    assert "step/s]" not in plain.stderr


@pytest.mark.parametrize("steps, profile_steps, traced", [
    ("fused", "(10, 15)", "11 to 15"),
    ("per_step", "(35, 60)", "36 to 40"),  # the end of training comes first, and is said
])
def test_profile_steps_writes_a_trace_of_those_steps(steps, profile_steps, traced, tmp_path):
    result = run_train("--config=configs/xor_mlp.py", f"--workdir={tmp_path}", "--config.plots=False",
                       "--config.num_steps=40", f"--config.profile_steps={profile_steps}",
                       f"--config.steps={steps}")
    assert result.returncode == 0, result.stderr[-3000:]
    cut_short = " (the run ended at step 40, before step 60)" if traced == "36 to 40" else ""
    assert f"Profile of steps {traced} written to {tmp_path / 'profile'}{cut_short}." in (
        result.stderr)
    (xplane,) = (tmp_path / "profile").rglob("*.xplane.pb")  # TensorBoard's profile plugin
    (trace,) = (tmp_path / "profile").rglob("*.trace.json.gz")  # Perfetto
    assert xplane.stat().st_size > 0
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    calls = [e for e in events if "train_step" in e.get("name", "") and e.get("ph") == "X"]
    assert calls  # the traced steps ran inside the trace
