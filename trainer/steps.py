"""The training math: one train step and one eval step, pure functions of (state, batch).

They serve every device layout (trainer/parallel.py): under jit they see the global batch; under
pmap, given `axis_name`, they see one device's share and average across devices themselves.
"""
import jax
import jax.numpy as jnp

from trainer.state import TrainState


def microbatches(tree, k):
    """(batch, ...) arrays as (k, batch // k, ...): microbatch j holds rows j, j + k, j + 2k, ...,
    so that each is split over the devices like the whole batch."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), tree)


def whole_batch(tree):
    """microbatches, undone: (k, batch // k, ...) arrays back as (batch, ...) in the batch's order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)


def train_step(state: TrainState, batch, *, task, prepare_inputs, nonfinite="stop",
               grad_accum_steps=1, unroll_accumulation=False, ema_decay=0.0, state_sharding=None,
               axis_name=None):
    """One gradient update on `batch` ({"inputs", "targets"}); returns (new state, metrics).

    `grad_accum_steps` = k > 1: the batch is split into k microbatches, run one after another in a
    scan (activations of one at a time), their mean gradients averaged into one update; the
    model's state (BatchNorm statistics) is carried from each microbatch to the next.
    `unroll_accumulation`: the scan unrolled, for XLA's CPU backend, which runs convolutions
    inside a loop about 8x slower (docs/speed.md#gradient-accumulation).
    `nonfinite` (config.nonfinite): an update with a NaN or an Inf is never applied; with "stop"
    no later one is applied either, since the run stops at the first.
    `ema_decay` > 0: state.ema_params follows the parameters as their moving average.
    `state_sharding` (jit): the new state is kept where the old one was (sharded or replicated),
    inside a fused loop too, so that XLA never moves it between steps.
    A task of tokens (Task.weights) is one mean over the counted tokens of the whole global batch:
    each microbatch and device adds its tokens' summed loss over that global count, and their
    gradients are summed, not averaged (a mean of means would weigh a row of few real tokens as
    much as a full one).
    With a loss scale (state.loss_scale, config.precision="mixed_float16") the objective is
    multiplied by it and the gradients divided by it again; a step whose gradients overflow is not
    applied and halves the scale, and is no non-finite step (a non-finite loss still is, and a
    non-finite gradient at a scale of 1 or less)."""
    dropout_key = jax.random.fold_in(state.rng, state.step)
    if axis_name:  # each device drops out its own share of the batch
        dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    by_tokens = task.weights is not None
    if by_tokens:
        counted = task.weights(batch["targets"]).astype(jnp.float32).sum()
        if axis_name:
            counted = jax.lax.psum(counted, axis_name)
        counted = jnp.maximum(counted, 1.0)

    scale = None if state.loss_scale is None else state.loss_scale.scale

    def loss_fn(params, model_state, batch, key):
        outputs, model_state = state.model.apply(params, model_state,
                                                 prepare_inputs(batch["inputs"]), True, key)
        outputs = in_float32(outputs)
        per_example_loss = task.loss(outputs, batch["targets"])
        objective = ((per_example_loss * task.weights(batch["targets"])).sum() / counted
                     if by_tokens else per_example_loss.mean())
        return (objective if scale is None else objective * scale), (
            outputs, per_example_loss, model_state)

    gradients = jax.grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        grads, (outputs, per_example_loss, model_state) = gradients(
            state.params, state.model_state, batch, dropout_key)
    else:
        def accumulate(carry, microbatch):
            grads_sum, model_state, i = carry
            grads, (outputs, loss, model_state) = gradients(
                state.params, model_state, microbatch, jax.random.fold_in(dropout_key, i))
            return (jax.tree.map(jnp.add, grads_sum, grads), model_state, i + 1), (outputs, loss)

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads_sum, model_state, _), (outputs, per_example_loss) = jax.lax.scan(
            accumulate, (zeros, state.model_state, 0), microbatches(batch, grad_accum_steps),
            unroll=unroll_accumulation)
        grads = grads_sum if by_tokens else jax.tree.map(lambda g: g / grad_accum_steps,
                                                         grads_sum)
        outputs, per_example_loss = whole_batch((outputs, per_example_loss))
    if axis_name:
        grads = (jax.lax.psum if by_tokens else jax.lax.pmean)(grads, axis_name)
        # Each device updated its statistics from its own share of the batch (unless the model
        # reduces them over `axis_name` itself): their mean keeps the state replicated.
        model_state = jax.tree.map(
            lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.inexact) else x,
            model_state)
    overflow = None
    if scale is not None:
        grads = jax.tree.map(lambda g: g / scale, grads)
        grads_finite = all_finite([grads])
        # Past a scale of 1 a non-finite gradient is no overflow of the scaling: a NaN stop.
        overflow = ~grads_finite & all_finite([per_example_loss]) & (scale > 1.0)
    new_state = state.apply_gradients(grads=grads, model_state=model_state)
    if ema_decay:
        new_state = new_state.replace(ema_params=jax.tree.map(
            lambda average, p: ema_decay * average + (1 - ema_decay) * p,
            state.ema_params, new_state.params))
    if scale is not None:
        new_state = new_state.replace(loss_scale=rescaled(state.loss_scale, grads_finite))
    new_state = skip_if_nonfinite(state, new_state, [per_example_loss, grads], nonfinite,
                                  overflow)
    if state_sharding is not None:
        new_state = jax.lax.with_sharding_constraint(new_state, state_sharding)
    return new_state, task.compute_metrics(outputs, batch["targets"], per_example_loss,
                                           axis_name=axis_name)


def train_step_into(state: TrainState, metrics, batch, **step_args):
    """train_step, its metrics merged into the running `metrics` inside the same jitted call: the
    per-step path dispatches one call per step and nothing else."""
    state, step_metrics = train_step(state, batch, **step_args)
    return state, metrics.merge(step_metrics)


def in_float32(outputs):
    """A model's floating-point outputs in float32: losses and metrics are computed in it, whatever
    the model computes in."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, outputs)


def all_finite(values):
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(values)]))


def rescaled(loss_scale, finite):
    """The loss scale (Flax's DynamicScale) after a step whose gradients were `finite` or not, by
    DynamicScale's own rule: times backoff_factor on an overflow, times growth_factor after
    growth_interval finite steps in a row. Written out because its value_and_grad cannot wrap a
    step whose microbatches accumulate in a scan."""
    grow = loss_scale.fin_steps == loss_scale.growth_interval
    grown = jnp.minimum(loss_scale.scale * loss_scale.growth_factor, jnp.finfo(jnp.float32).max)
    backed_off = loss_scale.scale * loss_scale.backoff_factor
    if loss_scale.minimum_scale is not None:
        backed_off = jnp.maximum(backed_off, loss_scale.minimum_scale)
    return loss_scale.replace(
        scale=jnp.where(finite, jnp.where(grow, grown, loss_scale.scale), backed_off),
        fin_steps=jnp.where(grow | ~finite, 0, loss_scale.fin_steps + 1))


def skip_if_nonfinite(state, new_state, values, nonfinite, overflow=None):
    """Keeps the old params, optimizer state, model state and moving average where `values` hold a
    NaN or an Inf, and counts it; the step still advances, since the batch was consumed. The loop
    stops the run or goes on, as `nonfinite` says; either way no non-finite state is ever saved.
    `overflow`: gradients that overflowed a loss scale, kept from the state alike but not counted
    (the scale was lowered for the next step)."""
    finite = all_finite(values)
    apply = finite & (state.nonfinite_updates == 0) if nonfinite == "stop" else finite
    if overflow is not None:  # not applied (its values are not finite), not counted
        finite = finite | overflow

    def keep(new, old):
        return jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)

    return new_state.replace(
        params=keep(new_state.params, state.params),
        opt_state=keep(new_state.opt_state, state.opt_state),
        model_state=keep(new_state.model_state, state.model_state),
        ema_params=keep(new_state.ema_params, state.ema_params),
        nonfinite_updates=state.nonfinite_updates + jnp.where(finite, 0, 1),
        first_nonfinite_step=jnp.where(finite | (state.first_nonfinite_step >= 0),
                                       state.first_nonfinite_step, state.step))


def eval_step(state: TrainState, batch, *, task, prepare_inputs, metrics, gather=False,
              axis_name=None):
    """The metrics (trainer/metrics.py's `metrics`) of `batch`, whose examples with batch["mask"]
    0 are padding and do not count; with `gather`, also the whole batch's outputs, targets and mask
    on every device, for the host's evaluators (else None)."""
    outputs, _ = state.model.apply(state.params, state.model_state,
                                   prepare_inputs(batch["inputs"]), False)
    outputs = in_float32(outputs)
    per_example_loss = task.loss(outputs, batch["targets"])
    computed = metrics.on_device(outputs, batch["targets"], per_example_loss, batch["mask"],
                                 axis_name=axis_name)
    if not gather:
        return computed, None
    rows = {"outputs": outputs, "targets": batch["targets"], "mask": batch["mask"]}
    return computed, jax.lax.all_gather(rows, axis_name, tiled=True) if axis_name else rows
