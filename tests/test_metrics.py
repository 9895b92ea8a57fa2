"""The metrics people read (trainer/metrics.py) equal scikit-learn's on the same predictions, with
an evaluation whose size divides neither the batch nor the device count, on 1 and 8 devices and
in 2 processes; evaluators of a user's own, written outside the checkout, on the device and on
the host."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as sk

from conftest import MNIST_DIR, REPO, devices, free_port
from datasets import mnist
from trainer import api

EXAMPLES = 1003  # of the test split: a batch of 1000 and one of 3, split over 1 or 8 devices
CLASS_METRICS = ("loss", "accuracy", "top5_accuracy", "per_class_accuracy", "precision",
                 "recall", "f1", "confusion_matrix")

USER_METRICS = '''
"""Evaluators of a user's own, outside the framework's checkout."""
import flax
import jax
import numpy as np
from clu import metrics
from sklearn.metrics import balanced_accuracy_score


@flax.struct.dataclass
class Confidence(metrics.Average):
    """On the device: the mean probability of the predicted class."""

    @classmethod
    def from_model_output(cls, *, outputs, mask, **_):
        return super().from_model_output(jax.nn.softmax(outputs).max(-1), mask=mask)


class Seen:
    """On the host: how many examples it saw, and scikit-learn's balanced accuracy."""

    def __init__(self):
        self.labels, self.predicted = [], []

    def update(self, outputs, targets, mask):
        kept = mask.astype(bool)
        self.labels.append(targets[kept])
        self.predicted.append(outputs[kept].argmax(-1))

    def finish(self):
        labels, predicted = np.concatenate(self.labels), np.concatenate(self.predicted)
        return {"examples": len(labels),
                "balanced_accuracy": balanced_accuracy_score(labels, predicted)}
'''

CONFIG = f'''
from configs.mnist_cnn import get_config as mnist_cnn


def get_config():
    config = mnist_cnn()
    config.model.conv_features = (8, 16)
    config.best_metric = ""
    config.evals = dict(test=dict(split="test", max_examples={EXAMPLES}, metrics={
        CLASS_METRICS + ("user_metrics:Confidence", "user_metrics:Seen")!r}))
    return config
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CNN trained 8 steps, with its config (every class metric and the user's evaluators)
    and the module of those evaluators, both outside the checkout."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "user_metrics.py").write_text(USER_METRICS)
    (folder / "metrics_config.py").write_text(CONFIG)
    workdir = folder / "run"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), f"--config={folder}/metrics_config.py",
         f"--config.dataset.data_dir={MNIST_DIR}", f"--workdir={workdir}",
         "--config.num_steps=8", "--config.plots=False"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=with_user_code(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, folder


def with_user_code(folder, num_devices=1):
    """The environment of a script that imports the user's modules in `folder`."""
    return {**os.environ, **devices(num_devices),
            "PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get(
                "PYTHONPATH")])])}


def evaluate(workdir, folder, num_devices=1, processes=1):
    """scripts/evaluate.py's JSON line, on `num_devices` devices in each of `processes`."""
    command = [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"--workdir={workdir}"]
    env = with_user_code(folder, num_devices)
    if processes == 1:
        runs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)]
    else:
        address = f"127.0.0.1:{free_port()}"
        runs = [subprocess.Popen([*command, f"--coordinator_address={address}",
                                  f"--num_processes={processes}", f"--process_id={i}"],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i in range(processes)]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (_, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr[-3000:]
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def references(workdir, mnist_dir):
    """scikit-learn's figures of the run's predictions on the first EXAMPLES test images."""
    test = mnist.load(data_dir=mnist_dir).test
    labels = test["targets"][:EXAMPLES]
    logits = np.asarray(api.load(workdir).predict(test["inputs"][:EXAMPLES]), np.float64)
    predicted = logits.argmax(-1)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    counts = sk.confusion_matrix(labels, predicted, labels=range(10))
    return {
        "test/loss": -log_probabilities[np.arange(EXAMPLES), labels].mean(),
        "test/accuracy": sk.accuracy_score(labels, predicted),
        "test/top5_accuracy": sk.top_k_accuracy_score(labels, logits, k=5, labels=range(10)),
        **{f"test/per_class_accuracy/{c}": recall for c, recall in enumerate(
            sk.recall_score(labels, predicted, average=None, labels=range(10)))},
        **{f"test/{name}": score(labels, predicted, average="macro", zero_division=0)
           for name, score in (("precision", sk.precision_score), ("recall", sk.recall_score),
                               ("f1", sk.f1_score))},
        "test/confusion_matrix": counts.tolist(),
        "test/Confidence": np.exp(log_probabilities.max(-1)).mean(),
        "test/examples": EXAMPLES,
        "test/balanced_accuracy": sk.balanced_accuracy_score(labels, predicted),
    }


def assert_figures_equal(expected, got):
    assert sorted(got) == sorted(["step", *expected])
    for name, value in expected.items():
        if name in ("test/confusion_matrix", "test/examples"):
            assert got[name] == value, name
        else:
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


def test_class_metrics_equal_scikit_learn_on_1_and_8_devices_and_2_processes(trained, mnist_dir,
                                                                             monkeypatch):
    workdir, folder = trained
    monkeypatch.syspath_prepend(str(folder))  # the run's config names the user's evaluators
    expected = references(workdir, mnist_dir)
    assert expected["test/accuracy"] not in (0.0, 1.0)  # predictions right and wrong
    logged = json.loads((workdir / "results.json").read_text())
    assert logged["test/examples"] == EXAMPLES and "test/confusion_matrix" not in logged
    assert_figures_equal(expected, evaluate(workdir, folder))
    assert_figures_equal(expected, evaluate(workdir, folder, num_devices=8))
    assert_figures_equal(expected, evaluate(workdir, folder, num_devices=4, processes=2))
    assert (workdir / "confusion_matrix_test.png").stat().st_size > 0


def test_regression_metrics_equal_scikit_learn(tmp_path):
    run = api.fit("configs/poly_regression.py", tmp_path, num_epochs=50, plots=False,
                  dataset=dict(num_test=997), eval_batch_size=200,
                  evals=dict(test=dict(split="test", metrics=("loss", "mse", "rmse", "mae",
                                                               "r2"))))
    dataset = run.setup.dataset
    # predict() is in natural units, the metrics in the stored (standardised) ones, the loss's.
    decode = dataset.decode_outputs
    scale = float(decode(np.float64(1)) - decode(np.float64(0)))
    targets = np.asarray(decode(np.asarray(dataset.test["targets"], np.float64)))
    predicted = np.asarray(run.predict(dataset.test["inputs"]), np.float64)
    expected = {"test/mse": sk.mean_squared_error(targets, predicted) / scale ** 2,
                "test/rmse": sk.root_mean_squared_error(targets, predicted) / scale,
                "test/mae": sk.mean_absolute_error(targets, predicted) / scale,
                "test/r2": sk.r2_score(targets, predicted)}
    assert 0 < expected["test/r2"] < 1
    results = json.loads((tmp_path / "results.json").read_text())
    for name, value in expected.items():
        assert results[name] == pytest.approx(value, rel=1e-5), name
    assert results["test/loss"] == pytest.approx(expected["test/mse"], rel=1e-5)
