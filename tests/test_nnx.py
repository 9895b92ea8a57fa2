"""Flax NNX models, written outside the checkout as the Flax NNX MNIST tutorial writes them, with
every guarantee a linen model has: trained on real MNIST, resumed bitwise after SIGKILL, on 8
devices as on 1, evaluated in evaluation mode, fine-tuned by NNX path with frozen parameters, and
used by evaluate.py, predict.py and plot.py; bad models refused in one line."""
import json
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import user_code
from conftest import MNIST_DIR, REPO, assert_logged_alike, history, logged, results, train
from test_finetune import USER_FILES as FINETUNE_FILES
from test_reliability import assert_same_state, finished_steps, saved_state
from trainer import sharding
from trainer.errors import ConfigError
from trainer.model import NnxModel, build as build_model

NNX_FILES = {
    "nnx_models.py": """
        from functools import partial
        from flax import nnx

        class CNN(nnx.Module):
            '''The Flax NNX MNIST tutorial's CNN: BatchNorm, Dropout given rngs when called, no
            train argument.'''
            def __init__(self, *, rngs: nnx.Rngs, features=(32, 64), hidden=256, num_classes=10):
                self.conv1 = nnx.Conv(1, features[0], kernel_size=(3, 3), rngs=rngs)
                self.batch_norm1 = nnx.BatchNorm(features[0], rngs=rngs)
                self.dropout1 = nnx.Dropout(rate=0.025)
                self.conv2 = nnx.Conv(features[0], features[1], kernel_size=(3, 3), rngs=rngs)
                self.batch_norm2 = nnx.BatchNorm(features[1], rngs=rngs)
                self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
                self.linear1 = nnx.Linear(7 * 7 * features[1], hidden, rngs=rngs)
                self.dropout2 = nnx.Dropout(rate=0.025)
                self.linear2 = nnx.Linear(hidden, num_classes, rngs=rngs)

            def __call__(self, x, rngs: nnx.Rngs | None = None):
                x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
                x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
                x = x.reshape(x.shape[0], -1)
                x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
                return self.linear2(x)

        class MLP(nnx.Module):
            '''Dropout that holds its own rngs; the layers in a list.'''
            def __init__(self, din, dout, *, hidden=64, rate=0.2, rngs: nnx.Rngs):
                self.layers = nnx.List([nnx.Linear(din, hidden, rngs=rngs),
                                        nnx.Linear(hidden, dout, rngs=rngs)])
                self.dropout = nnx.Dropout(rate, rngs=rngs)

            def __call__(self, x):
                x = nnx.relu(self.layers[0](x.reshape(x.shape[0], -1)))
                return self.layers[1](self.dropout(x))

        def mlp(din, dout, rngs):
            '''A function that takes rngs and returns a module.'''
            return MLP(din, dout, rngs=rngs)

        built = MLP(784, 10, rngs=nnx.Rngs(0))

        class Annotated(nnx.Module):
            '''Its hidden kernel annotated with a mesh axis.'''
            def __init__(self, *, rngs: nnx.Rngs):
                init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
                self.hidden = nnx.Linear(784, 64, kernel_init=init, rngs=rngs)
                self.out = nnx.Linear(64, 10, rngs=rngs)

            def __call__(self, x):
                return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))
    """,
    "nnx_config.py": """
        import ml_collections
        from configs.mnist_cnn import get_config as mnist_cnn

        MODELS = {
            "cnn": dict(name="nnx_models:CNN", features=(8, 16), hidden=64),
            "five_classes": dict(name="nnx_models:CNN", features=(8, 16), hidden=64,
                                 num_classes=5),
            "mlp": dict(name="nnx_models:MLP", din=784, dout=10),
            "factory": dict(name="nnx_models:mlp", din=784, dout=10),
            "instance": dict(name="nnx_models:built"),
            "missing_field": dict(name="nnx_models:MLP", din=784),
            "wrong_field": dict(name="nnx_models:MLP", din=784, dout=10, widht=32),
            "wrong_shape": dict(name="nnx_models:MLP", din=100, dout=10),
        }

        def get_config(model="cnn"):
            '''--config=nnx_config.py:MODEL, an NNX model on MNIST, briefly.'''
            config = mnist_cnn()
            config.model = ml_collections.ConfigDict(MODELS[model])
            config.batch_size, config.eval_batch_size = 32, 1000
            config.num_steps, config.log_every_steps = 120, 20
            config.checkpoint_every_steps = 50  # off the log boundary
            config.eval_every_epochs, config.eval_every_steps = 0, 60
            if model == "five_classes":  # digits 0 to 4
                config.dataset = ml_collections.ConfigDict(dict(
                    name="mnist_classes", data_dir="", classes=5))
            return config
    """,
    "mnist_classes.py": FINETUNE_FILES["mnist_classes.py"],
}


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    return user_code.write(tmp_path_factory.mktemp("nnx_user_code"), NNX_FILES)


def command(user_folder, workdir, model="cnn", *args):
    return [sys.executable, str(REPO / "scripts" / "train.py"),
            f"--config={user_folder / 'nnx_config.py'}:{model}",
            f"--config.dataset.data_dir={MNIST_DIR}", f"--workdir={workdir}", *args]


def run(arguments, user_folder, **kwargs):
    return subprocess.run(arguments, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={"PYTHONPATH": str(user_folder), "PATH": "/usr/bin:/bin"}, **kwargs)


@pytest.fixture(scope="module")
def cnn_run(user_folder, tmp_path_factory):
    """The tutorial's CNN, 120 steps on MNIST, never stopped."""
    workdir = tmp_path_factory.mktemp("nnx_cnn")
    result = run(command(user_folder, workdir), user_folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_the_tutorials_cnn_trains_on_mnist_and_is_checkpointed_like_linen(cnn_run):
    assert json.loads((cnn_run / "results.json").read_text())["test/accuracy"] > 0.8  # chance: 0.1
    state = saved_state(cnn_run, 120)
    # NNX's attribute paths; BatchNorm statistics as linen's collection; no RNG key or count.
    assert set(state["params"]) == {"conv1", "batch_norm1", "conv2", "batch_norm2", "linear1",
                                    "linear2"}
    assert set(state["model_state"]) == {"batch_stats"}
    assert set(state["model_state"]["batch_stats"]["batch_norm1"]) == {"mean", "var"}
    assert state["params"]["conv1"]["kernel"].shape == (3, 3, 1, 8)


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_the_uninterrupted_run(
        user_folder, cnn_run, tmp_path):
    killed = subprocess.Popen(command(user_folder, tmp_path), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={"PYTHONPATH": str(user_folder)})
    deadline = time.time() + 180
    while killed.poll() is None and not finished_steps(tmp_path) and time.time() < deadline:
        time.sleep(0.0005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL and finished_steps(tmp_path) == [50]
    resumed = run(command(user_folder, tmp_path), user_folder)
    assert "Resuming from the checkpoint at step 50" in resumed.stderr, resumed.stderr[-3000:]
    assert_same_state(cnn_run, tmp_path, 120)
    assert history(tmp_path) == history(cnn_run)


def test_evaluate_predict_and_plot_use_an_nnx_run(user_folder, cnn_run):
    def script(name, *args):
        result = run([sys.executable, str(REPO / "scripts" / name), f"--workdir={cnn_run}", *args],
                     user_folder)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    assert json.loads(script("evaluate.py")) == results(cnn_run)
    lines = script("predict.py", "--indices=0,1,2").splitlines()
    assert lines[0] == "# nnx_models:CNN at step 120, task classification"
    assert [re.search(r"target (\d)", line)[1] for line in lines[1:]] == ["7", "2", "1"]
    assert set(script("plot.py").split()) == {str(cnn_run / name) for name in (
        "curves.png", "confusion_matrix.png", "misclassified.png")}


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_evaluation_mode_is_nnx_own_evaluation_and_training_mode_draws_dropout(name, user_folder,
                                                                            monkeypatch):
    """Both dropout styles (rngs given when called; rngs held by the layer), and BatchNorm: the
    trainer's evaluation is what NNX's model.eval() computes (a model wrapped by
    nnx.bridge.to_linen and called as linen evaluates with dropout on and batch statistics),
    and training mode differs from it, with masks drawn from the key given."""
    monkeypatch.syspath_prepend(str(user_folder))
    import nnx_config  # pylint: disable=import-outside-toplevel,import-error
    import nnx_models  # pylint: disable=import-outside-toplevel,import-error
    model = build_model(nnx_config.get_config(name).model)
    assert isinstance(model, NnxModel)
    images = jax.random.uniform(jax.random.PRNGKey(0), (16, 28, 28, 1))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    params, state = jax.jit(model.init)(keys[0], keys[1], images)
    apply = jax.jit(model.apply, static_argnums=3)
    evaluated, same_state = apply(params, state, images, False, keys[2])
    assert jax.tree.all(jax.tree.map(np.array_equal, same_state, state))
    rngs = nnx.Rngs(params=keys[0], dropout=keys[1])  # as the trainer builds it: the same arrays
    own = (nnx_models.CNN(rngs=rngs, features=(8, 16), hidden=64) if name == "cnn"
           else nnx_models.MLP(784, 10, rngs=rngs))
    own.eval()
    np.testing.assert_allclose(evaluated, own(images), rtol=1e-6, atol=1e-6)
    trained, new_state = apply(params, state, images, True, keys[2])
    again, _ = apply(params, state, images, True, keys[2])
    other_key, _ = apply(params, state, images, True, jax.random.PRNGKey(9))
    assert np.array_equal(trained, again)  # the masks are the key's
    assert not np.allclose(trained, other_key) and not np.allclose(trained, evaluated)
    if "batch_stats" in state:  # the running statistics moved in training only
        assert not jax.tree.all(jax.tree.map(np.array_equal, new_state, state))


def test_a_model_function_and_the_modes_other_paths(user_folder, tmp_path):
    """A function that takes rngs; the fused path with gradient accumulation, an EMA, the best
    checkpoint and early stopping."""
    result = run(command(user_folder, tmp_path, "factory", "--config.steps=fused",
                         "--config.grad_accum_steps=2", "--config.ema_decay=0.9",
                         "--config.best_metric=val_ema/accuracy", "--config.num_steps=120",
                         "--config.early_stopping.metric=val/loss"), user_folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Steps run fused" in result.stderr
    final = json.loads((tmp_path / "results.json").read_text())
    assert final["test_ema/accuracy"] > 0.8 and final["test/accuracy"] > 0.8
    assert re.search(r"\| layers/0/kernel +\| \(784, 64\)", result.stderr)  # the parameter table


@pytest.mark.parametrize("model, message", [
    ("missing_field", "error: model 'nnx_models:MLP' needs config.model.dout; add it to the "
                      "config."),
    ("wrong_field", "error: config.model.widht is not an argument of model 'nnx_models:MLP'; its "
                    "arguments are din, dout, hidden, rate (and rngs, which the trainer gives)."),
    ("instance", "error: config.model.name='nnx_models:built' is an nnx.Module already built, "
                 "whose seed and placement are not the run's: name its class"),
    ("wrong_shape", "error: config.model ('nnx_models:MLP') cannot take the inputs of data set "
                    "'mnist', of shape (28, 28, 1)"),
])
def test_a_bad_nnx_model_is_one_line_and_writes_nothing(model, message, user_folder, tmp_path):
    result = run(command(user_folder, tmp_path / "run", model), user_folder)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(message), line
    assert not (tmp_path / "run").exists()


NNX_CNN = ["--config=configs/mnist_cnn_nnx.py", "--config.model.conv_features=(8, 16)",
           "--config.log_every_steps=1", "--config.checkpoint_every_steps=10",
           "--config.num_steps=20", "--config.plots=False"]


@pytest.fixture(scope="module")
def nnx_one_device(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nnx_one_device")
    train(workdir, MNIST_DIR, 1, "--config.steps=per_step", base=NNX_CNN)
    return logged(workdir)


@pytest.mark.parametrize("args, relative", [
    (["--config.parallelism=jit", "--config.steps=per_step"], 1e-5),
    # pmap: BatchNorm averages over the devices (the trainer sets its axis_name); the reduction
    # order differs, as for linen (tests/test_parallel.py)
    (["--config.parallelism=pmap", "--config.steps=per_step"], 3e-3),
    (["--config.mesh.fsdp=4", "--config.fsdp_min_size=1000", "--config.steps=fused"], 1e-5),
], ids=["jit", "pmap", "fsdp"])
def test_eight_devices_learn_what_one_learns(args, relative, nnx_one_device, tmp_path):
    train(tmp_path, MNIST_DIR, 8, *args, base=NNX_CNN)
    assert_logged_alike(nnx_one_device, logged(tmp_path), relative)


def test_fine_tuning_an_nnx_run_into_a_new_head_by_nnx_path(user_folder, cnn_run, tmp_path):
    result = run(command(user_folder, tmp_path, "five_classes", f"--config.init_from={cnn_run}",
                         "--config.optimizer.frozen=params/conv.*", "--config.num_steps=10",
                         "--config.plots=False"), user_folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped, another shape (kept as initialised): params/linear2/bias (10,) in the " \
           "checkpoint, (5,) here; params/linear2/kernel (64, 10) in the checkpoint, (64, 5) " \
           "here" in result.stderr
    assert "Frozen by config.optimizer.frozen='params/conv.*': 4 of 12 arrays" in result.stderr
    old, new = saved_state(cnn_run, 120), saved_state(tmp_path, 10)
    for layer in ("conv1", "conv2"):
        for name in ("kernel", "bias"):
            assert np.array_equal(new["params"][layer][name], old["params"][layer][name])
    assert not np.array_equal(new["params"]["linear1"]["kernel"], old["params"]["linear1"]["kernel"])


def test_the_models_own_sharding_annotations_are_honoured_where_no_rule_matches(user_folder,
                                                                              monkeypatch):
    monkeypatch.syspath_prepend(str(user_folder))
    model = build_model(ml_collections.ConfigDict(dict(name="nnx_models:Annotated")))
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1})  # specs kept on size-1 axes
    abstract = jax.eval_shape(lambda k: model.init(k, k, jnp.zeros((1, 784)))[0],
                              jax.random.PRNGKey(0))
    annotations = model.annotations(None)
    assert annotations == {"params/hidden/kernel": jax.sharding.PartitionSpec(None, "model")}
    specs = sharding.params_specs(abstract, mesh, (), 0, annotations)
    assert specs["hidden"]["kernel"] == jax.sharding.PartitionSpec(None, "model")
    ruled = sharding.params_specs(abstract, mesh, (("params/hidden/kernel", ("fsdp", None)),), 0,
                                  annotations)
    assert ruled["hidden"]["kernel"] == jax.sharding.PartitionSpec("fsdp", None)  # a rule first
    with pytest.raises(ConfigError, match="the model's sharding annotation of params/hidden/kernel"
                                          ": axis 'model' is not in config.mesh"):
        sharding.params_specs(abstract, sharding.make_mesh({"data": 1}), (), 0, annotations)
