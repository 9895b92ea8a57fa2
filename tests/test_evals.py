"""Named evaluations (trainer/evals.py) and the validation split carved from train: each
evaluation on its own split and schedule, logged as <name>/<metric>; selection by validation, the
test split reporting; bad evaluation settings in one line, nothing written."""
import json
import pathlib

import numpy as np
from PIL import Image
import pytest

import datasets
from conftest import MNIST_DIR, files
from trainer import api
from trainer.errors import ConfigError, WorkdirError

SMALL = dict(model=dict(features=(32, 10)), batch_size=64, num_steps=60, log_every_steps=20,
             eval_every_epochs=0, plots=False, dataset=dict(data_dir=str(MNIST_DIR)))
EVALS = dict(val=dict(split="validation", every_steps=20, max_examples=1000),
             test=dict(split="test"))


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    """MNIST, a tenth of train held out: val every 20 steps on its first 1000, the test split at
    the end, the best checkpoint by val/accuracy; best_mode=min keeps the worst, an early one,
    so that the chosen model is not the last."""
    workdir = tmp_path_factory.mktemp("evals")
    run = api.fit("configs/mnist_mlp.py", workdir, validation=dict(fraction=0.1), evals=EVALS,
                  best_metric="val/accuracy", best_mode="min", **SMALL)
    return run


def test_the_validation_split_is_drawn_from_the_count_alone():
    held = datasets.validation_indices(60000, 0.1, 0)
    assert len(held) == 6000 and np.all(np.diff(held) > 0)
    assert np.array_equal(held, datasets.validation_indices(60000, 0.1, 0))
    assert not np.array_equal(held, datasets.validation_indices(60000, 0.1, 1))
    # In memory or streamed, the same examples.
    arrays = {"inputs": np.arange(100)[:, None], "targets": np.arange(100)}
    picked = datasets.validation_indices(100, 0.25, 3)
    streamed = datasets.subset(datasets.ArraySource(arrays), picked)
    assert len(streamed) == 25
    assert np.array_equal(datasets.examples(streamed, range(25))["targets"],
                          datasets.subset(arrays, picked)["targets"])


def test_training_never_sees_the_validation_split(chosen):
    train, validation = chosen.setup.dataset.train, chosen.setup.dataset.validation
    assert len(train["targets"]) == 54000 and len(validation["targets"]) == 6000
    seen = {bytes(x) for x in train["inputs"][:5000]}
    assert not seen & {bytes(x) for x in validation["inputs"]}


def test_each_evaluation_logs_its_rows_and_selection_is_by_validation(chosen):
    rows = [row for row in chosen.history if "train/loss" not in row]
    assert [(row["step"], sorted(row)) for row in rows] == [
        (20, ["step", "val/accuracy", "val/loss"]), (40, ["step", "val/accuracy", "val/loss"]),
        (60, ["step", "test/accuracy", "test/loss", "val/accuracy", "val/loss"])]
    results = json.loads((pathlib.Path(chosen.workdir) / "results.json").read_text())
    assert results == {"step": 60, **chosen.final}
    best_step = min(rows, key=lambda row: row["val/accuracy"])["step"]
    assert best_step < 60
    # The final evaluation, and the test split's figures of the model validation chose.
    assert set(chosen.final) == {"val/loss", "val/accuracy", "test/loss", "test/accuracy",
                                 "best_step", "best/test/loss", "best/test/accuracy"}
    assert chosen.final["best_step"] == best_step
    best = api.load(chosen.workdir, step="best")
    assert best.step == best_step
    again = best.evaluate()
    assert again["val/accuracy"] == pytest.approx(
        rows[[row["step"] for row in rows].index(best_step)]["val/accuracy"], abs=1e-6)
    assert again["test/accuracy"] == pytest.approx(chosen.final["best/test/accuracy"], abs=1e-6)


def kept(workdir):
    """The run's files but the lock, which holds the pid of the last process to start there."""
    return {path: data for path, data in files(pathlib.Path(workdir)).items()
            if not path.name.startswith(".lock")}


def test_a_resume_under_another_validation_split_is_refused(chosen):
    before = kept(chosen.workdir)
    with pytest.raises(WorkdirError, match=r"validation.fraction \(0.1 there, 0.2 here\)"):
        api.fit("configs/mnist_mlp.py", chosen.workdir, validation=dict(fraction=0.2),
                evals=EVALS, best_metric="val/accuracy", **{**SMALL, "num_steps": 80})
    assert kept(chosen.workdir) == before


XOR = "configs/xor_mlp.py"
TINY = dict(num_steps=10, plots=False)
MNIST = dict(data_dir=str(MNIST_DIR))  # read before the evaluations are checked

BAD = [
    (XOR, dict(best_metric="eval/loss"),
     "config.best_metric='eval/loss' would choose the model by the test split, whose figures are "
     "then no longer an honest estimate: carve a validation split from train "
     "(validation=dict(fraction=0.1))"),
    ("configs/mnist_mlp.py", dict(evals=EVALS, best_metric="test/accuracy", dataset=MNIST),
     "config.best_metric='test/accuracy' would choose the model by the test split"),
    ("configs/mnist_mlp.py", dict(evals=EVALS, early_stopping=dict(metric="val/f1"),
                                  dataset=MNIST),
     "config.early_stopping.metric='val/f1' is never logged: evaluation logs test/loss, "
     "test/accuracy, val/loss, val/accuracy."),
    (XOR, dict(validation=dict(fraction=1.5)), "config.validation.fraction=1.5 is invalid"),
    (XOR, dict(validation=dict(fraction=0.1)),
     "config.validation.fraction=0.1 of the training split's 4 examples holds out 0"),
    (XOR, dict(evals=dict(train=dict(split="test"))), "config.evals.train: an evaluation's name"),
    (XOR, dict(evals={"a-b": dict(split="test")}), "config.evals.a-b: an evaluation's name"),
    (XOR, dict(evals=dict(val=dict(evry_steps=5))),
     "config.evals.val.evry_steps: an evaluation has no such field; its fields are split, "
     "every_steps, every_epochs, max_examples, ema, metrics, dataset."),
    (XOR, dict(evals=dict(test=dict(split="test", metrics=("loss", "f2")))),
     "config.evals.test.metrics: 'f2': there is no such metric; give some of loss, accuracy, "
     "per_class_accuracy, precision, recall, f1"),
    (XOR, dict(evals=dict(test=dict(split="test", metrics="r2"))),
     "config.evals.test.metrics: 'r2': it is a regression metric and this task is a classifier"),
    (XOR, dict(evals=dict(test=dict(split="test", metrics=("top3_accuracy",)))),
     "config.evals.test.metrics=('top3_accuracy',): cannot be computed on the model's outputs "
     "(shape (1,) each)"),
    (XOR, dict(evals=dict(test=dict(split="test", metrics="my_metrics:Nothing"))),
     "config.evals.test.metrics='my_metrics:Nothing' is not an evaluator: there is no module "
     "'my_metrics'"),
    (XOR, dict(evals=dict(val=dict(split="valid"))), "config.evals.val.split='valid' is not a split"),
    (XOR, dict(evals=dict(val=dict(split="validation"))),
     "config.evals.val.split='validation', and the data set has no validation split: carve one "
     "from train (validation=dict(fraction=0.1))."),
    (XOR, dict(evals=dict(val=dict(split="test", max_examples=-1))),
     "config.evals.val.max_examples=-1 is invalid"),
]


@pytest.mark.parametrize("config, fields, message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_evaluation_settings_are_one_line_and_write_nothing(config, fields, message,
                                                                tmp_path):
    with pytest.raises(ConfigError) as refused:
        api.fit(config, tmp_path / "run", **{**TINY, **fields})
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_a_data_sets_own_validation_split_is_used_and_not_carved_again(tmp_path):
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.normal(size=(n, 2)).astype(np.float32)
        return x, (x.sum(1, keepdims=True) > 0).astype(np.float32)

    data = {"train": split(64), "validation": split(16), "test": split(32)}
    with pytest.raises(ConfigError, match="the data set has a validation split of its own"):
        api.fit(XOR, tmp_path / "carved", dataset=data, validation=dict(fraction=0.1), **TINY)
    run = api.fit(XOR, tmp_path / "run", dataset=data, batch_size=16,
                  evals=dict(val=dict(split="validation", every_steps=5)), best_metric="val/loss",
                  **TINY)
    assert set(run.final) == {"val/loss", "val/accuracy"}


def test_selection_on_the_test_split_when_meant(tmp_path):
    run = api.fit(XOR, tmp_path / "run", best_metric="eval/loss", select_on_test=True,
                  eval_every_steps=5, **TINY)
    assert api.load(run.workdir, step="best").step in (5, 10)


def image_folder(root, per_class):
    """Tiny grey PNGs of two classes, root/<split>/<class>/<i>.png, `per_class` {split: count}."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label in (0, 1):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 100, (8, 8)) + 150 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return str(root)


FOLDER_RUN = dict(model=dict(name="mlp", features=(8, 2)), batch_size=8, eval_batch_size=8,
                  num_steps=4, plots=False, best_metric="val/accuracy",
                  evals=dict(val=dict(split="validation", every_steps=2), test=dict(split="test")))


def test_a_val_folder_is_the_data_sets_own_validation_split(tmp_path):
    own = dict(name="image_folder", data_dir=image_folder(tmp_path / "own",
                                                          {"train": 16, "val": 6, "test": 5}))
    with pytest.raises(ConfigError, match="the data set has a validation split of its own"):
        api.fit(None, tmp_path / "both", dataset=own, validation=dict(fraction=0.25), **FOLDER_RUN)
    assert not (tmp_path / "both").exists()
    run = api.fit(None, tmp_path / "run", dataset=own, **FOLDER_RUN)
    assert {"val/accuracy", "test/accuracy"} <= set(run.final)
    assert json.loads((tmp_path / "run" / "validation_split.json").read_text()) == {
        "examples": 12, "the data set's own": True}


def test_a_resume_on_data_that_draws_another_validation_split_is_refused(tmp_path):
    """The same settings on data of another size draw other examples: the digest tells."""
    first, other = (dict(name="image_folder", data_dir=image_folder(tmp_path / name, {
        "train": count, "test": 5})) for name, count in (("first", 16), ("other", 20)))
    carved = dict(validation=dict(fraction=0.25), **FOLDER_RUN)
    api.fit(None, tmp_path / "run", dataset=first, **carved)
    recorded = json.loads((tmp_path / "run" / "validation_split.json").read_text())
    assert recorded["examples"] == 8 and recorded["of"] == 32 and len(recorded["digest"]) == 16
    before = files(tmp_path / "run")
    with pytest.raises(WorkdirError, match="chose its model on another validation split"):
        api.fit(None, tmp_path / "run", dataset=other, **{**carved, "num_steps": 8})
    assert files(tmp_path / "run") == before


def test_an_evaluation_on_another_data_set_by_name(mnist_folder, tmp_path):
    """MNIST's first 500 test images as PNG files in an image folder, evaluated beside the
    run's own test split: the same figures as the run's own evaluation of those 500 arrays."""
    pngs = dict(split="test", dataset=dict(name="image_folder", data_dir=str(mnist_folder)))
    run = api.fit("configs/mnist_mlp.py", tmp_path, **{**SMALL, "num_steps": 20}, best_metric="",
                  evals=dict(val=dict(split="validation", max_examples=500), pngs=pngs))
    test = datasets.examples(run.setup.dataset.test, range(500))
    arrays = run.evaluate((test["inputs"], test["targets"]), eval="val")
    assert run.final["pngs/accuracy"] == arrays["val/accuracy"]
    assert run.final["pngs/loss"] == pytest.approx(arrays["val/loss"], rel=1e-6)


def test_selection_by_an_evaluation_only_at_the_end_is_said_not_refused(tmp_path, caplog):
    """A shipped config's best_metric with its evaluation switched off during training (a quick
    try): the run goes on, the best checkpoint its last, and one warning says why."""
    run = api.fit(XOR, tmp_path, best_metric="eval/loss", select_on_test=True,
                  eval_every_steps=0, **TINY)
    assert run.final["best_step"] == run.step == 10
    warned = [r.getMessage() for r in caplog.records if "acts on nothing" in r.getMessage()]
    assert warned == ["config.best_metric='eval/loss' compares evaluations, but "
                      "config.eval_every_epochs=0 and eval_every_steps=0 evaluate only once, at the "
                      "end of training, so it acts on nothing: evaluate during it, e.g. "
                      "eval_every_steps=1, or set best_metric=''."]
