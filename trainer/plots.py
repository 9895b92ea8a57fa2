"""PNG figures in the workdir: training curves, and what the model predicts on the test split.

    curves.png            train and eval loss (and accuracy) against steps
    predictions.png       regression with one input: predictions over the ground truth
    confusion_matrix.png  classification (and binary_regression): true against predicted class
    misclassified.png     image classification: a grid of misclassified test images
"""
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from trainer.inference import predict  # pylint: disable=wrong-import-position


def save(figure, workdir, name):
    path = os.path.join(workdir, name)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curves(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        entries = [json.loads(line) for line in f]
    metrics = [m for m in ("loss", "accuracy") if any(f"eval/{m}" in e or f"train/{m}" in e
                                                      for e in entries)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for split, style in (("train", "-"), ("eval", "o-")):
            points = sorted((e["step"], e[f"{split}/{metric}"]) for e in entries
                            if f"{split}/{metric}" in e)
            if points:
                axis.plot(*zip(*points), style, label=split, markersize=3)
        axis.set(xlabel="step", ylabel=metric, title=metric)
        if metric == "loss":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return save(figure, workdir, "curves.png")


def plot_regression(workdir, inputs, targets, outputs):
    order = np.argsort(inputs[:, 0])
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.scatter(inputs[:, 0], targets[:, 0], s=4, alpha=0.5, label="test data")
    axis.plot(inputs[order, 0], outputs[order, 0], "r-", label="model")
    axis.set(xlabel="input", ylabel="target", title="Predictions over the ground truth")
    axis.legend()
    figure.tight_layout()
    return save(figure, workdir, "predictions.png")


def plot_confusion_matrix(workdir, labels, predicted, num_classes):
    counts = np.zeros((num_classes, num_classes), int)
    np.add.at(counts, (labels, predicted), 1)
    figure, axis = plt.subplots(figsize=(1 + 0.6 * num_classes, 0.6 * num_classes + 0.6))
    axis.imshow(counts, cmap="Blues")
    for (true, guess), count in np.ndenumerate(counts):
        axis.text(guess, true, count, ha="center", va="center", fontsize=8,
                  color="white" if count > counts.max() / 2 else "black")
    axis.set(xlabel="predicted", ylabel="true", xticks=range(num_classes),
             yticks=range(num_classes),
             title=f"Confusion matrix ({(labels == predicted).mean():.2%} right)")
    figure.tight_layout()
    return save(figure, workdir, "confusion_matrix.png")


def plot_misclassified(workdir, images, labels, predicted, count=25, columns=5):
    """The first `count` misclassified images, tiled into one picture with a caption above each
    (an axes per image took seconds of layout)."""
    wrong = np.flatnonzero(labels != predicted)[:count]
    rows = max(1, -(-len(wrong) // columns))
    height, width = images.shape[1:3]
    caption, gap = height // 2, width // 8
    cell_height, cell_width = height + caption, width + gap
    tiles = np.full((rows * cell_height, columns * cell_width), np.nan)  # NaN: left blank
    figure = plt.figure(figsize=(2 * columns, 2.2 * rows))
    axis = figure.add_axes((0.01, 0.01, 0.98, 0.93))
    axis.axis("off")
    for k, index in enumerate(wrong):
        top, left = (k // columns) * cell_height + caption, (k % columns) * cell_width
        tiles[top:top + height, left:left + width] = images[index]
        axis.text(left + width / 2, top - 1, f"#{index}: {predicted[index]} (true {labels[index]})",
                  ha="center", va="bottom", fontsize=9)
    axis.imshow(tiles, cmap="gray", vmin=images.min(), vmax=images.max())
    figure.suptitle(f"Misclassified test images ({len(wrong)} shown)")
    return save(figure, workdir, "misclassified.png")


def plot_all(setup, state, workdir, task_name):
    """Every figure that fits the run's task; returns the paths written."""
    paths = [plot_curves(workdir)]
    test = setup.dataset.test
    outputs = predict(setup, state, test["inputs"])
    if task_name == "regression" and test["inputs"].ndim == 2 and test["inputs"].shape[1] == 1:
        targets = np.asarray(setup.dataset.decode_outputs(test["targets"]))
        paths.append(plot_regression(workdir, test["inputs"], targets, outputs))
    elif task_name in ("classification", "binary_regression"):
        if task_name == "classification":
            labels, predicted = test["targets"], outputs.argmax(-1)
            num_classes = outputs.shape[-1]
        else:
            labels = (test["targets"][:, 0] > 0.5).astype(int)
            predicted, num_classes = (outputs[:, 0] > 0.5).astype(int), 2
        paths.append(plot_confusion_matrix(workdir, labels, predicted, num_classes))
        if test["inputs"].ndim == 3:  # images
            paths.append(plot_misclassified(workdir, test["inputs"], labels, predicted))
    return paths
