import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

# In-process tests use libraries that read absl flags (Grain) without a command line to parse.
flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_dir():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST is expected at {MNIST_DIR} (see its README)")
    return str(MNIST_DIR)


def run_train(*args, env=None, timeout=300):
    """Runs scripts/train.py as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def files(folder):
    """Every file under `folder` with its bytes, to show that nothing was touched."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
