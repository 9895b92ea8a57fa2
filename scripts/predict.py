"""Runs a trained model on inputs and prints its outputs, a line each.

    python scripts/predict.py --workdir=runs/xor                      # the test split (XOR: 4 points)
    python scripts/predict.py --workdir=runs/poly --inputs="-10;0;10" # the curve at these x
    python scripts/predict.py --workdir=runs/mnist --indices=0,1,2    # test images by index
    python scripts/predict.py --workdir=runs/mnist --images=digit.png # 28x28 grey, white on black

Inputs are in the data set's natural units (the polynomial's x in [-10, 10]); rows of --inputs
are separated by ';' and values by ','.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

import numpy as np  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position

from trainer import cli, inference  # pylint: disable=wrong-import-position
from trainer.errors import ConfigError  # pylint: disable=wrong-import-position

WORKDIR = flags.DEFINE_string("workdir", None, "The training run's folder.", required=True)
STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
INPUTS = flags.DEFINE_string("inputs", None, "Input rows: values split by ',', rows by ';'.")
INDICES = flags.DEFINE_list("indices", None, "Indices of test examples.")
IMAGES = flags.DEFINE_list("images", None, "Image files (read as greyscale, resized to fit).")


def read_images(paths, shape):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    try:
        return np.stack([np.asarray(Image.open(p).convert("L").resize(shape[::-1])) for p in paths])
    except OSError as e:
        raise ConfigError(f"--images: {e}") from e


def parse_rows(text, width):
    try:
        rows = np.array([[float(v) for v in row.split(",")] for row in text.split(";")], np.float32)
    except ValueError as e:
        raise ConfigError(f"--inputs={text!r}: {e}; write numbers, ',' between values and ';' "
                          f"between rows.") from e
    if rows.shape[1] != width:
        raise ConfigError(f"--inputs: rows of {rows.shape[1]} values; this model takes {width}.")
    return rows


def main(argv):
    del argv
    config = cli.config_of_run(WORKDIR.value)
    setup, state, step = inference.restore(config, WORKDIR.value, STEP.value)
    test = setup.dataset.test
    labels, names = None, None
    if IMAGES.value:
        inputs, names = read_images(IMAGES.value, test["inputs"].shape[1:]), IMAGES.value
    elif INPUTS.value:
        inputs = parse_rows(INPUTS.value, int(np.prod(test["inputs"].shape[1:])))
    else:
        indices = [int(i) for i in INDICES.value] if INDICES.value else range(len(test["targets"]))
        if not all(0 <= i < len(test["targets"]) for i in indices):
            raise ConfigError(f"--indices must lie in [0, {len(test['targets'])}).")
        inputs, labels = test["inputs"][list(indices)], test["targets"][list(indices)]
        names = [f"test #{i}" if inputs[0].size > 8 else np.array2string(inputs[n], precision=4)
                 for n, i in enumerate(indices)]
        if config.task == "regression":
            labels = setup.dataset.decode_outputs(labels)
    outputs = inference.predict(setup, state, inputs)
    print(f"# {config.model.name} at step {step}, task {config.task}")
    for i, output in enumerate(outputs):
        name = names[i] if names else np.array2string(inputs[i], precision=4)
        if config.task == "classification":
            line = f"{name}: predicted {output.argmax()}"
        elif config.task == "binary_regression":
            line = f"{name}: output {output[0]:.4f}, predicted bit {int(output[0] > 0.5)}"
        else:
            line = f"{name}: predicted {np.array2string(output, precision=4)}"
        if labels is not None:
            line += f" (target {np.array2string(np.asarray(labels[i]), precision=4)})"
        print(line)


if __name__ == "__main__":
    cli.run(main, config_required=False)
