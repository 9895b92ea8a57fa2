"""Fine-tuning: a trained MNIST CNN's arrays loaded by name into a CNN with a new 5-class head
(config.init_from, init_from_regex), some parameters frozen (config.optimizer.frozen); bad values
are one clear line each."""
import dataclasses
import json
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import user_code
from conftest import MNIST_DIR, files, run_train
from trainer import api, finetune
from trainer.checkpoint import shapes_by_name
from trainer.errors import ConfigError
from trainer.setup import build

XOR = "--config=configs/xor_mlp.py"
SOURCE_STEPS, FINE_TUNE_STEPS = 20, 8

# Kept outside the checkout, as a user's own code: MNIST cut to its first `classes` digits.
USER_FILES = {
    "mnist_classes.py": """
        import numpy as np
        from datasets import Dataset, mnist

        def load(data_dir, classes=10, num_train=2000, num_test=500):
            '''The first examples of MNIST whose label is below `classes`.'''
            full = mnist.load(data_dir=data_dir)

            def split(arrays, n):
                keep = np.flatnonzero(arrays["targets"] < classes)[:n]
                return {name: array[keep] for name, array in arrays.items()}

            return Dataset(train=split(full.train, num_train), test=split(full.test, num_test),
                           prepare_inputs=full.prepare_inputs)
    """,
    "finetune_config.py": """
        import ml_collections
        from configs.mnist_cnn import get_config as mnist_cnn

        def get_config(classes="10"):
            '''--config=finetune_config.py:CLASSES, the MNIST CNN on digits 0 to CLASSES-1.'''
            config = mnist_cnn()
            config.dataset = ml_collections.ConfigDict(dict(
                name="mnist_classes", data_dir="", classes=int(classes)))
            config.model.num_classes = int(classes)
            config.batch_size, config.eval_batch_size = 32, 250
            config.eval_every_epochs, config.plots = 0, False
            config.log_every_steps = 4
            return config
    """,
}
LOADED = ["model_state/batch_stats/BatchNorm_0/mean", "model_state/batch_stats/BatchNorm_0/var",
          "model_state/batch_stats/BatchNorm_1/mean", "model_state/batch_stats/BatchNorm_1/var",
          "params/BatchNorm_0/bias", "params/BatchNorm_0/scale", "params/BatchNorm_1/bias",
          "params/BatchNorm_1/scale", "params/Conv_0/kernel", "params/Conv_1/kernel",
          "params/Dense_0/bias", "params/Dense_0/kernel"]
SKIPPED = [("params/Dense_1/bias", (10,), (5,)), ("params/Dense_1/kernel", (256, 10), (256, 5))]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    return user_code.write(tmp_path_factory.mktemp("user_code"), USER_FILES)


def train(user_folder, classes, mnist_dir, workdir, *args):
    return run_train(f"--config={user_folder / 'finetune_config.py'}:{classes}",
                     f"--config.dataset.data_dir={mnist_dir}", f"--workdir={workdir}", *args,
                     env={"PYTHONPATH": str(user_folder)})


@pytest.fixture(scope="module")
def source(user_folder, tmp_path_factory):
    """A trained 10-class MNIST CNN run."""
    workdir = tmp_path_factory.mktemp("source")
    result = train(user_folder, 10, MNIST_DIR, workdir, f"--config.num_steps={SOURCE_STEPS}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def saved_state(workdir, step):
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def leaves(tree):
    return {name: np.asarray(leaf) for name, leaf in zip(
        shapes_by_name(tree), jax.tree.leaves(tree))}


def test_fine_tuning_a_new_head_with_frozen_convolutions(user_folder, source, mnist_dir, tmp_path):
    before = files(source)
    result = train(user_folder, 5, mnist_dir, tmp_path, f"--config.init_from={source}",
                   "--config.optimizer.frozen=params/Conv_.*",
                   f"--config.num_steps={FINE_TUNE_STEPS}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert files(source) == before  # the source run is only read
    assert re.search(r"Frozen by config.optimizer.frozen='params/Conv_\.\*': 2 of \d+ arrays, "
                     r"[\d,]+ of [\d,]+ parameters: params/Conv_0/kernel, params/Conv_1/kernel\.",
                     result.stderr)
    report = result.stderr[result.stderr.index("Fine-tuning from"):]
    assert report.startswith(f"Fine-tuning from step {SOURCE_STEPS} of "
                             f"{source / 'checkpoints' / str(SOURCE_STEPS)}: loaded 12 arrays, "
                             f"skipped 2, missing 0.")
    assert f"  loaded: {', '.join(LOADED)}\n" in report
    assert ("  skipped, another shape (kept as initialised): params/Dense_1/bias (10,) in the "
            "checkpoint, (5,) here; params/Dense_1/kernel (256, 10) in the checkpoint, (256, 5) "
            "here\n") in report

    old, new = saved_state(source, SOURCE_STEPS), saved_state(tmp_path, FINE_TUNE_STEPS)
    old_arrays, new_arrays = leaves(old["params"]), leaves(new["params"])
    assert new_arrays["Dense_1/kernel"].shape == (256, 5)
    for name in ("Conv_0/kernel", "Conv_1/kernel"):  # frozen: bitwise the source's
        assert new_arrays[name].tobytes() == old_arrays[name].tobytes(), name
    for name in ("Dense_0/kernel", "BatchNorm_0/scale"):  # loaded, then trained
        assert not np.array_equal(new_arrays[name], old_arrays[name]), name
    assert int(new["step"]) == FINE_TUNE_STEPS  # steps counted from 0, not the source's


def test_loaded_arrays_are_the_sources_at_step_zero(user_folder, source, mnist_dir, monkeypatch,
                                                    tmp_path):
    monkeypatch.syspath_prepend(str(user_folder))
    import finetune_config  # pylint: disable=import-outside-toplevel,import-error
    config = finetune_config.get_config("5")
    config.dataset.data_dir, config.init_from = mnist_dir, str(source)
    config.ema_decay = 0.99
    setup = build(config)
    plan = setup.init_from
    assert list(plan.loaded) == LOADED and list(plan.skipped) == SKIPPED
    assert plan.missing == plan.unmatched == plan.unused == ()
    state = finetune.load(plan, setup.state)

    old = saved_state(source, SOURCE_STEPS)
    saved = leaves({"params": old["params"], "model_state": old["model_state"]})
    loaded = leaves({"params": state.params, "model_state": state.model_state})
    fresh = leaves({"params": setup.state.params, "model_state": setup.state.model_state})
    for name in LOADED:
        assert loaded[name].tobytes() == saved[name].tobytes(), name
        assert state_sharding(state, name) == setup.parallel.replicated
    for name, _, _ in SKIPPED:  # the new head as initialised
        assert loaded[name].tobytes() == fresh[name].tobytes(), name
    assert int(state.step) == 0
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(setup.state.opt_state)):
        assert np.array_equal(a, b)  # a fresh optimizer
    for name, average in leaves(state.ema_params).items():  # the moving average starts there
        assert average.tobytes() == loaded["params/" + name].tobytes(), name

    # A copy of the checkpoint whose bytes no longer match the checksums saved with them.
    damaged = tmp_path / str(SOURCE_STEPS)
    shutil.copytree(source / "checkpoints" / str(SOURCE_STEPS), damaged)
    sums = damaged / "checksums" / "metadata"
    sums.write_text(json.dumps({**json.loads(sums.read_text()), "params/Conv_1/kernel": 1}))
    with pytest.raises(ConfigError, match=f"the checkpoint {damaged} is damaged: "
                                          f"params/Conv_1/kernel does not match"):
        finetune.load(dataclasses.replace(plan, folder=str(damaged)), setup.state)

    # A step's folder given directly, and a regex choosing the convolutions only.
    config.init_from = str(source / "checkpoints" / str(SOURCE_STEPS))
    config.init_from_regex = "params/Conv_.*"
    plan = finetune.plan(config, setup.state)
    assert plan.loaded == ("params/Conv_0/kernel", "params/Conv_1/kernel") and not plan.skipped
    assert len(plan.unmatched) == len(LOADED) + len(SKIPPED) - 2


def state_sharding(state, name):
    part, rest = name.split("/", 1)
    leaf = getattr(state, part)
    for key in rest.split("/"):
        leaf = leaf[key]
    return leaf.sharding


BAD = [
    # (overrides, the message); {source}: the trained run, {empty}: a folder without checkpoints
    ({"init_from": "{source}/nope"}, "config.init_from={source}/nope does not exist."),
    ({"init_from": "{empty}"}, "config.init_from={empty} is not a run's workdir or a checkpoint "
                               "folder"),
    ({"init_from": "{empty_run}"}, "config.init_from={empty_run} holds no checkpoint"),
    # the XOR MLP's Dense_0 and Dense_1 are in the CNN's checkpoint, of other shapes
    ({"init_from": "{source}"}, "config.init_from: no array config.init_from_regex='.*' matches is "
                                f"in the checkpoint {{source}}/checkpoints/{SOURCE_STEPS} with the "
                                "model's shape (params/Dense_0/bias is (256,) there and (16,) here;"),
    ({"init_from": "{source}", "init_from_regex": "params/Conv_.*"},
     "config.init_from_regex='params/Conv_.*' matches no array of the model (the whole path must "
     "match); its arrays are params/Dense_0/bias, params/Dense_0/kernel, params/Dense_1/bias, "
     "params/Dense_1/kernel."),
    ({"optimizer.frozen": "Dense_0"}, "config.optimizer.frozen='Dense_0' matches no parameter (the "
                                      "whole path must match); the parameters are "
                                      "params/Dense_0/bias, params/Dense_0/kernel,"),
    ({"optimizer.frozen": "params/.*"}, "config.optimizer.frozen='params/.*' matches every "
                                        "parameter, so nothing would train."),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[
    "missing", "not_a_run", "no_checkpoint", "no_array_fits", "regex_matches_nothing",
    "frozen_matches_nothing", "frozen_matches_everything"])
def test_bad_values_give_one_line_and_write_nothing(overrides, message, source, tmp_path):
    """Through api.fit in this process: the command line says the same line (test_cli.py)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "kept.txt").write_text("kept")
    names = dict(source=source, empty=tmp_path / "empty", empty_run=tmp_path / "empty_run")
    before = files(tmp_path), files(source)
    with pytest.raises(ConfigError) as raised:
        api.fit(XOR.split("=")[1], tmp_path / "run",
                **{field: value.format(**names) for field, value in overrides.items()})
    assert str(raised.value).startswith(message.format(**names)), str(raised.value)
    assert "\n" not in str(raised.value) and (files(tmp_path), files(source)) == before


def test_plan_errors_in_process(source, tmp_path):
    """No fine-tuning without init_from; a checkpoint that cannot be read is one line too."""
    state = type("S", (), {})()
    config = type("C", (), dict(init_from="", init_from_regex=".*"))()
    assert finetune.plan(config, state) is None
    (tmp_path / "7" / "state").mkdir(parents=True)
    config.init_from = str(tmp_path / "7")
    with pytest.raises(ConfigError, match=r"the checkpoint .*/7 cannot be read"):
        finetune.plan(config, state)
