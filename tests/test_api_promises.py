"""What trainer.api promises a Python caller beyond training: a Run that keeps working after an
os.chdir and says so when its folder is gone; positional partials of NNX classes; a dict of splits
as data; fields beside a model object; a dict as the config; typos shown with their value and the
section they belong to; load() saying when the data given is not the run's own; a run given an
Optax object loaded without it; an evaluator class in an evaluation's metrics. Tiny XOR runs."""
import functools
import json
import logging
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import REPO
from trainer import api, configuration
from trainer.errors import ConfigError, WorkdirError

XOR = str(REPO / "configs" / "xor_mlp.py")
TINY = dict(num_steps=20, log_every_steps=10, eval_every_steps=10, checkpoint_every_steps=10,
            plots=False)
INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
TARGETS = np.array([[0], [1], [1], [0]], np.float32)


class NnxNet(nnx.Module):
    """Positional constructor arguments, as the Flax NNX tutorials write them."""

    def __init__(self, din, dhidden, dout, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(din, dhidden, rngs=rngs)
        self.out = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


class LinenNet(nn.Module):
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(self.hidden)(x)))


@pytest.fixture(scope="module")
def arrays_run(tmp_path_factory):
    """A run given its data as arrays, ((train inputs, targets), (test inputs, targets))."""
    return api.fit(XOR, tmp_path_factory.mktemp("arrays"),
                   dataset=((INPUTS, TARGETS), (INPUTS, TARGETS)), **TINY)


def test_a_run_works_after_a_chdir_and_a_moved_workdir_is_a_workdir_error(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = api.fit(XOR, "relative", **TINY)
    assert run.workdir == str(tmp_path / "relative")
    history = run.history
    assert [row["step"] for row in history] == [10, 10, 20, 20]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run.history == history
    assert list(run.history_frame().index) == [10, 20]
    assert [os.path.basename(p) for p in run.plot(show=False)]  # written into the run's folder
    assert all(p.startswith(run.workdir) for p in run.plot(show=False))

    os.rename(tmp_path / "relative", tmp_path / "moved")
    for use in (lambda: run.history, run.history_frame, lambda: run.plot(show=False)):
        with pytest.raises(WorkdirError, match="no longer exists") as gone:
            use()
        assert str(tmp_path / "relative") in str(gone.value) and "\n" not in str(gone.value)
    assert run.predict([0, 1]).shape == (1,)  # the state is in memory: still usable
    assert api.load(tmp_path / "moved").history == history


def test_a_positional_partial_of_an_nnx_class_is_a_model(tmp_path):
    run = api.fit(XOR, tmp_path / "nnx", model=functools.partial(NnxNet, 2, 8, 1), **TINY)
    assert run.params["hidden"]["kernel"].shape == (2, 8) and "eval/loss" in run.final
    with pytest.raises(ConfigError, match="needs config.model.dout; add it"):
        api.fit(XOR, tmp_path / "short", model=functools.partial(NnxNet, 2, 8), **TINY)
    assert not (tmp_path / "short").exists()


def test_a_dict_of_splits_is_data(arrays_run, tmp_path):
    run = api.fit(XOR, tmp_path / "splits",
                  dataset={"train": (INPUTS, TARGETS), "test": (INPUTS, TARGETS)}, **TINY)
    assert run.final == arrays_run.final  # the same data, the same run
    as_dicts = api.given_name(api.dataset_of({
        split: {"inputs": INPUTS, "targets": TARGETS} for split in ("train", "test")}))
    assert run.config.dataset.name == arrays_run.config.dataset.name == as_dicts
    assert as_dicts.startswith("given:datasets.Dataset#")
    for bad in ({"train": (INPUTS, TARGETS)},
                {"train": (INPUTS, TARGETS), "test": (INPUTS, TARGETS), "data_dir": "x"}):
        with pytest.raises(ConfigError, match="a dict of splits takes 'train' and 'test'") as e:
            api.fit(XOR, tmp_path / "bad", dataset=bad, **TINY)
        assert "mnist" not in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "bad").exists()


def test_fields_beside_a_model_object_go_to_its_constructor(tmp_path):
    run = api.fit(XOR, tmp_path / "linen", model=dict(name=LinenNet, hidden=8), **TINY)
    assert run.params["Dense_1"]["kernel"].shape == (2, 8)  # Dense(1) is made first
    recorded = json.loads((tmp_path / "linen" / "config.json").read_text())["model"]
    assert recorded["hidden"] == 8 and recorded["name"].startswith(
        "given:test_api_promises.LinenNet#")
    assert "features" not in recorded or recorded["features"] is None  # xor_mlp's, dropped
    loaded = api.load(tmp_path / "linen", model=LinenNet)  # the object named: its fields kept
    assert loaded.config.model.hidden == 8 and loaded.step == 20
    nnx_run = api.fit(XOR, tmp_path / "nnx", model=dict(name=NnxNet, din=2, dhidden=4, dout=1),
                      **TINY)
    assert nnx_run.params["hidden"]["kernel"].shape == (2, 4)
    with pytest.raises(ConfigError, match="config.model.hiden is not an argument of model "):
        api.fit(XOR, tmp_path / "bad", model=dict(name=LinenNet, hiden=8), **TINY)
    assert not (tmp_path / "bad").exists()


def test_a_dict_as_the_config_is_fields_over_the_defaults(tmp_path):
    fields = configuration.load_file(XOR).to_dict()
    from_dict, _ = api.resolved({**fields, "num_steps": 20}, {}, dict(
        model=None, dataset=None, task=None, optimizer=None, writers=None))
    from_file, _ = api.resolved(XOR, {"num_steps": 20}, dict(
        model=None, dataset=None, task=None, optimizer=None, writers=None))
    assert from_dict.to_dict() == from_file.to_dict()
    # A section in the dict and as a keyword: field by field, the keyword's over the dict's.
    merged, _ = api.resolved(
        dict(augment=dict(flip=True), optimizer=dict(learning_rate=0.5, momentum=0.8)),
        dict(augment=dict(crop_padding=2), optimizer=dict(momentum=None)),
        dict(model=None, dataset=None, task=None, optimizer=None, writers=None))
    assert (merged.augment.flip, merged.augment.crop_padding) == (True, 2)
    assert (merged.optimizer.learning_rate, merged.optimizer.momentum) == (0.5, None)
    run = api.fit(dict(task="binary_regression", dataset=dict(name="xor"), batch_size=4,
                       eval_batch_size=4, model=dict(name="mlp", features=(8, 1)),
                       optimizer=dict(name="sgd", learning_rate=0.1)), tmp_path / "dict", **TINY)
    assert run.config.num_steps == 20 and run.params["Dense_0"]["kernel"].shape == (2, 8)
    for config, message in (({"num_epoch": 3}, "num_epoch=3: the config has no such field (did "
                                               "you mean 'num_epochs'?)"),
                            (42, "config: int is not a config; give a config file's path")):
        with pytest.raises(ConfigError) as refused:
            api.fit(config, tmp_path / "bad")
        assert message in str(refused.value) and len(str(refused.value)) < 200
    assert not (tmp_path / "bad").exists()


TYPOS = [
    (dict(num_epoch=3), "num_epoch=3: the config has no such field (did you mean 'num_epochs'?)"),
    (dict(grad_clip_norm=1.0), "grad_clip_norm=1.0: the config has no such field at the top level "
                               "(did you mean optimizer=dict(grad_clip_norm=1.0)?)"),
    (dict(patience=3), "(did you mean early_stopping=dict(patience=3)?)"),
    (dict(data_dir="/data"), "(did you mean dataset=dict(data_dir='/data')?)"),
    (dict(augment=dict(flipp=True)), "augment=dict(flipp=True): the config has no such field "
                                     "(did you mean 'flip'?)"),
    (dict(num_epochs="two"), "num_epochs='two': config.num_epochs is int"),
]


@pytest.mark.parametrize("overrides, message", TYPOS, ids=[m[:24] for _, m in TYPOS])
def test_a_typo_shows_its_value_and_the_section_it_belongs_to(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as refused:
        api.fit(XOR, tmp_path / "run", **overrides)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_load_with_data_other_than_the_runs_own_says_so(arrays_run, caplog):
    said = "is not the data the run in"
    with caplog.at_level(logging.WARNING):
        same = api.load(arrays_run.workdir, dataset=((INPUTS, TARGETS), (INPUTS, TARGETS)))
    assert same.step == 20 and said not in caplog.text
    caplog.clear()
    other = ((1 - INPUTS, TARGETS), (1 - INPUTS, TARGETS))
    with caplog.at_level(logging.WARNING):
        api.load(arrays_run.workdir, dataset=other)
    lines = [r.getMessage() for r in caplog.records if said in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert arrays_run.config.dataset.name in lines[0]
    assert api.given_name(api.dataset_of(other)) in lines[0]


# A new session's api.load(), without the optimizer: what it evaluates and predicts, and the
# parameters, as JSON.
LOAD_WITHOUT_OPTIMIZER = """
import json, sys
import jax, numpy as np
from trainer import api
run = api.load(sys.argv[1])
print(json.dumps(dict(evaluated=run.evaluate(), step=run.step, figures=len(run.plot(show=False)),
                      predicted=run.predict(np.array(json.loads(sys.argv[2]))).tolist(),
                      params=[np.asarray(x).tolist() for x in jax.tree.leaves(run.params)])))
"""


def test_a_run_given_an_optax_object_loads_without_it_in_a_new_session(tmp_path):
    run = api.fit(XOR, tmp_path, optimizer=optax.adam(1e-2), **TINY)
    assert run.config.optimizer.name.startswith("given:optax.")
    loaded = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_OPTIMIZER, run.workdir,
                             json.dumps(INPUTS.tolist())], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    again = json.loads(loaded.stdout.splitlines()[-1])
    assert again["evaluated"] == run.evaluate() == run.final and again["step"] == 20
    assert np.array_equal(again["predicted"], run.predict(INPUTS)) and again["figures"]
    assert all(np.array_equal(a, b) for a, b in zip(again["params"], jax.tree.leaves(run.params)))
    # Given again, its state is restored too.
    given = api.load(tmp_path, optimizer=optax.adam(1e-2))
    assert jax.tree.all(jax.tree.map(np.array_equal, given.state.opt_state, run.state.opt_state))
    assert given.evaluate() == run.final


class Counter:
    """An evaluator of the host: the examples the mask keeps."""

    def __init__(self):
        self.examples = 0

    def update(self, outputs, targets, mask):
        del outputs, targets
        self.examples += int(np.sum(mask))

    def finish(self):
        return {"examples": self.examples}


def test_an_evaluator_class_in_an_evaluations_metrics_is_given_by_name(tmp_path):
    run = api.fit(XOR, tmp_path, evals=dict(test=dict(split="test", metrics=("loss", Counter))),
                  **TINY)
    assert run.config.evals.test.metrics == ("loss", api.given_name(Counter))
    assert api.given_name(Counter).startswith("given:test_api_promises.Counter#")
    assert [row["test/examples"] for row in run.history if "test/examples" in row] == [4, 4]
    assert json.loads((tmp_path / "results.json").read_text())["test/examples"] == len(INPUTS)
    assert run.evaluate()["test/examples"] == len(INPUTS)  # after fit() returned too
    # In a dict as the config too.
    fields = {**configuration.load_file(XOR).to_dict(),
              "evals": dict(val=dict(split="test", metrics=(Counter, "loss")))}
    config, objects = api.resolved(fields, {}, dict(model=None, dataset=None, task=None,
                                                    optimizer=None, writers=None))
    assert config.evals.val.metrics == (api.given_name(Counter), "loss")
    assert objects == {api.given_name(Counter): Counter}
