"""What is learned: a task's loss, its metrics, and how model outputs become predictions.

The three that ship are named by `config.task`; a task of your own is a `Task` (or a function
returning one) named 'module:name'. The loop, the figures and predict.py ask the task, never its
name.
"""
import dataclasses
from typing import Callable

import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics


def identity(outputs):
    return outputs


@dataclasses.dataclass(frozen=True)
class Task:
    """loss(outputs, targets) -> the loss of each example, shape (batch,).
    predict(outputs) -> predictions in the targets' form (class labels, bits or values).
    classes: predictions are class labels: accuracy (the share of examples whose prediction equals
        the target) is a metric, and the figures show a confusion matrix.
    metrics: more per-example metrics by name, {name: f(outputs, targets) -> (batch,)}, averaged.
    """
    loss: Callable
    predict: Callable = identity
    classes: bool = False
    metrics: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        names = ["loss", *(["accuracy"] if self.classes else []), *self.metrics]
        # A frozen dataclass that jit may hash: the mapping is kept as a tuple.
        object.__setattr__(self, "metrics", tuple(sorted(dict(self.metrics).items())))
        object.__setattr__(self, "collection", clu_metrics.Collection.create(
            **{name: clu_metrics.Average.from_output(name) for name in names}))

    def correct(self, outputs, targets):
        right = self.predict(outputs) == targets
        return jnp.all(right.reshape(right.shape[0], -1), axis=1).astype(jnp.float32)

    def compute_metrics(self, outputs, targets, per_example_loss, mask=None, axis_name=None):
        """The batch's metrics; with `axis_name` (pmap), of the whole batch across devices."""
        values = {"loss": per_example_loss}
        if self.classes:
            values["accuracy"] = self.correct(outputs, targets)
        values.update({name: metric(outputs, targets) for name, metric in self.metrics})
        if axis_name:
            return self.collection.gather_from_model_output(axis_name=axis_name, mask=mask, **values)
        return self.collection.single_from_model_output(mask=mask, **values)


def squared_error(outputs, targets):
    return jnp.mean(jnp.square(outputs - targets), axis=tuple(range(1, outputs.ndim)))


# softmax over classes, integer labels
classification = Task(loss=optax.softmax_cross_entropy_with_integer_labels,
                      predict=lambda logits: jnp.argmax(logits, -1), classes=True)
# mean squared error
regression = Task(loss=squared_error)
# mean squared error towards 0/1 targets, right when the output falls on the target's side of 0.5
# (the classic XOR MLP)
binary_regression = Task(loss=squared_error, classes=True,
                         predict=lambda outputs: (outputs > 0.5).astype(jnp.float32))
