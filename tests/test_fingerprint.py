"""trainer/fingerprint.py on real files in real processes, as a resumed run meets them: a model's
file changed in one place (an activation, the order of two layers, a default, a helper function
or a constant of its module, a base class) has another fingerprint; the same file in a new process
with another PYTHONHASHSEED has the same one. One process per file computes every fingerprint."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

MODEL = '''
import dataclasses

import flax.linen as nn
from flax import nnx

HIDDEN = 16
MODES = {"train": 1, "eval": 0}


def block(x):
    return nn.relu(x) * 2


class NnxActivation(nnx.Module):
    def __init__(self, *, rngs):
        self.linear = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.linear(x))


class NnxOrder(nnx.Module):
    def __init__(self, *, rngs):
        self.a = nnx.Linear(4, 8, rngs=rngs)
        self.b = nnx.Linear(4, 8, rngs=rngs)

    def __call__(self, x):
        return self.b(self.a(x))


class NnxWidth(nnx.Module):
    def __init__(self, *, rngs, hidden=16):
        self.linear = nnx.Linear(4, hidden, rngs=rngs)

    def __call__(self, x):
        return self.linear(x)


class NnxBase(nnx.Module):
    def __call__(self, x):
        return nnx.gelu(self.linear(x))


class NnxChild(NnxBase):
    def __init__(self, *, rngs):
        super().__init__()
        self.linear = nnx.Linear(4, 4, rngs=rngs)


class LinenRate(nn.Module):
    rate: float = 0.1

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dropout(self.rate)(x, deterministic=not train)


class LinenFactory(nn.Module):
    features: tuple = dataclasses.field(default_factory=lambda: (16, 10))

    @nn.compact
    def __call__(self, x):
        for width in self.features:
            x = nn.Dense(width)(x)
        return x


class LinenHelper(nn.Module):
    @nn.compact
    def __call__(self, x):
        return block(nn.Dense(4)(x))


class LinenConstant(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(HIDDEN)(x)


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.swish(nn.Dense(4)(x))


class LinenTower(nn.Module):
    depth: int = 2

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = LinenBlock()(x)
        return x


class LinenUntouched(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(8)(x)


class LinenMode(nn.Module):
    @nn.compact
    def __call__(self, x, mode="train"):
        return x if mode in {"train", "eval", "predict", "test"} else -x


class Recursive(nnx.Module):
    """Names itself, through its module's globals and through super()'s closure."""
    scales = (1.0, 2.0)
    table = {"b": 2, "a": 1}

    def __init__(self, *, rngs, depth=1):
        super().__init__()
        self.inner = Recursive(rngs=rngs, depth=depth - 1) if depth else None
        self.train = MODES["train"]
'''

# Each edit of MODEL, one place each: the classes whose fingerprint it changes.
EDITS = {
    "nnx.relu -> nnx.tanh in __call__": (
        ("return nnx.relu(self.linear(x))", "return nnx.tanh(self.linear(x))"), "NnxActivation"),
    "self.b(self.a(x)) -> self.a(self.b(x))": (
        ("return self.b(self.a(x))", "return self.a(self.b(x))"), "NnxOrder"),
    "NNX keyword-only default hidden=16 -> 64": (
        ("rngs, hidden=16)", "rngs, hidden=64)"), "NnxWidth"),
    "NNX base class's __call__": (
        ("nnx.gelu(self.linear(x))", "nnx.silu(self.linear(x))"), "NnxChild"),
    "linen field default rate 0.1 -> 0.5": (
        ("rate: float = 0.1", "rate: float = 0.5"), "LinenRate"),
    "linen default_factory": (("lambda: (16, 10)", "lambda: (32, 10)"), "LinenFactory"),
    "module helper function the model calls": (
        ("return nn.relu(x) * 2", "return nn.relu(x) * 3"), "LinenHelper"),
    "module constant HIDDEN = 16 -> 64": (("HIDDEN = 16", "HIDDEN = 64"), "LinenConstant"),
    "a class of the module the model calls": (("nn.swish(", "nn.gelu("), "LinenTower"),
    "a string of a set the code tests": (
        ('"predict", "test"}', '"predict", "tests"}'), "LinenMode"),
    "module dict the code reads": (('"eval": 0}', '"eval": 1}'), "Recursive"),
}

COMPUTE = """
import json, sys
import optax
sys.path[:0] = sys.argv[1:]
import model
from trainer.fingerprint import fingerprint
objects = {name: value for name, value in vars(model).items()
           if isinstance(value, type) and value.__module__ == "model"}
objects["optax.adam"] = optax.adam(1e-3)
print(json.dumps({name: fingerprint(value) for name, value in objects.items()}))
"""


@pytest.fixture(scope="module")
def fingerprints(tmp_path_factory):
    """{'before' and 'again' (the same file, other hash seeds), 'after': {class: fingerprint}}:
    three processes side by side, each with its own file `model.py` and PYTHONHASHSEED."""
    after = MODEL
    for (old, new), _ in EDITS.values():
        assert after.count(old) == 1, old
        after = after.replace(old, new)
    runs = {}
    for seed, (run, source) in enumerate({"before": MODEL, "again": MODEL, "after": after}.items()):
        folder = tmp_path_factory.mktemp(run)
        (folder / "model.py").write_text(source)
        runs[run] = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-c", COMPUTE, str(folder), str(REPO)], cwd=folder, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONHASHSEED": str(seed + 1), "JAX_PLATFORMS": "cpu"})
    results = {}
    for run, process in runs.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        results[run] = json.loads(stdout)
    return results


def test_the_same_file_in_a_new_process_has_the_same_fingerprints(fingerprints):
    """A notebook restarted tomorrow resumes: no id, set order or hash seed in the fingerprint."""
    assert len(fingerprints["before"]) == 15
    assert fingerprints["again"] == fingerprints["before"]


@pytest.mark.parametrize("edit", EDITS)
def test_a_changed_model_has_another_fingerprint(fingerprints, edit):
    changed = EDITS[edit][1]
    assert fingerprints["after"][changed] != fingerprints["before"][changed], edit


def test_an_edit_changes_only_the_classes_that_read_it(fingerprints):
    """Not the whole module: a class that reads none of the edits, and a library's object, keep
    their fingerprint."""
    changed = {name for _, name in EDITS.values()} | {"LinenBlock", "NnxBase"}
    for name in set(fingerprints["before"]) - changed:
        assert fingerprints["after"][name] == fingerprints["before"][name], name
