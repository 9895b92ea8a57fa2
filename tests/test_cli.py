"""Bad input through scripts/train.py, as a user gives it: one clear message, exit 2, no traceback,
and a workdir left as it was."""
import gzip
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, files, run_train
from datasets import DataError
from test_datasets import write_idx
from trainer import api
from trainer.errors import ConfigError

XOR = "--config=configs/xor_mlp.py"
MNIST = "--config=configs/mnist_cnn.py"
MNIST_MLP = "--config=configs/mnist_mlp.py"
LM = "--config=configs/shakespeare_lm.py"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Broken config files and data folders, and a workdir holding a finished run's checkpoints."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "syntax.py").write_text("def get_config(:\n    pass\n")
    (root / "no_get_config.py").write_text("x = 1\n")
    (root / "raises.py").write_text("def get_config():\n    return undefined_name\n")
    (root / "a_file").write_text("precious")
    for damage in ("truncated", "wrong_magic", "missing"):
        folder = root / damage
        folder.mkdir()
        for split, n in (("train", 20), ("t10k", 10)):
            write_idx(folder / f"{split}-images-idx3-ubyte.gz", 2051, np.zeros((n, 28, 28)))
            write_idx(folder / f"{split}-labels-idx1-ubyte.gz", 2049, np.zeros((n,)))
    labels = root / "truncated" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-5]))
    write_idx(root / "wrong_magic" / "t10k-images-idx3-ubyte.gz", 2049, np.zeros((10, 28, 28)))
    (root / "missing" / "t10k-labels-idx1-ubyte.gz").unlink()
    digits = root / "digits"  # 20 training images, labels 0 to 9
    digits.mkdir()
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(digits / f"{split}-images-idx3-ubyte.gz", 2051, np.zeros((n, 28, 28)))
        write_idx(digits / f"{split}-labels-idx1-ubyte.gz", 2049, np.arange(n) % 10)
    (root / "interrupted_tfds" / "mnist" / "3.0.1").mkdir(parents=True)  # a download cut short
    (root / "empty_tfds").mkdir()
    for source in ("plays", "sonnets"):  # text sources of a mixture
        (root / source).mkdir()
        (root / source / "a.txt").write_text(f"Some {source}, a few words of them.\n")
    (root / "mixture.py").write_text(
        "from configs.shakespeare_lm import get_config as language_model\n\n\n"
        "def get_config():\n    config = language_model()\n    config.dataset.path = None\n"
        f"    config.dataset.mixture = dict(plays=dict(path='{root}/plays', weight=0.0))\n"
        "    return config\n")
    workdir = root / "run"
    assert run_train(XOR, f"--workdir={workdir}", "--config.num_epochs=10").returncode == 0
    return root


BAD_INPUTS = [
    # the config file
    (["--config=configs/nope.py"], "the config file could not be read"),
    (["--config=configs"], "the config file could not be read"),
    (["--config={root}/syntax.py"], "has a syntax error on line 1"),
    (["--config={root}/no_get_config.py"], "defines no get_config()"),
    (["--config={root}/raises.py"], "NameError: name 'undefined_name' is not defined"),
    (["--config=configs/mnist_cnn.py:something"], "configs/mnist_cnn.py takes no argument"),
    (["--config.batch_size=4"], "give the config file first, --config=FILE"),
    (["--workdir=runs/x"], "--config=FILE is required"),
    ([XOR, "stray"], "unexpected arguments ['stray']"),
    # unknown fields and wrong types, as the flags parse them
    ([XOR, "--config.optimizer.nam=sgd"], "--config.optimizer.nam: the config has no such field"),
    ([XOR, "--config.batch_sise=4"], "--config.batch_sise: the config has no such field"),
    ([XOR, "--config.model.depth=3"], "--config.model.depth: the config has no such field"),
    ([XOR, "--config.optimizer.momentm=None"], "--config.optimizer.momentm: the config has no such "
                                               "field (did you mean 'momentum'?)"),
    # the flag with the typo, not the first one
    ([XOR, "--config.seed=1", "--config.optimzer.learning_rate=0.1"],
     "--config.optimzer.learning_rate: the config has no such field (did you mean 'optimizer'?)"),
    ([XOR, "--config.batch_size=four"], "--config.batch_size=four"),
    ([XOR, "--config.resume=maybe"], "--config.resume=maybe"),
    ([XOR, "--config.model.features=wide"], "features=('wide',); use a sequence of positive layer sizes"),
    # a value, a part, data, as every check below says them in Python: the same line, exit 2
    ([XOR, "--config.batch_size=0"], "config.batch_size=0 is invalid: it must be a positive integer"),
    ([XOR, "--config.model.name=gpt9"], "config.model.name='gpt9' is not a model"),
    ([MNIST, "--config.dataset.data_dir={root}/truncated"], "train-labels-idx1-ubyte.gz is truncated"),
    # a fix as a flag here, as a keyword of api.fit in Python (BAD_VALUES below)
    ([XOR, "--config.task=classification"], "use e.g. --config.task=regression."),
    ([MNIST_MLP, "--config.dataset.data_dir={root}/digits", "--config.batch_size=16",
      "--config.model.features=(512, 512, 5)"], 'pass --config.model.features="(512, 512, 10)".'),
    ([XOR, "--config.remat=every other"], "config.remat='every other' is invalid: it must be one "
                                           "of ['none', 'full', 'dots', 'offload'], or the names"),
    # a mixture of text sources, as a config file gives it
    (["--config={root}/mixture.py"], "config.dataset.mixture.plays.weight=0.0: give each source "
                                     "a weight > 0"),
    # several hosts, asked for where there are none
    ([XOR, "--coordinator_address=127.0.0.1:1234"], "--coordinator_address needs --num_processes"),
    ([XOR, "--num_processes=2", "--process_id=0"], "--num_processes and --process_id need "
                                                   "--coordinator_address"),
    ([XOR, "--multihost"], "--multihost: JAX found no cluster in this machine's environment"),
    # the workdir
    ([XOR, "--workdir={root}/a_file"], "is a file, not a folder"),
    ([XOR, "--workdir={root}/a_file/run"], "cannot create --workdir"),
]

# Checked as every run checks its config, from the command line or from Python: here through
# api.fit, in this process (a ConfigError or DataError of one line; nothing written).
BAD_VALUES = [
    (XOR, {"model.features": (16, 0)}, "use a sequence of positive layer sizes"),
    # sizes and ranges
    (XOR, {"batch_size": -4}, "config.batch_size=-4 is invalid"),
    (XOR, {"eval_batch_size": 0}, "config.eval_batch_size=0 is invalid"),
    (XOR, {"num_epochs": -3}, "config.num_epochs=-3 is invalid"),
    (XOR, {"num_epochs": 0}, "config.num_epochs and config.num_steps are both 0"),
    (XOR, {"log_every_steps": 0}, "config.log_every_steps=0 is invalid"),
    (XOR, {"checkpoint_every_steps": -5}, "config.checkpoint_every_steps=-5 is invalid"),
    (XOR, {"keep_checkpoints": 0}, "config.keep_checkpoints=0 is invalid"),
    (XOR, {"optimizer.learning_rate": -0.1}, "config.optimizer.learning_rate=-0.1"),
    (XOR, {"optimizer.momentum": 1.5}, "config.optimizer.momentum=1.5"),
    (XOR, {"optimizer.weight_decay": -1.0}, "config.optimizer.weight_decay=-1.0"),
    (XOR, {"optimizer.decay_rate": 0.0}, "config.optimizer.decay_rate=0.0"),
    (XOR, {"batch_size": 8}, "config.batch_size=8 is larger than the training split"),
    # unknown names
    (XOR, {"model.activation": "swish"}, "activation='swish'"),
    (XOR, {"model.name": "cnn"}, "config.model.activation is not an argument of model 'cnn'"),
    (MNIST, {"dataset.name": "xor", "batch_size": 2, "validation.fraction": 0.5},
     "config.model ('cnn') cannot take the inputs of data set"),
    (XOR, {"optimizer.name": "adagrid"}, "config.optimizer.name='adagrid' is not an optimizer"),
    (XOR, {"optimizer.schedule": "linear"}, "config.optimizer.schedule='linear' is invalid"),
    (XOR, {"task": "ranking"}, "config.task='ranking' is not a task"),
    (XOR, {"parallelism": "gpu"}, "config.parallelism='gpu' is invalid"),
    (XOR, {"nonfinite": "ignore"}, "config.nonfinite='ignore' is invalid"),
    (XOR, {"profile_steps": (20, 10)}, "config.profile_steps=(20, 10) is invalid"),
    (XOR, {"profile_steps": (1000, 1010)}, "config.profile_steps=(1000, 1010) starts past the end "
                                           "of training (1000 steps)"),
    (XOR, {"dataset.name": "cifar"}, "config.dataset.name='cifar' is not a data set"),
    # what runs need past the first one
    (XOR, {"grad_accum_steps": 3}, "config.grad_accum_steps=3 does not divide the batch"),
    (XOR, {"grad_accum_steps": 0}, "config.grad_accum_steps=0 is invalid"),
    (XOR, {"ema_decay": 1.0}, "config.ema_decay=1.0 is invalid: it must be in (0, 1)"),
    (XOR, {"ema_decay": -0.5}, "config.ema_decay=-0.5 is invalid"),
    (XOR, {"best_metric": "eval/f1"}, "config.best_metric='eval/f1' is never logged: evaluation "
                                      "logs eval/loss, eval/accuracy."),
    (XOR, {"early_stopping.metric": "eval_ema/loss"},
     "config.early_stopping.metric='eval_ema/loss' is never logged"),
    (XOR, {"best_metric": "eval_ema/accuracy"},
     "eval_ema/... is the moving average of the parameters, which ema_decay=0.999 (say) keeps."),
    (XOR, {"early_stopping.patience": 0}, "config.early_stopping.patience=0 is invalid"),
    (XOR, {"best_mode": "up"}, "config.best_mode='up' is invalid"),
    (XOR, {"optimizer.frozen": "params/(Dense"}, "config.optimizer.frozen='params/(Dense' is "
                                                 "invalid"),
    # what the data set holds: images to augment, targets for the task, classes for the outputs
    (XOR, {"augment.crop_padding": 2},
     "config.augment.crop_padding=2 needs images, examples of shape (height, width, channels), and "
     "the inputs of data set 'xor' are float32 of shape (2,): leave crop_padding at 0 and flip "
     "False for it"),
    (XOR, {"augment.flip": True}, "config.augment.flip=True needs images"),
    (XOR, {"task": "classification"},
     "config.task='classification' cannot take the targets of data set 'xor' (float32, shape (1,) "
     "each; the model's outputs: shape (1,)): TypeError: Expected the input to have a dtype that "
     "is a subdtype of <class 'numpy.integer'>, got float32 instead. For float32 targets (values) "
     "use e.g. task='regression'."),  # Python's wording: api.fit is called
    (MNIST_MLP, {"dataset.data_dir": "{root}/digits", "batch_size": 16, "task": "regression"},
     "config.task='regression' cannot take the targets of data set 'mnist' (int32, shape () each; "
     "the model's outputs: shape (10,)): ValueError: Incompatible shapes for broadcasting"),
    (MNIST_MLP, {"dataset.data_dir": "{root}/digits", "batch_size": 16,
                 "model.features": (512, 512, 5)},
     "config.model gives 5 outputs but the data set's labels go up to 9 (10 classes): a classifier "
     "needs an output for each class; pass model=dict(features=(512, 512, 10))."),
    (MNIST, {"dataset.data_dir": "{root}/digits", "batch_size": 16, "model.num_classes": 8},
     "config.model gives 8 outputs but the data set's labels go up to 9 (10 classes): a classifier "
     "needs an output for each class; pass model=dict(num_classes=10)."),
    # remat for a model without the field, or naming an activation the model does not tag
    (MNIST, {"dataset.data_dir": "{root}/digits", "batch_size": 16, "remat": "full"},
     "config.remat='full' needs a model with a field `remat`, and CNN has none: add one "
     "(applied to its repeated blocks in a scan, docs/models.md), or use remat='none'."),
    (XOR, {"remat": "attention,full"}, "config.remat='attention,full' is invalid"),
    (LM, {"dataset": dict(path=str(REPO.parent / "shared" / "data" / "shakespeare")),
          "remat": "full", "model": dict(remat="dots")},
     "config.remat='full' and config.model.remat='dots': give remat once, as config.remat"),
    (LM, {"dataset": dict(path=str(REPO.parent / "shared" / "data" / "shakespeare")),
          "remat": "attention,logits"},
     "config.remat='attention,logits': the transformer tags no activation named 'logits' for "
     "remat to keep; its names are query, key, value, attention, mlp_hidden"),
    # data
    (MNIST, {"dataset.data_dir": "/no/such/folder"}, "is not a folder"),
    (MNIST, {"dataset.data_dir": "{root}/wrong_magic"}, "is not an IDX file"),
    (MNIST, {"dataset.data_dir": "{root}/missing"}, "t10k-labels-idx1-ubyte.gz (or"),
    # no data_dir, and no prepared TFDS copy: one message naming the three ways (and the folder)
    (MNIST, {"dataset.tfds_data_dir": "{root}/empty_tfds"},
     "mnist was not found: mnist is not prepared in {root}/empty_tfds/mnist/3.0.1. Give it one of "
     "three ways"),
    (MNIST, {"dataset.tfds_data_dir": "{root}/interrupted_tfds"},
     "{root}/interrupted_tfds/mnist/3.0.1 holds an incomplete copy"),
    # a mixture of text sources: a weight, a source that names no folder, a path beside it
    (LM, {"dataset": dict(path=None, mixture=dict(plays=dict(path="{root}/plays", weight=-1.0)))},
     "config.dataset.mixture.plays.weight=-1.0: give each source a weight > 0"),
    (LM, {"dataset": dict(path=None, mixture=dict(plays=dict(path="{root}/plays", weight=1.0),
                                                  sonnets=dict(weight=1.0)))},
     "config.dataset.mixture.sonnets has no path"),
    (LM, {"dataset": dict(path=None, mixture=dict(plays=dict(path="{root}/plays", weight=1.0),
                                                  poems=dict(path="{root}/poems", weight=1.0)))},
     "config.dataset.mixture.poems.path='{root}/poems' does not exist"),
    (LM, {"dataset": dict(path="{root}/plays", mixture=dict(
        sonnets=dict(path="{root}/sonnets", weight=1.0)))}, "has both a path and a mixture"),
    (LM, {"dataset": dict(path=None, mixture=dict(plays=dict(path="{root}/plays", weight=1.0,
                                                             split_at="(")))},
     "config.dataset.mixture.plays.split_at='(' is not a regular expression"),
    (LM, {"dataset": dict(path=None, mixture=dict(plays=dict(path="{root}/plays", weight=1.0),
                                                  sonnets=dict(path="{root}/sonnets", weight=1.0,
                                                               exclude="[")))},
     "config.dataset.mixture.sonnets.exclude='[' is not a regular expression"),
]


def formatted(value, root):
    """A value of BAD_VALUES with its strings' {root} filled in, in dicts too."""
    if isinstance(value, dict):
        return {key: formatted(each, root) for key, each in value.items()}
    return value.format(root=root) if isinstance(value, str) else value


@pytest.mark.parametrize("config, overrides, message", BAD_VALUES,
                         ids=[m[:40] for _, _, m in BAD_VALUES])
def test_bad_values_are_one_typed_error_and_touch_nothing(config, overrides, message, inputs):
    overrides = {field: formatted(value, inputs) for field, value in overrides.items()}
    before = files(inputs)
    with pytest.raises((ConfigError, DataError)) as raised:
        api.fit(config.split("=", 1)[1], inputs / "run", **overrides)
    assert message.format(root=inputs) in str(raised.value) and "\n" not in str(raised.value)
    assert files(inputs) == before  # checkpoints, config files and data byte-identical


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[a[-1] for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_clear_message_and_touches_nothing(args, message, inputs):
    args = [a.format(root=inputs) for a in args]
    if not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={inputs / 'run'}")
    before = files(inputs)
    result = run_train(*args)
    assert result.returncode == 2, result.stderr
    assert message.format(root=inputs) in result.stderr
    assert result.stderr.strip().splitlines() == [  # one line, nothing before it
        line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert files(inputs) == before  # checkpoints, config files and data byte-identical


def test_no_data_anywhere_on_a_fresh_machine_is_one_message(tmp_path):
    """The first thing a user who skips the README's data_dir meets: no data_dir, and HOME an
    empty folder (no TFDS folder at all)."""
    home = tmp_path / "home"
    home.mkdir()
    result = run_train("--config=configs/mnist_mlp.py", f"--workdir={tmp_path / 'run'}",
                       env={"HOME": str(home)})
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: mnist was not found") and "Give it one of three ways" in line
    assert str(home / "tensorflow_datasets") in line
    assert not (tmp_path / "run").exists()


def test_the_catalogue_is_long_enough():
    assert len(BAD_INPUTS) + len(BAD_VALUES) >= 60


def test_debug_shows_the_traceback(tmp_path):
    result = run_train(XOR, "--config.optimizer.name=adagrid", "--debug", f"--workdir={tmp_path}")
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_help_shows_every_flag_a_user_needs(script):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--config", "--workdir", "--[no]debug", "--coordinator_address", "--config.FIELD"):
        assert flag in result.stdout, flag
    assert ("show_config" in result.stdout) is (script == "train.py")


def test_show_config_prints_the_resolved_config():
    result = run_train(XOR, "--config.optimizer.learning_rate=0.5", "--show_config")
    assert result.returncode == 0
    assert "learning_rate: 0.5" in result.stdout and "name: xor" in result.stdout
    relative = run_train(MNIST, "--config.dataset.data_dir=../shared/data/mnist", "--show_config")
    assert f"data_dir: {REPO.parent / 'shared' / 'data' / 'mnist'}" in relative.stdout  # absolute
    invalid = run_train(XOR, "--config.batch_size=-5", "--show_config")
    assert invalid.returncode == 2 and not invalid.stdout
    assert invalid.stderr.strip().splitlines() == [
        "error: config.batch_size=-5 is invalid: it must be a positive integer. Fix the config "
        "file or pass --config.batch_size=VALUE."]


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
