"""Speed of the framework against a plain hand-written JAX loop, side by side in one run.

    python scripts/benchmark.py --config=configs/mnist_cnn.py --config.dataset.data_dir=DIR \
        --epochs=1 --out=benchmark.json

Two measurements, each a JSON section and a table:
  in_process  the same model, optimizer, batches and epochs three ways in this process: the hand-
              written loop (numpy shuffle, host batches, one jitted step per batch, as the Flax
              examples and tutorials do), the framework's per-step path and its fused path.
              Examples/s is the median over the epochs after the first; compile seconds come
              from JAX's own compile events; peak device memory where the backend reports it.
  command     the whole command as a user runs it, start-up, data loading and compile included:
              scripts/train.py for --command_epochs against the hand-written loop doing the same
              epochs and evaluation as its own process,
              alternating, --repeats times each; medians and their ratio (train.py / hand loop).
"""
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position
from flax.training import train_state  # pylint: disable=wrong-import-position

import datasets  # pylint: disable=wrong-import-position
import models  # pylint: disable=wrong-import-position
from trainer import cli  # pylint: disable=wrong-import-position
from trainer.loop import train_and_evaluate  # pylint: disable=wrong-import-position
from trainer.optim import create_optimizer  # pylint: disable=wrong-import-position

EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs each way; the first, which compiles, is not "
                              "timed in the in_process section.", lower_bound=2)
COMMAND_EPOCHS = flags.DEFINE_integer("command_epochs", 1, "Epochs of each whole command.")
REPEATS = flags.DEFINE_integer("repeats", 2, "Whole commands run this many times each.")
SECTIONS = flags.DEFINE_list("sections", ["in_process", "command"], "What to measure.")
OUT = flags.DEFINE_string("out", None, "Write the JSON here too.")
HAND_LOOP_ONLY = flags.DEFINE_bool("hand_loop_only", False,
                                   "Internal: run the hand-written loop as a whole command.")

COMPILE_SECONDS = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: COMPILE_SECONDS.append(seconds)
    if name.startswith("/jax/core/compile/") else None)


def peak_memory():
    stats = jax.local_devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


class HandState(train_state.TrainState):
    batch_stats: dict


def hand_written_loop(config, epochs):
    """What a user writes by hand: no framework, one jitted step per batch."""
    data = datasets.get_dataset(config.dataset)
    model = models.get_model(config.model)
    steps_per_epoch = data.num_train // config.batch_size
    tx, _ = create_optimizer(config.optimizer, steps_per_epoch, epochs * steps_per_epoch)
    images = lambda x: data.prepare_inputs(x)  # pylint: disable=unnecessary-lambda-assignment
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


def framework_run(config, epochs, steps, steps_per_epoch):
    config = config.copy_and_resolve_references()
    config.steps, config.num_epochs, config.num_steps = steps, epochs, 0
    config.plots, config.log_every_steps = False, steps_per_epoch  # each epoch's log times it
    config.checkpoint_every_steps = 10**9  # at the end only
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        _, metrics = train_and_evaluate(config, workdir)
        seconds = time.perf_counter() - start
        with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
            logged = [json.loads(line) for line in f]
    rates = [e["steps_per_sec"] for e in logged if "steps_per_sec" in e]
    return seconds, rates, metrics["accuracy"]


def summary(name, steps_per_epoch, batch_size, steady_step_seconds, compile_seconds, accuracy,
            wall_seconds):
    return {"name": name, "examples_per_sec": round(batch_size / steady_step_seconds, 1),
            "seconds_per_step": round(steady_step_seconds, 6),
            "seconds_per_epoch": round(steady_step_seconds * steps_per_epoch, 3),
            "compile_seconds": round(compile_seconds, 2), "wall_seconds": round(wall_seconds, 2),
            "peak_device_bytes": peak_memory(), "test_accuracy": round(accuracy, 4)}


def in_process(config, epochs):
    rows = []
    COMPILE_SECONDS.clear()
    start = time.perf_counter()
    hand = hand_written_loop(config, epochs)
    wall = time.perf_counter() - start
    spe, compile_seconds = hand["steps_per_epoch"], sum(COMPILE_SECONDS)
    rows.append(summary("hand-written loop", spe, config.batch_size,
                        statistics.median(hand["epoch_seconds"][1:]) / spe, compile_seconds,
                        hand["accuracy"], wall))
    for steps in ("per_step", "fused"):
        COMPILE_SECONDS.clear()
        wall, rates, accuracy = framework_run(config, epochs, steps, spe)
        rows.append(summary(f"framework, {steps}", spe, config.batch_size,
                            1 / statistics.median(rates[1:]), sum(COMPILE_SECONDS), accuracy, wall))
    return rows


def whole_commands(config_args, epochs, repeats):
    """Alternating, so that the machine's drift falls on both alike."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    times = {"train.py": [], "hand-written loop": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as workdir:
            commands = {
                "train.py": [sys.executable, str(repo / "scripts" / "train.py"), *config_args,
                             f"--config.num_epochs={epochs}", f"--workdir={workdir}"],
                "hand-written loop": [sys.executable, __file__, *config_args,
                                      f"--command_epochs={epochs}", "--hand_loop_only"]}
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                times[name].append(round(time.perf_counter() - start, 2))
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"seconds": times, "median_seconds": medians,
            "ratio_train_py_to_hand_loop": round(medians["train.py"] / medians["hand-written loop"],
                                                 3)}


def main(argv):
    del argv
    config = cli.CONFIG.value
    if HAND_LOOP_ONLY.value:
        print(json.dumps(hand_written_loop(config, COMMAND_EPOCHS.value)))
        return
    results = {"config": sys.argv[1:], "epochs": EPOCHS.value,
               "command_epochs": COMMAND_EPOCHS.value, "machine": {
        "backend": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()],
        "cpu_count": os.cpu_count(), "jax": jax.__version__}}
    if "in_process" in SECTIONS.value:
        results["in_process"] = in_process(config, EPOCHS.value)
        columns = list(results["in_process"][0])
        print(" | ".join(columns))
        for row in results["in_process"]:
            print(" | ".join(str(row[c]) for c in columns))
    if "command" in SECTIONS.value:
        config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
        results["command"] = whole_commands(config_args, COMMAND_EPOCHS.value, REPEATS.value)
        print(json.dumps(results["command"]))
    print(json.dumps(results))
    if OUT.value:
        with open(OUT.value, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
