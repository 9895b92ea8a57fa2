import gzip

import ml_collections
import numpy as np
import pytest

import datasets
from datasets import mnist
from trainer.errors import ConfigError
from trainer.setup import build_dataset

# Published per-class counts of the MNIST splits.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def mnist_config(**fields):
    return ml_collections.ConfigDict({"name": "mnist", "data_dir": "", "tfds_data_dir": "", **fields})


def write_idx(path, magic, array):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    """A folder of valid IDX files with 20 train and 10 test images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", 2051,
                  rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", 2049, rng.integers(0, 10, (n,)))
    return tmp_path


def test_real_mnist_from_idx_folder(mnist_dir):
    data = build_dataset(mnist_config(data_dir=mnist_dir))
    assert data.train["inputs"].shape == (60000, 28, 28, 1)  # NHWC
    assert data.train["inputs"].dtype == np.uint8  # scaled on the device, not here
    assert data.test["inputs"].shape == (10000, 28, 28, 1)
    assert np.bincount(data.train["targets"]).tolist() == TRAIN_COUNTS
    assert np.bincount(data.test["targets"]).tolist() == TEST_COUNTS
    assert data.train["inputs"].mean() == pytest.approx(33.318, abs=1e-3)
    scaled = np.asarray(data.prepare_inputs(data.train["inputs"][:100]))
    assert scaled.dtype == np.float32 and 0.0 <= scaled.min() and scaled.max() <= 1.0


def test_tiny_idx_folder_reads(tiny_mnist):
    data = build_dataset(mnist_config(data_dir=str(tiny_mnist)))
    assert data.num_train == 20 and len(data.test["targets"]) == 10


@pytest.mark.parametrize("damage, expected", [
    ("missing", "is missing"),
    ("truncated", "truncated"),
    ("wrong_magic", "not an IDX file"),
    ("not_gzip", "cannot read"),
])
def test_damaged_idx_files_give_clear_errors(tiny_mnist, damage, expected):
    path = tiny_mnist / "train-images-idx3-ubyte.gz"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[:-100]))
    elif damage == "wrong_magic":
        write_idx(path, 2049, np.zeros((20, 28, 28)))
    else:
        path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(datasets.DataError, match=expected) as info:
        build_dataset(mnist_config(data_dir=str(tiny_mnist)))
    assert "train-images-idx3-ubyte" in str(info.value)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(datasets.DataError, match="not a folder"):
        build_dataset(mnist_config(data_dir=str(tmp_path / "nowhere")))


def test_no_data_anywhere_names_the_three_ways(tmp_path):
    with pytest.raises(datasets.DataError) as info:
        mnist.load(tfds_data_dir=str(tmp_path))
    message = str(info.value)
    assert "data_dir" in message and "tfds_data_dir" in message and "TensorFlow" in message


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="is not a data set"):
        build_dataset(ml_collections.ConfigDict({"name": "imagenet"}))


def test_xor_points():
    data = build_dataset(ml_collections.ConfigDict({"name": "xor"}))
    assert data.train["inputs"].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert data.train["targets"].ravel().tolist() == [0, 1, 1, 0]


def test_polynomial_is_standardised_and_follows_the_cubic():
    config = ml_collections.ConfigDict(
        {"name": "polynomial", "num_train": 1000, "num_test": 200, "seed": 0})
    data = build_dataset(config)
    raw_x, y = data.train["inputs"], data.train["targets"]
    assert raw_x.min() >= -10 and raw_x.max() <= 10
    x = np.asarray(data.prepare_inputs(raw_x))
    assert x.shape == (1000, 1) and data.test["inputs"].shape == (200, 1)
    assert abs(x.mean()) < 1e-5 and x.std() == pytest.approx(1, abs=1e-5)
    assert abs(y.mean()) < 1e-5 and y.std() == pytest.approx(1, abs=1e-5)
    # Decoded targets are the cubic plus N(0, 1) noise.
    residual = np.asarray(data.decode_outputs(y)) - (raw_x**3 - 2 * raw_x**2 + raw_x - 2)
    assert abs(residual.mean()) < 0.1 and residual.std() == pytest.approx(1, abs=0.1)
    # Noise N(0, 1) is tiny next to the cubic's spread: y is the cubic of x up to scale and shift.
    assert np.corrcoef(np.polyval(np.polyfit(x[:, 0], y[:, 0], 3), x[:, 0]), y[:, 0])[0, 1] > 0.9999
    assert build_dataset(config).train["inputs"].tolist() == raw_x.tolist()  # seeded
