"""The usual hand-written JAX training loop: the baseline scripts/benchmark.py holds the framework to.

A numpy shuffle each epoch, batches cut on the host, one jitted step per batch, then the test
accuracy, as the Flax examples and the classic tutorials write it. Same model, data, optimizer and
schedule as the config (a classification config); none of the framework's runtime setup (no
compilation cache, glibc's default malloc settings), as a user's own script would run.

    python scripts/hand_loop.py --config=configs/mnist_cnn.py --config.dataset.data_dir=DIR --epochs=1
"""
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position
from flax.training import train_state  # pylint: disable=wrong-import-position

from trainer.optim import create_optimizer  # pylint: disable=wrong-import-position
from trainer.model import linen_module  # pylint: disable=wrong-import-position
from trainer.setup import build_dataset  # pylint: disable=wrong-import-position


class HandState(train_state.TrainState):
    batch_stats: dict


def train_and_evaluate(config, epochs):
    """Returns {"epoch_seconds": [...], "accuracy": test accuracy, "steps_per_epoch": ...}."""
    data = build_dataset(config.dataset)
    model = linen_module(config.model)
    steps_per_epoch = data.num_train // config.batch_size
    tx, _ = create_optimizer(config.optimizer, steps_per_epoch, epochs * steps_per_epoch)
    images = data.prepare_inputs
    variables = model.init(jax.random.PRNGKey(config.seed), images(data.train["inputs"][:1]))
    state = HandState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))

    @jax.jit
    def train_step(state, x, y):
        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats}, images(x), train=True,
                mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
        grads, updates = jax.grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))

    @jax.jit
    def correct(state, x, y):
        logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                images(x), train=False)
        return jnp.sum(jnp.argmax(logits, -1) == y)

    rng = np.random.default_rng(config.seed)
    epoch_seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(data.num_train)
        for i in range(steps_per_epoch):
            rows = order[i * config.batch_size:(i + 1) * config.batch_size]
            state = train_step(state, data.train["inputs"][rows], data.train["targets"][rows])
        jax.block_until_ready(state)
        epoch_seconds.append(time.perf_counter() - start)
    test, size = data.test, config.eval_batch_size
    right = sum(int(correct(state, test["inputs"][i:i + size], test["targets"][i:i + size]))
                for i in range(0, len(test["targets"]), size))
    return {"epoch_seconds": epoch_seconds, "accuracy": right / len(test["targets"]),
            "steps_per_epoch": steps_per_epoch}


if __name__ == "__main__":
    from absl import app, flags  # pylint: disable=g-import-not-at-top
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

    CONFIG = config_flags.DEFINE_config_file("config", None, "A classification config file.")
    EPOCHS = flags.DEFINE_integer("epochs", 1, "Epochs to train.")
    app.run(lambda argv: print(json.dumps(train_and_evaluate(CONFIG.value, EPOCHS.value))))
