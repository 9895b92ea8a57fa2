"""What an evaluation measures, by name (config.evals.<name>.metrics).

Each metric is computed on the device from the batch's outputs, targets and mask as a clu metric,
merged over batches, devices and processes by clu (every example counted once, padding never),
and finished on the host into the figures people read:

    every task        loss, and a Task's own per-example metrics and summaries (Task.metrics,
                      Task.summaries: the language model's accuracy, perplexity, bits_per_byte
                      and tokens, over its real tokens)
    classification    accuracy, top<k>_accuracy (top5_accuracy: the label among the k highest
                      outputs), per_class_accuracy (the recall of each class, a row each:
                      `val/per_class_accuracy/3`), precision, recall, f1 (macro: the mean over
                      the classes present in the targets or the predictions, as scikit-learn's
                      average='macro'), confusion_matrix (counts, row: label, column: prediction;
                      drawn as a figure and a TensorBoard image rather than logged)
    regression        mse, rmse, mae, r2 (over several outputs each is the mean of the outputs'
                      own, as scikit-learn's multioutput='uniform_average')

The class metrics come from one confusion matrix of integer counts, the regression ones from
sums per output, so they are exact whatever the batch size or device count.

An evaluator of your own is named by the rule of every part ('module:Name', or an object given
to trainer.api.fit in the evaluation's metrics):

  - a clu.metrics.Metric class: from_model_output(outputs=, targets=, mask=, loss=) on the device,
    merged by the trainer; its compute() a number (logged by the class's name) or a dict of them;
  - a class (or function) making an object with update(outputs, targets, mask), called on the host
    with every batch's NumPy arrays (the whole global batch, padding rows with mask 0), and
    finish() -> {name: number}, called once the split is done.
"""
import dataclasses
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from trainer import parts
from trainer.errors import ConfigError, listed

EVALUATOR = parts.Kind("an evaluator", "config.evals.<name>.metrics", "trainer.metrics", None,
                       "the metrics named in trainer/metrics.py ('accuracy', 'f1', 'r2', ...)",
                       "evals")
CLASS_METRICS = ("accuracy", "per_class_accuracy", "precision", "recall", "f1",
                 "confusion_matrix")
CONFUSION = CLASS_METRICS[1:]
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2")
TOP_K = re.compile(r"top(\d+)_accuracy$")


def default_names(task):
    """What an evaluation measures unless it says: the loss, accuracy for a classifier, and the
    task's own metrics."""
    return ("loss", *(["accuracy"] if task.classes else []), *dict(task.metrics),
            *dict(task.summaries))


def of_evaluation(task, evaluation):
    """The Metrics of an evals.Evaluation."""
    return Metrics(task, evaluation.metrics or default_names(task),
                   f"config.evals.{evaluation.name}.metrics")


def labels_of(values):
    """Class labels of (batch,) or (batch, 1) integers or whole floats, as (batch,) int32."""
    return values.reshape(values.shape[0], -1)[:, 0].astype(jnp.int32)


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
    """Counts of (label, prediction) pairs of the examples the mask keeps."""
    counts: jnp.ndarray  # (classes, classes) int32

    @classmethod
    def from_model_output(cls, *, targets, predictions, classes, mask, **_):
        labels, predicted = labels_of(targets), labels_of(predictions)
        hits = (jax.nn.one_hot(labels, classes, dtype=jnp.int32) * mask[:, None].astype(jnp.int32))
        return cls(hits.T @ jax.nn.one_hot(predicted, classes, dtype=jnp.int32))

    def merge(self, other):
        return type(self)(self.counts + other.counts)

    def compute(self):
        return self.counts

    @classmethod
    def empty(cls):
        raise NotImplementedError  # its shape is the model's: made from a batch, never empty


@flax.struct.dataclass
class RegressionSums(clu_metrics.Metric):
    """Per output: the count, the targets' mean and sum of squared deviations (merged by Chan's
    rule, exact in float32 for targets far from 0), the sums of squared and absolute errors."""
    count: jnp.ndarray
    mean: jnp.ndarray
    m2: jnp.ndarray
    squared: jnp.ndarray
    absolute: jnp.ndarray

    @classmethod
    def from_model_output(cls, *, outputs, targets, mask, **_):
        keep = mask.astype(jnp.float32)[:, None]
        flat = targets.reshape(targets.shape[0], -1).astype(jnp.float32)
        errors = outputs.reshape(flat.shape).astype(jnp.float32) - flat
        count = keep.sum()
        mean = (flat * keep).sum(0) / jnp.maximum(count, 1.0)
        return cls(count, mean, (jnp.square(flat - mean) * keep).sum(0),
                   (jnp.square(errors) * keep).sum(0), (jnp.abs(errors) * keep).sum(0))

    def merge(self, other):
        count = self.count + other.count
        delta = other.mean - self.mean
        share = other.count / jnp.maximum(count, 1.0)
        return type(self)(count, self.mean + delta * share,
                          self.m2 + other.m2 + jnp.square(delta) * self.count * share,
                          self.squared + other.squared, self.absolute + other.absolute)

    def compute(self):
        return dict(count=self.count, m2=self.m2, squared=self.squared, absolute=self.absolute)

    @classmethod
    def empty(cls):
        raise NotImplementedError  # its shape is the targets': made from a batch, never empty


def top_k_correct(k):
    def correct(outputs, targets, **_):
        return jnp.any(jax.lax.top_k(outputs, k)[1] == labels_of(targets)[:, None], axis=1)
    return correct


def is_device_evaluator(part):
    return isinstance(part, type) and issubclass(part, clu_metrics.Metric)


def is_host_evaluator(part):
    return callable(part) and not is_device_evaluator(part)


@dataclasses.dataclass(frozen=True)
class Metrics:
    """An evaluation's metrics, resolved: `names` as asked for (built-in names and part names)."""
    task: object  # trainer.tasks.Task
    names: tuple
    where: str = "config.evals.<name>.metrics"  # the field that asked for them, for errors

    def __post_init__(self):
        # Each name checked: known, or a part found now, and kept (an object given to api.fit
        # is found only while the call runs).
        object.__setattr__(self, "parts", {
            name: parts.find(dataclasses.replace(EVALUATOR, field=self.where), name)
            for name in self.names if self.is_part(name)})
        for name in self.names:
            self.part(name)

    @staticmethod
    def is_part(name):
        return ":" in name

    def part(self, name):
        if self.is_part(name):
            return self.parts[name]
        top_k = TOP_K.match(name)
        tokens = self.task.weights is not None  # a language model's: none of examples
        known = ("loss", *dict(self.task.metrics), *dict(self.task.summaries),
                 *(CLASS_METRICS if self.task.classes else ()),
                 *(REGRESSION_METRICS if not (self.task.classes or tokens) else ()))
        if name in known or (top_k and self.task.classes and int(top_k.group(1)) > 0):
            return None
        other = REGRESSION_METRICS if self.task.classes else CLASS_METRICS
        why = ("it is a metric of examples and this task's are of tokens" if tokens and (
            name in CLASS_METRICS + REGRESSION_METRICS or top_k)
               else f"it is a {'regression' if self.task.classes else 'classification'} metric "
                    f"and this task is {'' if self.task.classes else 'not '}a classifier"
               if name in other or top_k else "there is no such metric")
        raise ConfigError(f"{self.where}: {name!r}: {why}; give some of "
                          f"{listed([*known, *(['top5_accuracy'] if self.task.classes else [])])}, "
                          f"or 'module:Name' of an evaluator of your own (trainer/metrics.py).")

    def scalar_names(self):
        """The numbers it logs that can be known before it runs (not those of evaluators of the
        user's own, nor per_class_accuracy's, a row per class present)."""
        return [name for name in self.names if not self.is_part(name)
                and name not in ("per_class_accuracy", "confusion_matrix")]

    def device_keys(self):
        """{name: the identifier its metric has in the clu Collection} of the device evaluators of
        the user's own."""
        return {name: f"evaluator{i}" for i, (name, part) in enumerate(self.parts.items())
                if is_device_evaluator(part)}

    @property
    def host_evaluators(self):
        return {name: part for name, part in self.parts.items() if is_host_evaluator(part)}

    def on_device(self, outputs, targets, per_example_loss, mask, axis_name=None):
        """The batch's device metrics, a clu Collection; with `axis_name` (pmap), gathered over
        the devices."""
        values = dict(outputs=outputs, targets=targets, loss=per_example_loss,
                      mask=self.task.counted(targets, mask.astype(bool)))
        wanted = set(self.names)
        metrics = {"loss": clu_metrics.Average.from_output("loss")}
        for name, metric in self.task.metrics:
            if name in wanted:
                values[name] = metric(outputs, targets)
                metrics[name] = clu_metrics.Average.from_output(name)
        metrics.update({name: summary for name, summary in self.task.summaries if name in wanted})
        if self.task.classes:
            values["predictions"] = self.task.predict(outputs)
            values["classes"] = outputs.shape[-1] if outputs.shape[-1] > 1 else 2
            if "accuracy" in wanted:
                values["accuracy"] = self.task.correct(outputs, targets)
                metrics["accuracy"] = clu_metrics.Average.from_output("accuracy")
            for name in wanted:
                if TOP_K.match(name):
                    k = int(TOP_K.match(name).group(1))
                    metrics[name] = clu_metrics.Average.from_fun(top_k_correct(k))
            if wanted & set(CONFUSION):
                metrics["confusion"] = ConfusionMatrix
        elif wanted & set(REGRESSION_METRICS):
            metrics["regression"] = RegressionSums
        for name, key in self.device_keys().items():
            metrics[key] = self.part(name)
        collection = clu_metrics.Collection.create(**metrics)
        if axis_name:
            return collection.gather_from_model_output(axis_name=axis_name, **values)
        return collection.single_from_model_output(**values)

    def finish(self, computed, host_results):
        """The rows of the evaluation, in the order asked for: numbers, and the confusion matrix
        as an array. `computed`: the merged collection's compute(); `host_results`: each host
        evaluator's finish()."""
        rows = {}
        for name in self.names:
            if name in host_results:
                rows.update(named_values(name, host_results[name]))
            elif self.is_part(name):
                rows.update(named_values(name, computed[self.device_keys()[name]]))
            elif name in CONFUSION:
                rows.update(class_rows(name, np.asarray(computed["confusion"])))
            elif name in REGRESSION_METRICS:
                rows[name] = regression_value(name, computed["regression"])
            else:
                rows[name] = float(computed[name])
        return rows


def named_values(name, result):
    """An evaluator's result as rows: a dict's by its keys, one number by the evaluator's name."""
    if isinstance(result, dict):
        return {key: float(value) for key, value in result.items()}
    return {name.rpartition(":")[2]: float(result)}


def class_rows(name, counts):
    if name == "confusion_matrix":
        return {name: counts}
    support, predicted, hits = counts.sum(1), counts.sum(0), np.diag(counts)
    if name == "per_class_accuracy":
        return {f"{name}/{c}": float(hits[c] / support[c]) for c in range(len(counts)) if support[c]}
    present = (support + predicted) > 0
    precision = np.divide(hits, predicted, out=np.zeros(len(counts)), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(len(counts)), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(len(counts)), where=both > 0)
    return {name: float(dict(precision=precision, recall=recall, f1=f1)[name][present].mean())}


def regression_value(name, sums):
    count = float(sums["count"])
    squared, absolute = np.asarray(sums["squared"], np.float64), np.asarray(sums["absolute"],
                                                                            np.float64)
    per_output = {"mse": squared / count, "rmse": np.sqrt(squared / count),
                  "mae": absolute / count,
                  "r2": 1.0 - squared / np.asarray(sums["m2"], np.float64)}[name]
    return float(per_output.mean())
