"""Speed of the framework against a plain hand-written JAX loop, side by side in one run.

    python scripts/benchmark.py --config=configs/mnist_cnn.py --config.dataset.data_dir=DIR \
        --out=benchmark.json

For a classification config. Three measurements, each a JSON section and a table:
  in_process  the same model, optimizer, batches and epochs, up to four ways (--ways), one after
              the other in this process, which runs with the framework's malloc settings: the
              hand-written loop of scripts/hand_loop.py, the framework's per-step path and its
              fused path on the in-memory arrays, and `streaming`, the per-step path on the same
              data streamed from ArrayRecord shards (--records, written by
              scripts/prepare_data.py) and decoded in the pipeline's workers. Examples/s is the
              median over the epochs after the first; compile seconds come from JAX's own
              compile events (the persistent cache is off here); peak device memory where the
              backend reports it.
  pipeline    the streaming pipeline alone, no model: host examples/s by worker count
              (--pipeline_workers), over --records and over 32x32x3 PNG records with random crop
              and flip (the shape of CIFAR; made here, random pixels).
  against     the per-step path of --config against that of --against, another config of
              another model on the same data (configs/mnist_cnn_nnx.py, the CNN in NNX, against
              configs/mnist_cnn.py): alternating, --repeats times each, --against_steps steps;
              examples/s (the median of the logged rates but each run's first) and the ratio.
  accumulation  the compiled train step by config.grad_accum_steps (--accum_steps), its
              microbatches in a scan and unrolled: memory from XLA's memory analysis (the
              temporaries fall with k in a scan) and steps/s (the same examples a step).
  fsdp        data parallel against the state sharded over every device (config.mesh fsdp=N;
              run with N devices, e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8 and
              --config=configs/wide_mlp.py): per-device bytes of the compiled train step, from
              XLA's memory analysis (arguments + outputs - donated + temporaries), the state's
              bytes on device 0, and the median seconds of --fsdp_steps steps, each way.
  checkpoint  what a save costs (--saves of the config's fresh state): the checksums of every
              array, the blocking part of Orbax's save (which includes them) and the whole save.
  evaluation  what named metrics cost: a whole evaluation of the test split (the config's
              eval_batch_size, the config's fresh state) three ways, alternating, --eval_repeats
              times each after one untimed (compiling) run of each: `today`, the eval step as it
              was before trainer/metrics.py (the task's compute_metrics, loss and accuracy),
              merged over the batches as evaluation.evaluate then did; `loss_accuracy`, the
              framework's eval step and evaluate with metrics ("loss", "accuracy"); and
              `all_metrics`, with every classification metric (EVAL_ALL_METRICS); each round
              starts with another way. The median ms an evaluation each way and the ratios
              loss_accuracy / today and all_metrics / loss_accuracy; also of the minima, less
              touched by other work on the machine.
  language_model  a language model's config alone (configs/shakespeare_lm.py): real tokens/s
              of the framework (its logged tokens_per_sec) against a plain jitted loop of the same
              transformer and batch (hand_language_model), --lm_steps steps each, alternating,
              --repeats times; the ratio of the medians.
  command     whole commands as a user runs them, start-up, data loading and compile included,
              --command_epochs of training and the test evaluation, alternating, --repeats times
              each: scripts/train.py (its first run with an empty compilation cache, the others
              warm), scripts/hand_loop.py as a user's own script runs (glibc's default malloc
              settings, no compilation cache), and hand_loop.py with the framework's malloc
              settings (trainer/host_memory.py), to show what they alone are worth.
"""
import dataclasses
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout first

from trainer import host_memory  # pylint: disable=wrong-import-position

host_memory.restart_with_reusing_malloc()  # before JAX allocates anything

import jax  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position
from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=wrong-import-position

import hand_loop  # pylint: disable=wrong-import-position  (scripts/, this file's folder)
import datasets  # pylint: disable=wrong-import-position
from datasets import array_record, images  # pylint: disable=wrong-import-position
from datasets.augment import Augment  # pylint: disable=wrong-import-position
from trainer import cli, evals, evaluation, input_pipeline, sharding  # pylint: disable=wrong-import-position
from trainer.checkpoint import Checkpoints, checksums  # pylint: disable=wrong-import-position
from trainer.loop import train_and_evaluate  # pylint: disable=wrong-import-position
from trainer.model import linen_module  # pylint: disable=wrong-import-position
from trainer.optim import create_optimizer  # pylint: disable=wrong-import-position
from trainer.runners import step_args  # pylint: disable=wrong-import-position
from trainer.setup import build, build_dataset  # pylint: disable=wrong-import-position
from trainer.steps import train_step  # pylint: disable=wrong-import-position

SCRIPTS = pathlib.Path(__file__).resolve().parent
EVAL_ALL_METRICS = ("loss", "accuracy", "top5_accuracy", "precision", "recall", "f1",
                    "confusion_matrix", "per_class_accuracy")
EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs each way; the first, which compiles, is not "
                              "timed in the in_process section.", lower_bound=2)
COMMAND_EPOCHS = flags.DEFINE_integer("command_epochs", 1, "Epochs of each whole command.")
REPEATS = flags.DEFINE_integer("repeats", 3, "Whole commands run this many times each.")
WAYS = flags.DEFINE_multi_enum(
    "ways", ["hand_loop", "per_step", "fused"], ["hand_loop", "per_step", "fused", "streaming"],
    "In-process: which ways to run, in this order (the fused CNN on a CPU takes ~8 min an "
    "epoch; streaming needs --records).")
SECTIONS = flags.DEFINE_list("sections", ["in_process", "command"],
                             "What to measure: in_process, command, pipeline, against, "
                             "accumulation, fsdp, checkpoint, evaluation; language_model alone, "
                             "with a language model's config.")
ACCUM_STEPS = flags.DEFINE_list("accum_steps", ["1", "2", "4", "8"],
                                "accumulation: the grad_accum_steps to compile.")
ACCUM_TIMED_STEPS = flags.DEFINE_integer("accum_timed_steps", 10,
                                         "accumulation: steps timed each way.")
FSDP_STEPS = flags.DEFINE_integer("fsdp_steps", 3, "fsdp: steps timed each way.")
SAVES = flags.DEFINE_integer("saves", 10, "checkpoint: saves timed.")
EVAL_REPEATS = flags.DEFINE_integer("eval_repeats", 7, "evaluation: timed evaluations each way, "
                                    "alternating.", lower_bound=1)
RECORDS = flags.DEFINE_string("records", None, "ArrayRecord shards of the config's data set "
                              "(scripts/prepare_data.py), for `streaming` and `pipeline`.")
PIPELINE_WORKERS = flags.DEFINE_list("pipeline_workers", ["0", "1", "2"],
                                     "pipeline: the worker counts to measure.")
PIPELINE_STEPS = flags.DEFINE_integer("pipeline_steps", 200, "pipeline: batches timed each way.")
LM_STEPS = flags.DEFINE_integer("lm_steps", 500, "language_model: steps of each run.")
OUT = flags.DEFINE_string("out", None, "Write the JSON here too.")
AGAINST = config_flags.DEFINE_config_file("against", None, "against: a config of another model; "
                                          "its data set is --config's.")
AGAINST_STEPS = flags.DEFINE_integer("against_steps", 300, "against: steps of each run.")

COMPILE_SECONDS = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: COMPILE_SECONDS.append(seconds)
    if name.startswith("/jax/core/compile/") else None)


def peak_memory():
    stats = jax.local_devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def framework_run(config, epochs, steps, steps_per_epoch):
    config = config.copy_and_resolve_references()
    if steps == "streaming":
        config.dataset = ml_collections.ConfigDict(dict(name="array_record",
                                                        data_dir=RECORDS.value))
        steps = "per_step"
    config.steps, config.num_epochs, config.num_steps = steps, epochs, 0
    config.plots, config.log_every_steps = False, steps_per_epoch  # each epoch's log times it
    config.checkpoint_every_steps = 10**9  # at the end only
    # As the hand loop trains: on all of train, the test split evaluated at the end, no selection.
    config.validation.fraction, config.evals, config.best_metric = 0.0, {}, ""
    with tempfile.TemporaryDirectory() as workdir:
        metrics = train_and_evaluate(config, workdir).final
        with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
            logged = [json.loads(line) for line in f]
    rates = [e["steps_per_sec"] for e in logged if "steps_per_sec" in e]
    return rates, metrics["eval/accuracy"]


def summary(name, steps_per_epoch, batch_size, steady_step_seconds, compile_seconds, accuracy,
            wall_seconds):
    return {"name": name, "examples_per_sec": round(batch_size / steady_step_seconds, 1),
            "seconds_per_step": round(steady_step_seconds, 6),
            "seconds_per_epoch": round(steady_step_seconds * steps_per_epoch, 3),
            "compile_seconds": round(compile_seconds, 2), "wall_seconds": round(wall_seconds, 2),
            "peak_device_bytes": peak_memory(), "test_accuracy": round(accuracy, 4)}


def in_process(config, epochs, ways):
    """Each way of `ways`, in that order."""
    rows = []
    steps_per_epoch = build_dataset(config.dataset).num_train // config.batch_size
    for way in ways:
        COMPILE_SECONDS.clear()
        start = time.perf_counter()
        if way == "hand_loop":
            hand = hand_loop.train_and_evaluate(config, epochs)
            step_seconds = statistics.median(hand["epoch_seconds"][1:]) / steps_per_epoch
            name, accuracy = "hand-written loop", hand["accuracy"]
        else:
            rates, accuracy = framework_run(config, epochs, way, steps_per_epoch)
            step_seconds, name = 1 / statistics.median(rates[1:]), f"framework, {way}"
        rows.append(summary(name, steps_per_epoch, config.batch_size, step_seconds,
                            sum(COMPILE_SECONDS), accuracy, time.perf_counter() - start))
    return rows


def against(config, other, steps, repeats):
    """{"config": ..., "against": ..., "ratio": against / config} of examples/s on the per-step
    path, the two configs alternating so that the machine's drift falls on both alike."""
    rates = {"config": [], "against": []}
    other = other.copy_and_resolve_references()
    other.dataset = config.dataset
    for _ in range(repeats):
        for name, run_config in (("config", config), ("against", other)):
            run_config = run_config.copy_and_resolve_references()
            run_config.steps, run_config.num_steps, run_config.num_epochs = "per_step", steps, 0
            run_config.log_every_steps = steps // 5
            run_config.eval_every_epochs, run_config.eval_every_steps = 0, 0
            run_config.checkpoint_every_steps, run_config.plots = 10**9, False
            with tempfile.TemporaryDirectory() as workdir:
                train_and_evaluate(run_config, workdir)
                with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
                    logged = [json.loads(line) for line in f]
            rates[name] += [e["steps_per_sec"] for e in logged if "steps_per_sec" in e][1:]
    result = {name: {"model": run_config.model.name,
                     "examples_per_sec": round(statistics.median(r) * config.batch_size, 1),
                     "rates_logged": len(r)}
              for name, r, run_config in (("config", rates["config"], config),
                                          ("against", rates["against"], other))}
    result["ratio"] = round(result["against"]["examples_per_sec"]
                            / result["config"]["examples_per_sec"], 3)
    return result


def pipeline_rate(source, augment, batch_size, workers, steps):
    """Examples/s of the streaming pipeline alone, after its first batches (worker start-up)."""
    order = dict(seed=0, batch_size=batch_size, steps_per_epoch=len(source) // batch_size,
                 process_index=0, process_count=1)
    batches = input_pipeline.train_batches(source, 0, steps + 10, augment=augment,
                                           workers=workers, buffer=2, **order)
    for _ in range(10):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    seconds = time.perf_counter() - start
    batches.close()
    return round(steps * batch_size / seconds, 1)


def cifar_shaped_records(folder, count=10000):
    """32x32x3 PNG records of random pixels (decoding cost does not depend on the content much)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        writer = ArrayRecordWriter(os.path.join(folder, f"{split}-00000-of-00001.array_record"),
                                   "group_size:1")
        for label in range(count if split == "train" else 10):
            writer.write(array_record.encode(images.encode_png(
                rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)), label % 10))
        writer.close()


def pipeline(batch_size, worker_counts, steps):
    """{data: {workers: examples/s}}, MNIST records plain and CIFAR-shaped ones with crop+flip."""
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        cifar_shaped_records(folder)
        cases = {"mnist 28x28x1": (RECORDS.value, None),
                 "32x32x3, crop+flip": (folder, Augment(crop_padding=4, flip=True))}
        for name, (records, augment) in cases.items():
            source = array_record.load(records).train
            rows[name] = {workers: pipeline_rate(source, augment, batch_size, int(workers), steps)
                          for workers in worker_counts}
    return rows


def accumulation(config, accum_steps, steps):
    """{"k=K, FORM": memory and speed} of the per-step train step compiled with
    grad_accum_steps=K, its microbatches in a scan or unrolled (FORM; the framework unrolls on
    the CPU), on one batch: bytes from XLA's memory analysis, the median of `steps` timed steps."""
    rows = {}
    for k in map(int, accum_steps):
        for unrolled in ((False,) if k == 1 else (False, True)):
            config = config.copy_and_resolve_references()
            config.grad_accum_steps = k
            setup = build(config)
            batch = setup.parallel.put_batch(next(setup.train_batches(0)))
            step = jax.jit(functools.partial(train_step, **{
                **step_args(config, setup), "unroll_accumulation": unrolled}))
            compiled = step.lower(setup.state, batch).compile()
            memory = compiled.memory_analysis()
            state, seconds = setup.state, []
            for _ in range(steps + 1):  # the first is not timed
                start = time.perf_counter()
                state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)
                seconds.append(time.perf_counter() - start)
            rows[f"k={k}, {'unrolled' if unrolled else 'scan'}"] = {
                "temp_bytes": memory.temp_size_in_bytes,
                "argument_bytes": memory.argument_size_in_bytes,
                "steps_per_sec": round(1 / statistics.median(seconds[1:]), 2)}
    first = rows["k=1, scan"]["steps_per_sec"]
    for row in rows.values():
        row["speed_of_k_1"] = round(row["steps_per_sec"] / first, 3)
    return rows


def sharded_against_replicated(config, steps):
    """The train step data parallel and with the state sharded over every device (the same batch,
    one device's view); the ratios fsdp / data parallel."""
    rows = {}
    for name, (data, fsdp) in (("fsdp", (1, -1)), ("data_parallel", (-1, 1))):
        config = config.copy_and_resolve_references()
        config.mesh.data, config.mesh.fsdp = data, fsdp
        setup = build(config)
        batch = setup.parallel.put_batch(next(setup.train_batches(0)))
        step = jax.jit(functools.partial(train_step, **step_args(config, setup)),
                       donate_argnums=(0,))
        compiled = step.lower(setup.state, batch).compile()
        memory = compiled.memory_analysis()
        state = setup.state
        state_bytes = sharding.bytes_on(state, jax.devices()[0])
        rows["parameters"] = sum(x.size for x in jax.tree.leaves(state.params))
        seconds = []
        for _ in range(steps + 1):  # the first is not timed
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            seconds.append(time.perf_counter() - start)
        del state, setup  # data parallel's copies need the room
        rows[name] = {
            "mesh": f"data={jax.device_count() if data < 0 else data}, "
                    f"fsdp={jax.device_count() if fsdp < 0 else fsdp}",
            "per_device_bytes": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                 - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
            "temp_bytes": memory.temp_size_in_bytes, "argument_bytes": memory.argument_size_in_bytes,
            "state_bytes_on_device_0": state_bytes,
            "seconds_per_step": round(statistics.median(seconds[1:]), 4)}
    fsdp, replicated = rows["fsdp"], rows["data_parallel"]
    rows["devices"] = jax.device_count()
    rows["memory_ratio"] = round(fsdp["per_device_bytes"] / replicated["per_device_bytes"], 4)
    rows["step_time_ratio"] = round(fsdp["seconds_per_step"] / replicated["seconds_per_step"], 3)
    return rows


def checkpoint_cost(config, saves):
    """Median seconds of a save of the config's fresh state: the checksums alone, the blocking
    part of Checkpoints.save (checksums included) and the save to its end on disk."""
    state = build(config).state
    times = {"checksums": [], "save_call": [], "whole_save": []}
    with tempfile.TemporaryDirectory() as workdir:
        checkpoints = Checkpoints(workdir, keep=2)
        for step in range(1, saves + 1):
            state = state.replace(step=jax.numpy.asarray(step, state.step.dtype))
            start = time.perf_counter()
            jax.device_get(checksums(state))
            times["checksums"].append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpoints.save(state)
            times["save_call"].append(time.perf_counter() - start)
            checkpoints.wait()
            times["whole_save"].append(time.perf_counter() - start)
        checkpoints.close()
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    medians = {f"{name}_seconds": round(statistics.median(t), 5) for name, t in times.items()}
    return {"state_bytes": state_bytes, **medians, "checksum_share_of_save_call": round(
        medians["checksums_seconds"] / medians["save_call_seconds"], 3)}


def todays_eval_step(state, batch, *, task, prepare_inputs, axis_name=None):
    """The eval step before named metrics (trainer/steps.py before trainer/metrics.py): the loss
    and accuracy of the task's compute_metrics, which the train step still uses."""
    outputs, _ = state.model.apply(state.params, state.model_state,
                                   prepare_inputs(batch["inputs"]), False)
    per_example_loss = task.loss(outputs, batch["targets"])
    return task.compute_metrics(outputs, batch["targets"], per_example_loss, mask=batch["mask"],
                                axis_name=axis_name)


def todays_evaluate(eval_fn, state, batches, parallel):
    """todays_eval_step over `batches`, merged as evaluation.evaluate did before named metrics."""
    total = None
    for batch in batches:
        metrics = parallel.to_host(eval_fn(state, parallel.put_batch(batch)))
        total = metrics if total is None else total.merge(metrics)
    return {name: float(value) for name, value in total.compute().items()}


def evaluation_cost(config, repeats):
    """{"ways": {way: ms an evaluation, ...}, ratios} of a whole evaluation of the test split,
    batches cut by batching.eval_batches (setup.eval_batches), three ways, alternating so that the
    machine's drift falls on all alike; each way's first run (its compile) is not timed."""
    setup = build(config)
    state, parallel = setup.parallel.to_device_form(setup.state), setup.parallel
    test = evals.Evaluation("test", split="test")
    todays_fn = parallel.compile(todays_eval_step, task=setup.task,
                                 prepare_inputs=setup.dataset.prepare_inputs)

    def named(way, names):  # the framework's evaluation of the test split with metrics `names`
        each = dataclasses.replace(test, name=way, metrics=names)
        eval_fn = evaluation.compile_eval(setup, [each])[way]
        return names, lambda: evaluation.evaluate(eval_fn, state, setup.eval_batches(each),
                                                  parallel, setup.metrics_of(each))

    runs = {"today": (("loss", "accuracy"), lambda: todays_evaluate(
                todays_fn, state, setup.eval_batches(test), parallel)),
            "loss_accuracy": named("loss_accuracy", ("loss", "accuracy")),
            "all_metrics": named("all_metrics", EVAL_ALL_METRICS)}
    rows, seconds = {}, {way: [] for way in runs}
    for way, (names, run) in runs.items():
        COMPILE_SECONDS.clear()
        start = time.perf_counter()
        values = run()
        rows[way] = {"metrics": list(names), "loss": round(values["loss"], 5),
                     "accuracy": round(values["accuracy"], 5),
                     "first_run_seconds": round(time.perf_counter() - start, 3),
                     "compile_seconds": round(sum(COMPILE_SECONDS), 3)}
    ways = list(runs)
    for repeat in range(repeats):  # each round in turn starts with another way
        for way in ways[repeat % 3:] + ways[:repeat % 3]:
            start = time.perf_counter()
            runs[way][1]()
            seconds[way].append(time.perf_counter() - start)
    for way, row in rows.items():
        row["ms_per_evaluation"] = round(statistics.median(seconds[way]) * 1000, 2)
        row["ms_min"] = round(min(seconds[way]) * 1000, 2)
        row["ms"] = [round(s * 1000, 2) for s in seconds[way]]
    result = {"examples": datasets.num_examples(setup.dataset.test),
              "eval_batch_size": config.eval_batch_size, "repeats": repeats, "ways": rows}
    for of, key in (("", "ms_per_evaluation"), ("_of_minima", "ms_min")):
        ms = {way: row[key] for way, row in rows.items()}
        result[f"ratio_loss_accuracy_to_today{of}"] = round(ms["loss_accuracy"] / ms["today"], 3)
        result[f"ratio_all_metrics_to_loss_accuracy{of}"] = round(
            ms["all_metrics"] / ms["loss_accuracy"], 3)
    return result


# train.py as the hand loop trains: on all of train, the test split evaluated at the end.
AS_THE_HAND_LOOP = ["--config.validation.fraction=0", "--config.evals={}", "--config.best_metric="]


def hand_language_model(config, steps):
    """Real tokens per second of a plain jitted loop of the config's transformer: the packed rows
    drawn on the host, one step a call, the loss a mean over the real tokens; the first fifth of
    the steps (compilation) untimed."""
    import optax  # pylint: disable=import-outside-toplevel
    data = build_dataset(config.dataset)
    model = linen_module(config.model)
    tx, _ = create_optimizer(config.optimizer, data.num_train // config.batch_size, steps)
    first = data.prepare_inputs(data.train["inputs"][:1])
    params = model.init(jax.random.PRNGKey(config.seed), first["tokens"],
                        segment_ids=first["segment_ids"], positions=first["positions"])["params"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, inputs, targets):
        def loss_fn(params):
            x = data.prepare_inputs(inputs)
            logits = model.apply({"params": params}, x["tokens"], segment_ids=x["segment_ids"],
                                 positions=x["positions"])
            real = targets[..., 0] >= 0
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits, jax.numpy.maximum(targets[..., 0], 0))
            return jax.numpy.where(real, loss, 0.0).sum() / jax.numpy.maximum(real.sum(), 1)
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(config.seed)
    warmup, tokens = steps // 5, 0
    for i in range(steps):
        if i == warmup:
            jax.block_until_ready(params)
            start = time.perf_counter()
        rows = rng.integers(0, data.num_train, config.batch_size)
        if i >= warmup:
            tokens += int((data.train["targets"][rows, :, 0] >= 0).sum())
        params, opt_state = step(params, opt_state, data.train["inputs"][rows],
                                 data.train["targets"][rows])
    jax.block_until_ready(params)
    return tokens / (time.perf_counter() - start)


def language_model(config, steps, repeats):
    """Real tokens/s of the framework (its logged tokens_per_sec, the first log untimed) against
    hand_language_model, alternating; the ratio of the medians."""
    rates = {"framework": [], "hand_loop": []}
    run_config = config.copy_and_resolve_references()
    run_config.num_steps, run_config.log_every_steps = steps, steps // 5
    run_config.evals, run_config.eval_every_epochs, run_config.best_metric = {}, 0, ""
    run_config.checkpoint_every_steps, run_config.plots = 10**9, False
    run_config.samples.prompts = ()
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as workdir:
            train_and_evaluate(run_config, workdir)
            with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
                logged = [json.loads(line) for line in f]
        rates["framework"] += [e["tokens_per_sec"] for e in logged if "tokens_per_sec" in e][1:]
        rates["hand_loop"].append(hand_language_model(config, steps))
    medians = {name: round(statistics.median(r), 1) for name, r in rates.items()}
    return {"tokens_per_sec": medians, "samples": rates,
            "ratio_framework_to_hand_loop": round(medians["framework"] / medians["hand_loop"],
                                                  3)}


def whole_commands(config_args, epochs, repeats):
    """Alternating, so that the machine's drift falls on all alike."""
    plain_env = {name: value for name, value in os.environ.items()
                 if not name.startswith("MALLOC_") and name != "JAX_COMPILATION_CACHE_DIR"}
    hand_loop_command = [sys.executable, str(SCRIPTS / "hand_loop.py"), *config_args,
                         f"--epochs={epochs}"]
    times = {"train.py": [], "hand-written loop": [],
             "hand-written loop, framework's malloc settings": []}
    with tempfile.TemporaryDirectory() as cache:
        runs = {
            "train.py": ([sys.executable, str(SCRIPTS / "train.py"), *config_args,
                          f"--config.num_epochs={epochs}", *AS_THE_HAND_LOOP],
                         {**plain_env, "JAX_COMPILATION_CACHE_DIR": cache}),
            "hand-written loop": (hand_loop_command, plain_env),
            "hand-written loop, framework's malloc settings": (
                hand_loop_command, {**plain_env, **host_memory.SETTINGS})}
        for _ in range(repeats):
            for name, (command, env) in runs.items():
                with tempfile.TemporaryDirectory() as workdir:
                    workdir_flag = [f"--workdir={workdir}"] if name == "train.py" else []
                    start = time.perf_counter()
                    subprocess.run(command + workdir_flag, check=True, capture_output=True,
                                   env=env)
                    times[name].append(round(time.perf_counter() - start, 2))
    hand_median = statistics.median(times["hand-written loop"])
    result = {"seconds": times,
              "median_seconds": {name: statistics.median(t) for name, t in times.items()},
              "train_py_cold_cache_seconds": times["train.py"][0],
              "ratio_train_py_cold_cache_to_hand_loop": round(times["train.py"][0] / hand_median, 3)}
    if repeats > 1:
        warm = statistics.median(times["train.py"][1:])
        result.update(train_py_warm_cache_seconds=warm,
                      ratio_train_py_warm_cache_to_hand_loop=round(warm / hand_median, 3))
    return result


def main(argv):
    del argv
    config = cli.config()
    if SECTIONS.value == ["language_model"]:
        if config.task != "language_model":
            cli.fail("--sections=language_model needs a language model's config, e.g. "
                     "configs/shakespeare_lm.py.")
    elif config.task != "classification":
        cli.fail(f"the benchmark's hand-written loop is a classifier's, and this config's task is "
                 f"{config.task!r}. Give a classification config, e.g. configs/mnist_cnn.py.")
    jax.config.update("jax_enable_compilation_cache", False)  # compile seconds are compiles
    results = {"config": sys.argv[1:], "epochs": EPOCHS.value,
               "command_epochs": COMMAND_EPOCHS.value, "machine": {
        "backend": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()],
        "cpu_count": os.cpu_count(), "jax": jax.__version__}}
    if "streaming" in WAYS.value and not RECORDS.value:
        cli.fail("--ways=streaming needs --records=FOLDER of ArrayRecord shards of the config's "
                 "data (scripts/prepare_data.py --from_mnist=... --out=FOLDER).")
    if "in_process" in SECTIONS.value:
        results["in_process"] = in_process(config, EPOCHS.value, WAYS.value)
        columns = list(results["in_process"][0])
        print(" | ".join(columns))
        for row in results["in_process"]:
            print(" | ".join(str(row[c]) for c in columns))
    if "pipeline" in SECTIONS.value:
        if not RECORDS.value:
            cli.fail("--sections=pipeline needs --records=FOLDER of ArrayRecord shards "
                     "(scripts/prepare_data.py --from_mnist=... --out=FOLDER).")
        results["pipeline"] = pipeline(config.batch_size, PIPELINE_WORKERS.value,
                                       PIPELINE_STEPS.value)
        for name, rates in results["pipeline"].items():
            print(f"pipeline, {name}: " + ", ".join(f"{w} workers {r} examples/s"
                                                     for w, r in rates.items()))
    if "against" in SECTIONS.value:
        if AGAINST.value is None:
            cli.fail("--sections=against needs --against=CONFIG, e.g. configs/mnist_cnn_nnx.py.")
        results["against"] = against(config, AGAINST.value, AGAINST_STEPS.value, REPEATS.value)
        print(f"against: {results['against']}")
    if "accumulation" in SECTIONS.value:
        results["accumulation"] = accumulation(config, ACCUM_STEPS.value, ACCUM_TIMED_STEPS.value)
        for name, row in results["accumulation"].items():
            print(f"grad_accum_steps {name}: " + ", ".join(f"{n} {v}" for n, v in row.items()))
    if "fsdp" in SECTIONS.value:
        results["fsdp"] = sharded_against_replicated(config, FSDP_STEPS.value)
        for name in ("data_parallel", "fsdp"):
            print(f"{name}: " + ", ".join(f"{n} {v}" for n, v in results["fsdp"][name].items()))
        print(f"fsdp / data parallel: memory {results['fsdp']['memory_ratio']}, step time "
              f"{results['fsdp']['step_time_ratio']}")
    if "checkpoint" in SECTIONS.value:
        results["checkpoint"] = checkpoint_cost(config, SAVES.value)
        print("checkpoint: " + ", ".join(f"{n} {v}" for n, v in results["checkpoint"].items()))
    if "evaluation" in SECTIONS.value:
        results["evaluation"] = evaluation_cost(config, EVAL_REPEATS.value)
        for name, row in results["evaluation"]["ways"].items():
            print(f"evaluation, {name}: {row['ms_per_evaluation']} ms (median of {row['ms']}), "
                  f"compile {row['compile_seconds']} s")
        for of in ("", "_of_minima"):
            print(f"evaluation{of.replace('_', ' ')}: loss_accuracy / today "
                  f"{results['evaluation'][f'ratio_loss_accuracy_to_today{of}']}, all_metrics / "
                  f"loss_accuracy "
                  f"{results['evaluation'][f'ratio_all_metrics_to_loss_accuracy{of}']}")
    if "language_model" in SECTIONS.value:
        results["language_model"] = language_model(config, LM_STEPS.value, REPEATS.value)
        print(f"language model, real tokens/s: {results['language_model']['tokens_per_sec']}, "
              f"framework / hand loop {results['language_model']['ratio_framework_to_hand_loop']}")
    if "command" in SECTIONS.value:
        config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
        results["command"] = whole_commands(config_args, COMMAND_EPOCHS.value, REPEATS.value)
        for name, seconds in results["command"]["seconds"].items():
            print(f"{name}: {seconds} s")
    print(json.dumps(results))
    if OUT.value:
        with open(OUT.value, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
