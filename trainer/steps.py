"""The training math: one train step and one eval step, pure functions of (state, batch).

They serve every device layout (trainer/parallel.py): under jit they see the global batch; under
pmap, given `axis_name`, they see one device's share and average across devices themselves.
"""
import jax

from trainer.state import TrainState


def apply_model(state: TrainState, params, inputs, train: bool, dropout_key=None):
    """Returns (outputs, new batch_stats)."""
    variables = {"params": params, "batch_stats": state.batch_stats}
    if not train:
        return state.apply_fn(variables, inputs, train=False), state.batch_stats
    outputs, updates = state.apply_fn(variables, inputs, train=True, rngs={"dropout": dropout_key},
                                      mutable=["batch_stats"])
    return outputs, updates.get("batch_stats", state.batch_stats)


def train_step(state: TrainState, batch, *, task, prepare_inputs, axis_name=None):
    """One gradient update on `batch` ({"inputs", "targets"}); returns (new state, metrics)."""
    inputs = prepare_inputs(batch["inputs"])
    dropout_key = jax.random.fold_in(state.rng, state.step)
    if axis_name:  # each device drops out its own share of the batch
        dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))

    def loss_fn(params):
        outputs, batch_stats = apply_model(state, params, inputs, True, dropout_key)
        per_example_loss = task.per_example_loss(outputs, batch["targets"])
        return per_example_loss.mean(), (outputs, per_example_loss, batch_stats)

    grads, (outputs, per_example_loss, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name:
        grads = jax.lax.pmean(grads, axis_name)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return new_state, task.compute_metrics(outputs, batch["targets"], per_example_loss,
                                           axis_name=axis_name)


def eval_step(state: TrainState, batch, *, task, prepare_inputs, axis_name=None):
    """Metrics on `batch`; examples whose batch["mask"] is 0 are padding and do not count."""
    outputs, _ = apply_model(state, state.params, prepare_inputs(batch["inputs"]), False)
    per_example_loss = task.per_example_loss(outputs, batch["targets"])
    return task.compute_metrics(outputs, batch["targets"], per_example_loss, mask=batch["mask"],
                                axis_name=axis_name)
