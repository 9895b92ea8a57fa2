"""How the loop gets its steps done, and which way (`config.steps`):

  fused     the training split in device memory, many steps a jitted call (trainer/fused.py);
  per_step  a jitted call per batch, batches cut on the host and prefetched to the device;
  auto      fused where the split fits and the backend runs it well (see use_fused_steps).

Either way `run` returns after at most about CHUNK_SECONDS of device work, measured as it goes, so
a Ctrl-C or SIGTERM is answered within about that long, whatever the step time.
"""
import collections
import time

import jax

import datasets
from trainer import batching, fused
from trainer.steps import train_step_into

CHUNK_SECONDS = 0.5
CHUNK_GROWTH = 10  # a chunk is at most this many times the last, so one fast sample cannot overshoot


def step_args(config, setup, **changed):
    """The train step's settings (steps.train_step): the same on both paths; `changed`: some of
    them otherwise (preflight.py counts FLOPs without accumulation)."""
    return {**dict(task=setup.task, prepare_inputs=setup.dataset.prepare_inputs,
                   nonfinite=config.nonfinite, grad_accum_steps=config.grad_accum_steps,
                   # Measured (docs/speed.md): on the CPU a loop over microbatches costs 8x for
                   # the CNN, unrolled nothing; elsewhere the loop keeps one microbatch's
                   # activations.
                   unroll_accumulation=jax.default_backend() == "cpu",
                   ema_decay=config.ema_decay,
                   state_sharding=setup.parallel.step_sharding(setup.state)), **changed}


def jitted_steps(config, setup, fused_path):
    """The run's jitted steps, made once for a setup: fused.train_steps or a train step a call.
    The check before a run (preflight.py) compiles this very function, so its compile is the
    run's (JAX's cache), not a second one."""
    key = "fused" if fused_path else "per_step"
    if key not in setup.jitted:
        parallel = setup.parallel
        if fused_path:
            # fused.train_steps(state, data, order, metrics, start_step, num_steps): the last two
            # are plain numbers, the same for every device.
            setup.jitted[key] = parallel.compile(
                fused.train_steps, donate_state=True, host_values=(4, 5),
                steps_per_epoch=setup.steps_per_epoch, batch_size=config.batch_size,
                batch_sharding=parallel.batch_sharding, **step_args(config, setup))
        else:
            setup.jitted[key] = parallel.compile(train_step_into, donate_state=True,
                                                 **step_args(config, setup))
    return setup.jitted[key]


def fits_on_device(split):
    """Whether a training split takes under a quarter of a device's memory (unknown: assume so)."""
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    return limit is None or sum(a.nbytes for a in split.values()) < limit // 4


def has_convolution(setup):
    """Whether the model's forward pass has a convolution (traced, not run)."""
    state, dataset = setup.state, setup.dataset
    forward = jax.make_jaxpr(lambda state, inputs: state.model.apply(
        state.params, state.model_state, inputs, False))
    return "conv_general_dilated" in str(forward(state, dataset.prepare_inputs(
        datasets.examples(dataset.train, [0])["inputs"])))


def use_fused_steps(config, setup):
    if config.steps != "auto":
        return config.steps == "fused"
    # Measured (docs/speed.md): fused is the faster path (an MLP on the CPU, the CNN on an H100)
    # but for convolutions on the CPU, which XLA runs ~10x slower inside a loop (jax-ml/jax#12868).
    # A streamed or augmented split is read on the host: per step.
    return not setup.streams and fits_on_device(setup.dataset.train) and not (
        jax.default_backend() == "cpu" and has_convolution(setup))


def wait_for(tree):
    """Waits for `tree` to be computed in short sleeps rather than one blocking call: Python runs
    signal handlers only between bytecodes, so a Ctrl-C is seen while the device works."""
    leaves = jax.tree.leaves(tree)
    while not all(leaf.is_ready() for leaf in leaves):
        time.sleep(0.001)


class FusedSteps:
    """Chunks of steps in one call each, on the training split held in device memory."""
    description = "fused: the training split in device memory, many steps a call"
    waits_each_call = True  # for the chunk's metrics: reading the state then costs nothing more

    def __init__(self, config, setup):
        parallel, dataset = setup.parallel, setup.dataset
        self.parallel, self.seed, self.data_order = parallel, config.seed, dataset.order
        self.steps_per_epoch = setup.steps_per_epoch
        self.num_examples = datasets.num_examples(dataset.train)  # the host's: pmap adds an axis
        self.data = parallel.put_replicated(dataset.train)
        self.steps = jitted_steps(config, setup, fused_path=True)
        self.chunk = 1  # the first call compiles; later ones are sized by the time measured
        self.epoch, self.order = None, None

    def run(self, state, metrics, step, boundary):
        """Steps from `step` towards `boundary`; returns (state, metrics, the step reached)."""
        epoch = step // self.steps_per_epoch
        if epoch != self.epoch:  # chunks never cross an epoch's end
            self.epoch, self.order = epoch, self.parallel.put_replicated(batching.epoch_order(
                self.seed, epoch, self.num_examples, self.data_order))
        count = min(boundary - step, self.chunk)
        start = time.perf_counter()
        state, metrics = self.steps(state, self.data, self.order, metrics, step, count)
        wait_for(metrics)
        seconds = time.perf_counter() - start
        self.chunk = max(1, min(CHUNK_GROWTH * count, int(count * CHUNK_SECONDS / seconds)))
        return state, metrics, step + count

    def close(self):
        pass


class PerStep:
    """One call per step, on batches from the host (2 prefetched to the device): cut from
    in-memory arrays, or streamed by the pipeline's workers."""
    description = "a call per step, batches from the host (2 prefetched to the device)"
    waits_each_call = False  # steps stay queued on the device: the state is read at logs only

    def __init__(self, config, setup, start_step):
        parallel = setup.parallel
        self.batches = batching.prefetch(setup.train_batches(start_step), parallel.put_batch)
        self.one_step = jitted_steps(config, setup, fused_path=False)
        # Steps queued on the device at most: dispatch runs ahead of the device, and a stop must
        # not wait for a long queue. On the CPU with several devices, more than one deadlocks.
        self.depth = 1 if parallel.one_step_in_flight else 2
        self.in_flight = collections.deque()

    def run(self, state, metrics, step, boundary):
        del boundary  # one step a call
        state, metrics = self.one_step(state, metrics, next(self.batches))
        self.in_flight.append(metrics)
        if len(self.in_flight) >= self.depth:
            jax.block_until_ready(self.in_flight.popleft())
        return state, metrics, step + 1

    def close(self):
        """Ends the streaming pipeline's workers, where a stop leaves batches unread."""
        self.batches.close()


def make_runner(config, setup, start_step):
    if use_fused_steps(config, setup):
        return FusedSteps(config, setup)
    return PerStep(config, setup, start_step)
