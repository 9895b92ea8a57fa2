"""Bad input through scripts/train.py, as a user gives it: one clear message, exit 2, no traceback,
and a workdir left as it was."""
import subprocess
import sys

import pytest

from conftest import run_train

XOR = "--config=configs/xor_mlp.py"
MNIST = "--config=configs/mnist_cnn.py"


@pytest.fixture
def config_files(tmp_path):
    (tmp_path / "syntax.py").write_text("def get_config(:\n    pass\n")
    (tmp_path / "no_get_config.py").write_text("x = 1\n")
    return tmp_path


BAD_INPUTS = [
    ([XOR, "--config.optimizer.nam=sgd"], "--config.optimizer.nam: the config has no such field"),
    ([XOR, "--config.batch_sise=4"], "--config.batch_sise: the config has no such field"),
    ([XOR, "--config.batch_size=four"], "--config.batch_size=four"),
    ([XOR, "--config.batch_size=0"], "config.batch_size=0 is invalid: it must be a positive integer"),
    ([XOR, "--config.num_epochs=-3"], "config.num_epochs=-3 is invalid"),
    ([XOR, "--config.optimizer.learning_rate=-0.1"], "config.optimizer.learning_rate=-0.1"),
    ([XOR, "--config.optimizer.momentum=1.5"], "config.optimizer.momentum=1.5"),
    ([XOR, "--config.model.name=transformer"], "config.model.name='transformer' is not a model"),
    ([XOR, "--config.model.activation=swish"], "activation='swish'"),
    ([XOR, "--config.optimizer.name=adagrad"], "config.optimizer.name='adagrad' is invalid"),
    ([XOR, "--config.optimizer.schedule=linear"], "config.optimizer.schedule='linear' is invalid"),
    ([XOR, "--config.task=ranking"], "config.task='ranking' is invalid"),
    ([XOR, "--config.dataset.name=cifar"], "config.dataset.name='cifar' is not a known data set"),
    ([XOR, "--config.batch_size=8"], "config.batch_size=8 is larger than the training split"),
    (["--config=configs/nope.py"], "the config file could not be read"),
    (["--config={files}/syntax.py"], "has a syntax error on line 1"),
    (["--config={files}/no_get_config.py"], "defines no get_config()"),
    ([MNIST, "--config.dataset.data_dir=/no/such/folder"], "is not a folder"),
    ([XOR, "stray"], "unexpected arguments ['stray']"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[a[-1] for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_clear_message(args, message, config_files, tmp_path):
    workdir = tmp_path / "run"
    args = [a.format(files=config_files) for a in args]
    result = run_train(*args, f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()  # found before anything was written


def test_bad_input_leaves_existing_checkpoints_byte_identical(tmp_path):
    assert run_train(XOR, f"--workdir={tmp_path}", "--config.num_epochs=10").returncode == 0
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = run_train(XOR, f"--workdir={tmp_path}", "--config.optimizer.name=adagrad")
    assert result.returncode == 2
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_workdir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("precious")
    result = run_train(XOR, f"--workdir={tmp_path / 'file'}")
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr
    assert (tmp_path / "file").read_text() == "precious"


def test_debug_shows_the_traceback(tmp_path):
    result = run_train(XOR, "--config.optimizer.name=adagrad", "--debug", f"--workdir={tmp_path}")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_show_config_prints_the_resolved_config():
    result = run_train(XOR, "--config.optimizer.learning_rate=0.5", "--show_config")
    assert result.returncode == 0
    assert "learning_rate: 0.5" in result.stdout and "name: xor" in result.stdout


def test_our_datasets_package_wins_over_hugging_faces(tmp_path):
    """An installed `datasets` (Hugging Face's) neither shadows ours nor is shadowed by the install."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("SOURCE = 'hugging face'\n")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    result = run_train(XOR, f"--workdir={tmp_path / 'run'}", "--config.num_epochs=5", env=env)
    assert result.returncode == 0, result.stderr
    other = subprocess.run([sys.executable, "-c", "import datasets; print(datasets.SOURCE)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert other.stdout.strip() == "hugging face"
