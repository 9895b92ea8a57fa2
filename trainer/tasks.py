"""What is learned: a task's loss, its metrics, and how model outputs become predictions.

The four that ship are named by `config.task`; a task of your own is a `Task` (or a function
returning one) named 'module:name'. The loop, the figures and predict.py ask the task, never its
name.
"""
import dataclasses
import math
from typing import Callable

import flax
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
    weights: a task of tokens rather than examples: loss (and each metric) gives a value per token,
        (batch, length), and weights(targets) -> (batch, length) says which count (0: a masked
        target). Every mean is then over the counted tokens of the whole global batch, across
        devices and gradient-accumulation microbatches too, never a mean of per-row means.
    summaries: metrics of the batch as a whole, {name: a clu Metric class}, made by
        from_model_output(outputs=, targets=, loss=, mask=) and merged (perplexity: exp of the
        mean loss, not the mean of exps).
    """
    loss: Callable
    predict: Callable = identity
    classes: bool = False
    metrics: dict = dataclasses.field(default_factory=dict)
    weights: Callable | None = None
    summaries: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        names = ["loss", *(["accuracy"] if self.classes else []), *self.metrics]
        # A frozen dataclass that jit may hash: the mappings are kept as tuples.
        object.__setattr__(self, "metrics", tuple(sorted(dict(self.metrics).items())))
        object.__setattr__(self, "summaries", tuple(sorted(dict(self.summaries).items())))
        object.__setattr__(self, "collection", clu_metrics.Collection.create(
            **{name: clu_metrics.Average.from_output(name) for name in names},
            **dict(self.summaries)))

    def counted(self, targets, mask=None):
        """What each loss value counts for, as a bool mask of its shape: the task's weights and
        the batch's `mask` (batch,) of real (not padding) examples; None when every one counts."""
        if self.weights is None:
            return mask
        counted = self.weights(targets).astype(bool)
        return counted if mask is None else counted & mask.astype(bool)[:, None]

    def correct(self, outputs, targets):
        right = self.predict(outputs) == targets
        return jnp.all(right.reshape(right.shape[0], -1), axis=1).astype(jnp.float32)

    def compute_metrics(self, outputs, targets, per_example_loss, mask=None, axis_name=None):
        """The batch's metrics; with `axis_name` (pmap), of the whole batch across devices."""
        values = {"loss": per_example_loss}
        if self.classes:
            values["accuracy"] = self.correct(outputs, targets)
        values.update({name: metric(outputs, targets) for name, metric in self.metrics})
        mask = self.counted(targets, mask)
        if self.summaries:
            values.update(outputs=outputs, targets=targets)
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


def next_token_loss(logits, targets):
    """Cross-entropy of each position's next token, (batch, length); 0 where the target is masked
    (targets[..., 0] < 0: across a document boundary, padding). targets[..., 1] is the target's
    size in bytes (datasets/text.py)."""
    tokens = targets[..., 0]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(tokens, 0))
    return jnp.where(tokens >= 0, loss, 0.0)


def real_tokens(targets):
    return targets[..., 0] >= 0


@flax.struct.dataclass
class Perplexity(clu_metrics.Average):
    """exp of the mean loss over the counted tokens."""

    @classmethod
    def from_model_output(cls, *, loss, mask, **_):
        return super().from_model_output(values=loss, mask=mask)

    def compute(self):
        return jnp.exp(super().compute())


@flax.struct.dataclass
class BitsPerByte(clu_metrics.Metric):
    """The loss in bits per byte of text: the counted tokens' summed loss over their summed size
    in bytes, comparable across tokenizers (a byte-level model's is its loss / ln 2)."""
    nats: jnp.ndarray
    bytes: jnp.ndarray

    @classmethod
    def from_model_output(cls, *, loss, targets, mask, **_):
        return cls(jnp.where(mask, loss, 0.0).sum(),
                   jnp.where(mask, targets[..., 1], 0).sum().astype(jnp.float32))

    def merge(self, other):
        return type(self)(self.nats + other.nats, self.bytes + other.bytes)

    def compute(self):
        return self.nats / jnp.maximum(self.bytes, 1.0) / math.log(2)

    @classmethod
    def empty(cls):
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


@flax.struct.dataclass
class Tokens(clu_metrics.Metric):
    """How many tokens counted (a sum, not a mean): the loop logs them per second."""
    count: jnp.ndarray

    @classmethod
    def from_model_output(cls, *, mask, **_):
        return cls(mask.sum().astype(jnp.float32))

    def merge(self, other):
        return type(self)(self.count + other.count)

    def compute(self):
        return self.count

    @classmethod
    def empty(cls):
        return cls(jnp.zeros((), jnp.float32))


def token_correct(logits, targets):
    return (jnp.argmax(logits, -1) == targets[..., 0]).astype(jnp.float32)


# next-token prediction over packed text (datasets/text.py): the loss per token, averaged over the
# real tokens of the global batch
language_model = Task(loss=next_token_loss, predict=lambda logits: jnp.argmax(logits, -1),
                      metrics={"accuracy": token_correct}, weights=real_tokens,
                      summaries={"perplexity": Perplexity, "bits_per_byte": BitsPerByte,
                                 "tokens": Tokens})
