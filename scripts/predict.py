"""Runs a trained model on inputs and prints its outputs, a line each.

    python scripts/predict.py --workdir=runs/xor                      # the test split (XOR: 4 points)
    python scripts/predict.py --workdir=runs/poly --inputs="-10;0;10" # the curve at these x
    python scripts/predict.py --workdir=runs/mnist --indices=0,1,2    # test images by index
    python scripts/predict.py --workdir=runs/mnist                    # the first 10 test images
    python scripts/predict.py --workdir=runs/mnist --images=digit.png # 28x28 grey, white on black
    python scripts/predict.py --workdir=runs/mnist --step=best --ema  # the best checkpoint's average

Inputs are in the data set's natural units, as it stores them (the polynomial's x in [-10, 10];
an image's pixels as whole numbers in 0..255, a row of 784 for MNIST); rows of --inputs are
separated by ';' and values by ','.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

import numpy as np  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position

import datasets  # pylint: disable=wrong-import-position
from trainer import api, cli, evaluation  # pylint: disable=wrong-import-position
from trainer.errors import ConfigError  # pylint: disable=wrong-import-position

DEFAULT_COUNT = 10  # test examples shown when none are asked for

WORKDIR, STEP, EMA = cli.define_run_flags()
INPUTS = flags.DEFINE_string("inputs", None, "Input rows: values split by ',', rows by ';'.")
INDICES = flags.DEFINE_list("indices", None, "Indices of test examples (default: the first "
                            f"{DEFAULT_COUNT}).")
IMAGES = flags.DEFINE_list("images", None, "Image files (resized to the data set's images).")


def read_images(paths, shape):
    """Image files as the data set stores its images: (height, width, channels) uint8."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    if len(shape) != 3:
        raise ConfigError(f"--images needs a run on image data; this run's inputs have shape "
                          f"{shape}. Give them with --inputs.")
    height, width, channels = shape
    try:
        images = [Image.open(p).convert("L" if channels == 1 else "RGB").resize((width, height))
                  for p in paths]
    except OSError as e:
        raise ConfigError(f"--images: {e}") from e
    return np.stack([np.asarray(image).reshape(shape) for image in images])


def parse_rows(text, width):
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";")]
    except ValueError as e:
        raise ConfigError(f"--inputs={text!r}: {e}; write numbers, ',' between values and ';' "
                          f"between rows.") from e
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise ConfigError(f"--inputs={text!r}: row {number} has {len(row)} value(s); this "
                              f"model takes {width} an input, ',' between values and ';' between "
                              f"rows.")
    return np.array(rows, np.float32)


def parse_indices(values, count):
    try:
        indices = [int(i) for i in values]
    except ValueError as e:
        raise ConfigError(f"--indices={','.join(values)}: write the indices of test examples as "
                          f"integers, e.g. --indices=0,1,2.") from e
    if not all(0 <= i < count for i in indices):
        raise ConfigError(f"--indices must lie in [0, {count}).")
    return indices


def value_text(value, classes):
    """A class label as an integer, values to 4 digits."""
    value = np.asarray(value)
    if classes:
        value = value.astype(int)
        return str(value.item()) if value.size == 1 else np.array2string(value)
    return np.array2string(value, precision=4)


def main(argv):
    del argv
    config = cli.config()
    run = api.load(WORKDIR.value, STEP.value, config=config)
    run.with_ema(EMA.value)  # a run without a moving average is said before anything is printed
    setup, step = run.setup, run.step
    test = setup.dataset.test
    count = datasets.num_examples(test)
    example_shape = datasets.examples(test, [0])["inputs"].shape[1:]
    labels, names = None, None
    print(f"# {config.model.name} at step {step}, task {config.task}"
          + (", the moving average of its parameters (--ema)" if EMA.value else ""))
    if IMAGES.value:
        inputs, names = read_images(IMAGES.value, example_shape), IMAGES.value
    elif INPUTS.value:
        rows = parse_rows(INPUTS.value, int(np.prod(example_shape)))
        # As the data set stores them (a row of 784 whole numbers in 0..255 for MNIST), or refused
        inputs, _ = evaluation.stored_form(setup.dataset, rows.reshape(-1, *example_shape),
                                           "--inputs")
        if inputs[0].size > 8:  # too long to print as the name of a row
            names = [f"row {n}" for n in range(1, len(inputs) + 1)]
    else:
        if INDICES.value:
            indices = parse_indices(INDICES.value, count)
        else:
            indices = list(range(min(count, DEFAULT_COUNT)))
            if count > DEFAULT_COUNT:
                print(f"# test examples 0 to {DEFAULT_COUNT - 1} of {count}; --indices=... for "
                      f"others")
        chosen = datasets.examples(test, indices)
        inputs = chosen["inputs"]
        labels = np.asarray(setup.dataset.decode_outputs(chosen["targets"]))
        names = [f"test #{i}" if inputs[0].size > 8 else np.array2string(inputs[n], precision=4)
                 for n, i in enumerate(indices)]
    task = setup.task
    outputs = run.predict(inputs, ema=EMA.value)
    predictions = np.asarray(task.predict(outputs))
    for i, output in enumerate(outputs):
        name = names[i] if names else np.array2string(inputs[i], precision=4)
        shown = [f"predicted {value_text(predictions[i], task.classes)}"]
        if task.classes and output.size <= 4:  # a few raw outputs say how sure it is
            shown.append(f"output {np.array2string(output, precision=4)}")
        if labels is not None:
            shown.append(f"target {value_text(labels[i], task.classes)}")
        print(f"{name}: {', '.join(shown)}")


if __name__ == "__main__":
    cli.run(main, config_required=False, reads_a_run=True)
