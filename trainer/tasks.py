"""What is learned: the loss and the metrics of each kind of task."""
import dataclasses
from typing import Callable

import flax
import jax.numpy as jnp
import optax
from clu import metrics


@flax.struct.dataclass
class LossAndAccuracy(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("accuracy")


@flax.struct.dataclass
class LossOnly(metrics.Collection):
    loss: metrics.Average.from_output("loss")


def softmax_cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def squared_error(outputs, targets):
    return jnp.mean(jnp.square(outputs - targets), axis=tuple(range(1, outputs.ndim)))


def argmax_correct(logits, labels):
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def threshold_correct(outputs, targets):
    return jnp.all((outputs > 0.5) == (targets > 0.5), axis=-1).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Task:
    per_example_loss: Callable  # (outputs, targets) -> (batch,)
    correct: Callable | None  # (outputs, targets) -> (batch,) of 0/1, or None: no accuracy
    metrics: type

    def compute_metrics(self, outputs, targets, per_example_loss, mask=None, axis_name=None):
        """The batch's metrics; with `axis_name` (pmap), of the whole batch across devices."""
        values = {"loss": per_example_loss}
        if self.correct:
            values["accuracy"] = self.correct(outputs, targets)
        if axis_name:
            return self.metrics.gather_from_model_output(axis_name=axis_name, mask=mask, **values)
        return self.metrics.single_from_model_output(mask=mask, **values)


TASKS = {
    # softmax over classes, integer labels
    "classification": Task(softmax_cross_entropy, argmax_correct, LossAndAccuracy),
    # mean squared error
    "regression": Task(squared_error, None, LossOnly),
    # mean squared error towards 0/1 targets, right when the output falls on the target's side of 0.5
    # (the classic XOR MLP)
    "binary_regression": Task(squared_error, threshold_correct, LossAndAccuracy),
}
