"""Run.predict says what it takes (trainer/evaluation.py, stored_form): inputs in the form the
run's data set stores them, one example (its outputs, unbatched) or a batch (a row each), for
linen and NNX models alike; a shape or values that cannot be that form are one ConfigError line
saying what to give, never a Flax traceback or a silently wrong answer."""
import re

import numpy as np
import pytest
from flax import nnx

from conftest import MNIST_DIR
from datasets import mnist
from trainer import api
from trainer.errors import ConfigError

QUICK = dict(plots=False, log_every_steps=1)


@pytest.fixture(scope="module")
def images():
    """The first test images of real MNIST, uint8 (n, 28, 28, 1), as the data set stores them."""
    return mnist.load(data_dir=str(MNIST_DIR)).test["inputs"][:4]


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return api.fit("configs/mnist_cnn.py", tmp_path_factory.mktemp("cnn"), num_steps=2,
                   model=dict(conv_features=(4, 8), dense_features=(16,)),
                   dataset=dict(data_dir=str(MNIST_DIR)), **QUICK)


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    return api.fit("configs/xor_mlp.py", tmp_path_factory.mktemp("xor"), num_steps=5, **QUICK)


@pytest.fixture(scope="module")
def poly(tmp_path_factory):
    return api.fit("configs/poly_regression.py", tmp_path_factory.mktemp("poly"), num_steps=5,
                   **QUICK)


class Flat(nnx.Module):
    """Plain Linear layers on 4x4 examples, flattened as x.reshape(-1, 16): an unbatched example,
    or a batch of the wrong shape, goes through as some batch."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x.reshape(-1, 16))))


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """Flat on float inputs in [0, 1], stored as float32."""
    rng = np.random.default_rng(0)
    arrays = tuple((rng.uniform(0, 1, (n, 4, 4)).astype(np.float32),
                    rng.integers(0, 3, n).astype(np.int32)) for n in (32, 8))
    return api.fit(None, tmp_path_factory.mktemp("flat"), model=Flat, dataset=arrays,
                   num_steps=2, batch_size=8, eval_batch_size=8, **QUICK)


def refusal(run, inputs):
    """The one line of the ConfigError predict raises."""
    with pytest.raises(ConfigError) as raised:
        run.predict(inputs)
    message = str(raised.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_one_image_gives_its_outputs_unbatched_the_row_of_the_batch(cnn, images):
    batch = cnn.predict(images)
    assert batch.shape == (4, 10)
    one = cnn.predict(images[1])
    assert one.shape == (10,)
    np.testing.assert_allclose(one, batch[1], rtol=1e-5, atol=1e-6)
    listed = cnn.predict([images[0], images[1]])  # a list of images is a batch
    np.testing.assert_allclose(listed, batch[:2], rtol=1e-5, atol=1e-6)


def test_images_as_floats_in_0_1_are_refused_saying_what_to_give(cnn, images):
    scaled = images.astype(np.float32) / 255
    expected = ("inputs: the run's data stores inputs as uint8 in 0..255 (raw pixels); these are "
                "float32 in [0.0, 1.0], not whole numbers: give "
                "(x * 255).round().astype(np.uint8).")
    assert refusal(cnn, scaled) == expected
    assert refusal(cnn, scaled[0]) == expected
    assert "these are int64 in 300..555: give values in 0..255." in refusal(
        cnn, images.astype(np.int64) + 300)


def test_whole_floats_and_ints_in_range_are_the_stored_pixels(cnn, images):
    batch = cnn.predict(images)
    assert np.array_equal(cnn.predict(images.astype(np.float32)), batch)
    assert np.array_equal(cnn.predict(images.astype(np.int64).tolist()), batch)


@pytest.mark.parametrize("shape, expected", [
    ((28, 28), "inputs: shape (28, 28) is not one example of the run's data nor a batch of them; "
               "give shape (28, 28, 1) (one example) or (n, 28, 28, 1) (a batch of n)."),
    ((3, 784), "inputs: shape (3, 784) is not one example of the run's data nor a batch of them; "
               "give shape (28, 28, 1) (one example) or (n, 28, 28, 1) (a batch of n), e.g. "
               "x.reshape(-1, 28, 28, 1) where these are examples flattened."),
    ((), "inputs: shape () is not one example"),
])
def test_a_shape_that_is_neither_an_image_nor_a_batch_is_one_line(cnn, shape, expected):
    assert refusal(cnn, np.zeros(shape, np.uint8)).startswith(expected)


def test_xor_takes_one_point_or_a_batch_and_ints_for_its_floats(xor):
    batch = xor.predict([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert batch.shape == (4, 1)
    np.testing.assert_array_equal(batch, xor.predict(np.array([[0, 0], [0, 1], [1, 0], [1, 1]],
                                                              np.float32)))
    one = xor.predict([0, 1])
    assert one.shape == (1,)
    np.testing.assert_allclose(one, batch[1], rtol=1e-6)
    np.testing.assert_allclose(xor.predict((1.0, 0.0)), batch[2], rtol=1e-6)
    assert refusal(xor, [0, 1, 1]) == (
        "inputs: shape (3,) is not one example of the run's data nor a batch of them; give shape "
        "(2,) (one example) or (n, 2) (a batch of n).")
    assert "these are <U1 values; give numbers" in refusal(xor, ["0", "1"])


def test_the_polynomial_takes_a_number_or_numbers(poly):
    column = poly.predict(np.array([[0.5], [-3.0]]))
    assert column.shape == (2, 1)
    np.testing.assert_array_equal(poly.predict([0.5, -3.0]), column)
    one = poly.predict(0.5)
    assert one.shape == (1,)
    np.testing.assert_allclose(one, column[0], rtol=1e-6)
    np.testing.assert_allclose(poly.predict(np.float64(-3)), column[1], rtol=1e-6)
    assert poly.predict([2]).shape == (1, 1)  # a 1-D array is a batch of numbers, however long
    assert refusal(poly, np.zeros((2, 2))) == (
        "inputs: shape (2, 2) is not one example of the run's data nor a batch of them; give a "
        "number (one example), or n of them as shape (n,) or (n, 1) (a batch).")


def test_an_nnx_model_of_linear_layers_gets_the_batch_axis_too(flat):
    rng = np.random.default_rng(1)
    batch_inputs = rng.uniform(0, 1, (5, 4, 4)).astype(np.float32)
    batch = flat.predict(batch_inputs)
    assert batch.shape == (5, 3)
    one = flat.predict(batch_inputs[2])
    assert one.shape == (3,)
    np.testing.assert_allclose(one, batch[2], rtol=1e-5, atol=1e-6)
    # (8, 4) would go through x.reshape(-1, 16) as 2 examples: refused
    assert refusal(flat, batch_inputs.reshape(-1, 4)[:8]) == (
        "inputs: shape (8, 4) is not one example of the run's data nor a batch of them; give shape "
        "(4, 4) (one example) or (n, 4, 4) (a batch of n).")


def test_pixels_for_inputs_stored_in_0_1_are_refused(flat):
    message = refusal(flat, np.full((4, 4), 200, np.uint8))
    assert message == ("inputs: the run's data stores inputs as float32 in [0, 1]; these are uint8 "
                       "in 200..200: give x.astype(np.float32) / 255.")
    assert flat.predict(np.ones((4, 4), np.uint8)).shape == (3,)  # 0 and 1: the same as floats


def test_an_empty_batch_gives_no_outputs(xor, flat):
    assert xor.predict(np.zeros((0, 2), np.float32)).shape == (0, 1)
    assert flat.predict(np.zeros((0, 4, 4), np.float32)).shape == (0, 3)  # reshape(-1, 16): not run


def test_the_message_names_the_argument():
    """stored_form is what Run.evaluate checks arrays with: its messages start with the name."""
    from datasets import Dataset  # pylint: disable=import-outside-toplevel
    from trainer.evaluation import stored_form  # pylint: disable=import-outside-toplevel
    split = {"inputs": np.zeros((3, 2, 2, 1), np.uint8), "targets": np.zeros(3, np.int32)}
    dataset = Dataset(train=split, test=split)
    array, batched = stored_form(dataset, np.ones((2, 2, 1)), "data")
    assert array.dtype == np.uint8 and array.shape == (1, 2, 2, 1) and not batched
    with pytest.raises(ConfigError, match=re.escape("data: the run's data stores inputs as uint8 "
                                                    "in 0..255 (raw pixels); these are float64")):
        stored_form(dataset, np.full((2, 2, 2, 1), 0.5), "data")
