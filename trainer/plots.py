"""PNG figures in the workdir: training curves, and what the model predicts on the test split.

    curves.png            loss (and accuracy) against steps, from metrics.jsonl: the training's
                          and each evaluation's (eval, val, val_ema, test, ...: its rows' prefix)
    predictions.png       a task of values with one input: predictions over the ground truth
    confusion_matrix.png  a task of classes: true against predicted class
    misclassified.png     classes of images: a grid of misclassified test images

The last three are of the parameters, or with the suffix "_ema" (predictions_ema.png, ...) of
their moving average.
"""
import json
import os
import sys

import matplotlib

if "ipykernel" not in sys.modules:  # files only, no display; a notebook keeps its inline figures
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position


def save(figure, workdir, name):
    path = os.path.join(workdir, name)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


METRICS = ("loss", "accuracy")  # the panels of curves.png


def style(prefix):
    """Training a line, an evaluation with markers, a moving average's dashed."""
    return "-" if prefix == "train" else "s--" if prefix.endswith("_ema") else "o-"


def curves(entries):
    """{metric: {prefix: [(step, value), ...]}} of the logged rows `<prefix>/<metric>`, for loss
    and accuracy: train first, then each evaluation (eval, val, val_ema, test, ...) in the order
    of its first row."""
    found = {}
    for entry in entries:
        for key, value in entry.items():
            prefix, _, metric = key.partition("/")
            if metric in METRICS:
                found.setdefault(metric, {}).setdefault(prefix, []).append((entry["step"], value))
    return {metric: {prefix: sorted(found[metric][prefix])  # a stable sort: train first
                     for prefix in sorted(found[metric], key=lambda prefix: prefix != "train")}
            for metric in METRICS if metric in found}


def plot_curves(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        series = curves([json.loads(line) for line in f])
    # A prefix's colour, the same in every panel.
    colours = {prefix: f"C{k}" for k, prefix in enumerate(dict.fromkeys(
        prefix for splits in series.values() for prefix in splits))}
    figure, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4), squeeze=False)
    for axis, (metric, splits) in zip(axes[0], series.items()):
        for prefix, points in splits.items():
            axis.plot(*zip(*points), style(prefix), color=colours[prefix], label=prefix,
                      markersize=3)
        axis.set(xlabel="step", ylabel=metric, title=metric)
        if metric == "loss":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return save(figure, workdir, "curves.png")


def plot_regression(workdir, inputs, targets, outputs, suffix=""):
    order = np.argsort(inputs[:, 0])
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.scatter(inputs[:, 0], targets[:, 0], s=4, alpha=0.5, label="test data")
    axis.plot(inputs[order, 0], outputs[order, 0], "r-", label="model")
    axis.set(xlabel="input", ylabel="target", title="Predictions over the ground truth")
    axis.legend()
    figure.tight_layout()
    return save(figure, workdir, f"predictions{suffix}.png")


def plot_confusion_matrix(workdir, labels, predicted, num_classes, suffix=""):
    counts = np.zeros((num_classes, num_classes), int)
    np.add.at(counts, (labels, predicted), 1)
    return save(confusion_figure(counts), workdir, f"confusion_matrix{suffix}.png")


def confusion_figure(counts, title="Confusion matrix"):
    """A figure of a confusion matrix's counts (row: true class, column: predicted)."""
    num_classes = len(counts)
    figure, axis = plt.subplots(figsize=(1 + 0.6 * num_classes, 0.6 * num_classes + 0.6))
    axis.imshow(counts, cmap="Blues")
    for (true, guess), count in np.ndenumerate(counts):
        axis.text(guess, true, count, ha="center", va="center", fontsize=8,
                  color="white" if count > counts.max() / 2 else "black")
    right = np.trace(counts) / max(counts.sum(), 1)
    axis.set(xlabel="predicted", ylabel="true", xticks=range(num_classes),
             yticks=range(num_classes), title=f"{title} ({right:.2%} right)")
    figure.tight_layout()
    return figure


def evaluation_confusion(workdir, name, counts):
    """confusion_matrix_<name>.png of an evaluation's confusion matrix, and the picture as an
    (height, width, 3) uint8 array, for TensorBoard."""
    figure = confusion_figure(counts, f"{name}: confusion matrix")
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    save(figure, workdir, f"confusion_matrix_{name}.png")
    return image


def plot_misclassified(workdir, images, labels, predicted, suffix="", count=25, columns=5):
    """The first `count` misclassified images (NHWC, grey or colour), tiled into one picture with a
    caption above each (an axes per image took seconds of layout)."""
    wrong = np.flatnonzero(labels != predicted)[:count]
    rows = max(1, -(-len(wrong) // columns))
    height, width, channels = images.shape[1:]
    caption, gap = height // 2, width // 8
    cell_height, cell_width = height + caption, width + gap
    low, high = float(images.min()), float(images.max())
    tiles = np.ones((rows * cell_height, columns * cell_width, channels))  # white between images
    figure = plt.figure(figsize=(2 * columns, 2.2 * rows))
    axis = figure.add_axes((0.01, 0.01, 0.98, 0.93))
    axis.axis("off")
    for k, index in enumerate(wrong):
        top, left = (k // columns) * cell_height + caption, (k % columns) * cell_width
        tiles[top:top + height, left:left + width] = (images[index] - low) / max(high - low, 1e-12)
        axis.text(left + width / 2, top - 1, f"#{index}: {predicted[index]} (true {labels[index]})",
                  ha="center", va="bottom", fontsize=9)
    axis.imshow(tiles[..., 0] if channels == 1 else tiles, cmap="gray", vmin=0, vmax=1)
    figure.suptitle(f"Misclassified test images ({len(wrong)} shown)")
    return save(figure, workdir, f"misclassified{suffix}.png")


def prediction_figure(task, test):
    """Which figure of predictions fits the task and the test split: "confusion" (a class label
    an example), "regression" (a value of one input), or None (nothing to draw of outputs)."""
    inputs, targets = test["inputs"], test["targets"]
    if task.classes and targets.reshape(len(targets), -1).shape[1] == 1:
        return "confusion"
    if not task.classes and inputs.ndim == 2 and inputs.shape[1] == 1 and targets.ndim == 2:
        return "regression"
    return None


def plot_all(workdir, task, test, outputs, decode_outputs, suffix=""):
    """Every figure that fits the run's task, given the test split and the model's `outputs` on it
    (in natural units; None where prediction_figure is None); returns the paths written.
    `suffix`: of the figures of `outputs`."""
    paths = [plot_curves(workdir)] if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
    inputs, targets = test["inputs"], np.asarray(decode_outputs(test["targets"]))
    count = len(targets)
    figure = prediction_figure(task, test)
    if figure == "confusion":
        labels = targets.reshape(count).astype(int)
        predicted = np.asarray(task.predict(outputs)).reshape(count).astype(int)
        num_classes = max(outputs.shape[-1], 2, labels.max() + 1, predicted.max() + 1)
        paths.append(plot_confusion_matrix(workdir, labels, predicted, num_classes, suffix))
        if inputs.ndim == 4:  # images, NHWC
            paths.append(plot_misclassified(workdir, inputs, labels, predicted, suffix))
    elif figure == "regression":
        paths.append(plot_regression(workdir, inputs, targets, outputs, suffix))
    return paths
