"""Your own parts: models, a data set, a task, an optimizer and a metric writer written outside the
checkout plug in by config alone, train, checkpoint and resume; bad names and fields of each kind
are one clear line."""
import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import user_code
from conftest import files, run_train
from trainer import api, parts
from trainer.checkpoint import shapes_by_name
from trainer.errors import ConfigError


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    return user_code.write(tmp_path_factory.mktemp("user_code"))


def train(user_folder, workdir, variant, *args):
    return run_train(f"--config={user_folder / 'user_config.py'}:{variant}", f"--workdir={workdir}",
                     *args, env={"PYTHONPATH": str(user_folder)})


def final_state(workdir, step):
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def logged(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("variant", ["cnn", "deterministic", "resnet", "counter"])
def test_a_users_parts_train_checkpoint_and_resume(variant, user_folder, tmp_path):
    first = train(user_folder, tmp_path, variant)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = train(user_folder, tmp_path, variant, "--config.num_steps=16")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from the checkpoint at step 8" in resumed.stderr
    losses = [e["train/loss"] for e in logged(tmp_path) if "train/loss" in e]
    assert len(losses) == 4 and losses[-1] < losses[0]  # it learns, before and after the resume
    state = final_state(tmp_path, 16)
    if variant == "cnn":  # the user's task, writer and Optax optimizer
        assert {"train/top2", "eval/top2", "eval/accuracy"} <= set().union(*logged(tmp_path))
        lines = (tmp_path / "lines.txt").read_text().splitlines()
        assert lines[0] == "start 0" and "start 8" in lines
        assert [line.split()[0] for line in lines if "train/loss" in line] == ["4", "8", "12", "16"]
        names = shapes_by_name(state["opt_state"])
        assert any(n.endswith("/mu/Dense_0/kernel") for n in names)  # lamb's moments
        assert any(n.endswith("/nu/Dense_0/kernel") for n in names)
    if variant == "resnet":
        assert "batch_stats" in state["model_state"]
    if variant == "counter":  # its own collection, carried through the checkpoint
        assert int(state["model_state"]["counters"]["training_calls"]) == 16


BAD_PARTS = [
    # (config variant, overrides, the message)
    ("cnn", {"model.name": "no_such_module:CNN"},
     "config.model.name='no_such_module:CNN' is not a model: there is no module 'no_such_module'"),
    ("cnn", {"model.name": "my_models:Nope"},
     "config.model.name='my_models:Nope' is not a model: module my_models has no 'Nope'"),
    ("bad_model_field", {}, "config.model.hiden is not an argument of model 'my_models:DropoutMLP'; "
                            "its arguments are hidden, rate."),
    ("bad_partial_field", {}, "config.model.stage_size is not an argument of model "
                              "'user_nets.resnet:ResNet18'; its arguments are stage_sizes, "
                              "block_cls, num_classes, num_filters, dtype."),
    ("cnn", {"dataset.name": "my_data:nope"}, "config.dataset.name='my_data:nope' is not a "
                                                    "data set: module my_data has no 'nope'"),
    ("bad_dataset_field", {}, "config.dataset.num_trian is not an argument of data set 'my_data'"),
    ("cnn", {"task": "my_tasks:nope"}, "config.task='my_tasks:nope' is not a task"),
    ("cnn", {"optimizer.name": "lamb2"}, "config.optimizer.name='lamb2' is not an optimizer"),
    ("bad_optimizer_argument", {}, "config.optimizer.b3 is not an argument of optimizer 'lamb'; its "
                                   "arguments are learning_rate, b1, b2, eps, eps_root, "
                                   "weight_decay, mask."),
    ("cnn", {"writers": ("jsonl", "my_writers:Nope")},
     "'my_writers:Nope' is not a metric writer: module my_writers has no 'Nope'"),
    ("writer_without_write_text", {}, "config.writers: 'my_writers:NoText' has no write_text()"),
]


@pytest.mark.parametrize("variant, overrides, message", BAD_PARTS,
                         ids=[f"{v}{o}" for v, o, _ in BAD_PARTS])
def test_bad_names_and_fields_of_each_kind(variant, overrides, message, user_folder, tmp_path,
                                           monkeypatch):
    """Through api.fit in this process: the command line says the same line (test_cli.py)."""
    monkeypatch.syspath_prepend(str(user_folder))
    (tmp_path / "kept.txt").write_text("a file that stays")
    before = files(tmp_path)
    with pytest.raises(ConfigError) as raised:
        api.fit(f"{user_folder / 'user_config.py'}:{variant}", tmp_path, **overrides)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert files(tmp_path) == before


@pytest.fixture
def on_path(user_folder, monkeypatch):
    monkeypatch.syspath_prepend(str(user_folder))


@pytest.mark.parametrize("kind, name, found", [
    (parts.MODEL, "cnn", "models.cnn.CNN"),  # a shipped module's Model
    (parts.MODEL, "cnn:CNN", "models.cnn.CNN"),
    (parts.MODEL, "my_models:CNN", "my_models.CNN"),  # top-level module on the path
    (parts.MODEL, "user_nets.resnet:ResNet18", "user_nets.resnet.ResNet"),  # a partial, dotted
    (parts.DATASET, "my_data", "my_data.load"),  # a module alone: its default attribute
    (parts.DATASET, "xor", "datasets.xor.load"),
    (parts.TASK, "classification", None),
    (parts.OPTIMIZER, "lamb", "optax._src.alias.lamb"),
    (parts.OPTIMIZER, "contrib:muon", "optax.contrib._muon.muon"),
    (parts.WRITER, "my_writers:Lines", "my_writers.Lines"),
])
def test_one_rule_finds_every_kind(kind, name, found, on_path):
    del on_path
    part = parts.find(kind, name)
    target = getattr(part, "func", part)  # a partial's class
    if found:
        assert f"{target.__module__}.{target.__qualname__}" == found
    else:
        assert part is __import__("trainer.tasks").tasks.classification


def test_an_import_error_inside_a_users_module_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_models.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="importing broken_models failed: No module named "
                                          "'no_such_dependency'"):
        parts.find(parts.MODEL, "broken_models:CNN")


def test_models_are_called_as_their_signature_asks(on_path):
    from my_models import DropoutMLP, CountingMLP, CNN  # pylint: disable=import-outside-toplevel
    from trainer.model import LinenModel  # pylint: disable=import-outside-toplevel
    assert LinenModel(DropoutMLP()).mode_argument == "deterministic"
    assert LinenModel(CountingMLP()).mode_argument == "training"
    assert LinenModel(CNN()).mode_argument is None
    images = np.ones((2, 8, 8, 1), np.float32)
    model = LinenModel(DropoutMLP(rate=0.5))
    params, state = model.init(jax.random.PRNGKey(0), jax.random.PRNGKey(2), images)
    train_outputs, _ = model.apply(params, state, images, True, jax.random.PRNGKey(1))
    eval_outputs, _ = model.apply(params, state, images, False)
    assert not np.allclose(train_outputs, eval_outputs)  # dropout on in training only
    assert np.allclose(eval_outputs, model.apply(params, state, images, False)[0])


def test_optimizer_fields_are_its_keyword_arguments():
    from configs.base import get_base_config  # pylint: disable=import-outside-toplevel
    from trainer.optim import create_optimizer  # pylint: disable=import-outside-toplevel
    config = get_base_config().optimizer
    config.update(dict(name="lion", b1=0.95))
    tx, _ = create_optimizer(config, steps_per_epoch=10, total_steps=100)
    params = {"w": np.ones(3, np.float32)}
    updates, _ = tx.update({"w": np.full(3, 2.0, np.float32)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -1e-3)  # lion: the sign of the gradient, scaled
    config.name = "adam"
    config.momentum = 0.9
    with pytest.raises(ConfigError, match="config.optimizer.momentum is not an argument of "
                                          "optimizer 'adam'"):
        create_optimizer(config, steps_per_epoch=10, total_steps=100)


def test_a_model_name_that_gives_no_module(on_path):
    del on_path
    from trainer.model import build as build_model  # pylint: disable=import-outside-toplevel
    with pytest.raises(ConfigError, match="gave a Dataset, not a linen or NNX Module"):
        build_model(ml_collections.ConfigDict({"name": "my_data:load"}))
