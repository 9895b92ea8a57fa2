"""Orbax checkpoints in `workdir/checkpoints`: save, find the latest good one, restore.

A checkpoint holds three items: `state`, the TrainState, which is all a resume needs (params,
optimizer state, BatchNorm statistics, step, RNG key, the non-finite counters, the moving
average); `loop`, the loop's own few values (early stopping's count, and the running train
metrics of the steps since the last log, so that a resumed run logs what an uninterrupted one
does); and `checksums`, a checksum
of every array of the state, verified on restore, so a checkpoint whose bytes changed on disk is
caught even where it still reads. The data position is the step (the order is a function of
seed and epoch). Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a crash during a save leaves the previous ones whole; old checkpoints are removed only after a
newer one is complete. Checkpoints are arrays and JSON: restoring unpickles nothing.
"""
import atexit
import contextlib
import dataclasses
import gc
import glob
import json
import logging as python_logging  # asyncio's logger; absl's is `logging`
import os
import re
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from absl import logging
from jax.experimental import multihost_utils

from trainer.errors import StorageError, WorkdirError, setting
from trainer.model import path_name


def shapes_by_name(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(path): tuple(leaf.shape) for path, leaf in leaves}


def dtypes_by_name(tree):
    """{name: dtype name} of the arrays of `tree` (arrays, abstract ones or Orbax's metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(path): np.dtype(leaf.dtype).name for path, leaf in leaves
            if getattr(leaf, "dtype", None) is not None}


def as_uint32(x):
    """The bits of `x` as uint32 words: elements of 1 or 2 bytes widened, of 8 bytes split in
    two; typed PRNG keys by their key data."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if x.dtype.itemsize == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # a trailing axis of 2 words
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def checksums(tree):
    """{path: checksum} of every array: the sum of its elements' bits, each times an odd weight of
    its position (row-major), modulo 2**32. Any one changed element changes it, and integer sums
    come out the same on any device count and sharding. Elementwise, then reduced: a sharded
    array is summed where its shards are, never gathered."""
    def checksum(x):
        bits = as_uint32(x)
        position = jnp.zeros(bits.shape, jnp.uint32)
        for d in range(bits.ndim):
            position = position * bits.shape[d] + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, d)
        return jnp.sum(bits * (2 * position + 1), dtype=jnp.uint32)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(path): checksum(leaf) for path, leaf in leaves}


def first_line(error):
    """(the error, its first line) less TensorStore's spec; Orbax's wrapper of a failed read ("See
    full TensorStore details: <bound method ...>", the spec over 60 lines) passed over for the
    error of TensorStore it was raised from."""
    if "See full TensorStore details" in str(error) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error).splitlines()[0] if str(error) else ""
    return error, text.split(" [tensorstore_spec=")[0]


def what_failed(error, limit=240):
    """One line of a failed read: TensorStore's errors run to a kilobyte on one line, its spec
    last; the cause is at the start and the end of what comes before."""
    error, text = first_line(error)
    if len(text) > limit:
        text = f"{text[:limit // 3]} ... {text[-(limit * 2 // 3):]}"
    return f"{type(error).__name__}: {text}"


class CheckpointMismatch(WorkdirError):
    """A checkpoint of another model or optimizer than the config's: nothing is read or changed.
    `changed`: which settings of the run's own config differ, where the caller knows."""

    def __init__(self, step, directory, what, changed=""):
        self.step, self.directory, self.what = step, directory, what
        super().__init__(
            f"the checkpoint at step {step} in {directory} does not fit the config: {what}. "
            f"{changed}{' ' if changed else ''}Use the config that run was started with, or pass "
            f"{setting('resume', False)} to start a fresh run in a new subfolder (the checkpoints "
            f"stay as they are).")


# The order in which a mismatch names the state's arrays: the model's own first.
PARTS_IN_ORDER = ("params", "model_state", "opt_state", "ema_params")


def part_order(name):
    part = name.split("/", 1)[0]
    return (PARTS_IN_ORDER.index(part) if part in PARTS_IN_ORDER else len(PARTS_IN_ORDER), name)


class ChecksumError(Exception):
    """A restored array whose checksum differs from the one saved with it."""

    def __init__(self, name, where=""):
        super().__init__(f"{name}{where} does not match the checksum saved with it: its bytes "
                         f"changed on disk")
        self.name = name


def verify(state, saved):
    computed = jax.device_get(checksums(state))
    for name, value in computed.items():
        if saved.get(name) != int(value):
            raise ChecksumError(name)


class Damaged(Exception):
    """A checkpoint that cannot be read; the message says which file, and how, in a few words."""


def array_name(key):
    """The array an OCDBT key of Orbax's belongs to: "params.Dense_0.kernel/0.0" ->
    "params/Dense_0/kernel"."""
    return key.split("/", 1)[0].replace(".", "/")


def index_files(folder):
    """{path in the checkpoint `folder`: (bytes it must hold, arrays with data in it)} for each
    file of the state that OCDBT's index refers to: its manifest, its b-tree nodes as far as they
    read (one missing or cut short is listed, not read) and the data files they name."""
    state = os.path.join(folder, "state")
    files = {"state/manifest.ocdbt": (1, set())}
    if not os.path.isfile(os.path.join(state, "manifest.ocdbt")):
        return files
    store = ts.KvStore.open({"driver": "file", "path": state + "/"}).result()
    root = ts.ocdbt.dump(store).result()["versions"][-1]["root"].get("location")
    nodes = [(root, "")] if root else []
    while nodes:
        location, prefix = nodes.pop()
        path, end = where(location)
        files.setdefault(path, (end, set()))
        full = os.path.join(folder, path)
        if not os.path.isfile(full) or os.path.getsize(full) < end:
            continue
        for entry in ts.ocdbt.dump(store, location).result()["entries"]:
            key = prefix + entry.get("key", b"").decode(errors="replace")
            if "location" in entry:  # a child node, its keys relative to the common prefix
                common = entry.get("subtree_common_prefix", b"").decode(errors="replace")
                nodes.append((entry["location"], prefix + common))
            elif "indirect_value" in entry:  # a value in a data file, not in the node itself
                path, end = where(entry["indirect_value"])
                needed, arrays = files.get(path, (0, set()))
                files[path] = (max(needed, end), arrays | {array_name(key)})
    return files


def where(location):
    """("state/<prefix><file>", the end of the bytes read) of an OCDBT location:
    "value:ocdbt.process_0/:d/1f0f...:3123652:1135"."""
    _, prefix, name, offset, length = location.split(":")
    return os.path.join("state", prefix, name), int(offset) + int(length)


def held(arrays):
    """What a file of the index holds, for a message: a part of the index, or the arrays' data."""
    names = sorted(arrays, key=part_order)
    if not names:
        return "a part of OCDBT's index of the arrays"
    more = f" and {len(names) - 2} more arrays" if len(names) > 2 else ""
    return f"the data of {', '.join(names[:2])}{more}"


def what_is_damaged(folder, error):
    """What `error`, from restoring the checkpoint `folder`, found damaged, in a few words: the
    file (its path in the checkpoint) or array, and how: missing, truncated, bytes changed, or
    unreadable metadata. The files OCDBT's index refers to are looked at first: TensorStore's
    error names an array or only the folder, and reads a missing file as an empty one."""
    if isinstance(error, Damaged):
        return str(error)
    try:
        files = index_files(folder)
    except Exception:  # pylint: disable=broad-except  (a node's bytes changed: its error says)
        files = {}
    for path, (needed, arrays) in sorted(files.items()):
        full = os.path.join(folder, path)
        if not os.path.isfile(full):
            return f"{path} is missing ({held(arrays)})"
        if os.path.getsize(full) < needed:
            return (f"{path} is truncated ({os.path.getsize(full)} of at least {needed} bytes; "
                    f"{held(arrays)})")

    def in_file(name):
        holding = [path for path, (_, arrays) in sorted(files.items()) if name in arrays]
        return f" (in {holding[0]})" if holding else ""

    if isinstance(error, ChecksumError):
        return str(ChecksumError(error.name, in_file(error.name)))
    _, text = first_line(error)
    named = [path.rstrip(".") for path in re.findall(re.escape(folder) + r'/[^\s"\']+', text)
             if not path.endswith("/")]  # files, not OCDBT's folder
    if named:
        path = os.path.relpath(named[-1], folder)
        if isinstance(error, FileNotFoundError):  # Orbax's JSON items: "File ... not found."
            return f"{path} is missing"
        if "CRC-32C checksum verification failed" in text:
            return f"{path}: bytes changed (CRC-32C checksum verification failed)"
        reason = text.rsplit(named[-1] + '": ', 1)[-1]
        return f"{path} is unreadable ({reason})"
    read = re.search(r'Error reading "([^"]+)" in OCDBT database at local file "[^"]+": (.+)', text)
    if read:  # an array's data that does not decode, its file whole: its bytes changed
        name = array_name(read[1])
        return f"{name}{in_file(name)} does not decode: bytes changed ({read[2]})"
    return what_failed(error)


def better_is_lower(mode, metric):
    """config.best_mode / early_stopping.mode: "auto" is "min" for a metric named *loss or
    *error, else "max"."""
    if mode == "auto":
        return metric.endswith(("loss", "error"))
    return mode == "min"


def ignore_io_left_after_a_failure():
    """A failed restore or save ends Orbax's asyncio loop while TensorStore still finishes the other reads
    of that checkpoint: their callbacks then meet the closed loop, and Python would print a
    traceback for each; Orbax's coroutines of the reads left unfinished raise when they are
    collected (its wrapper of the GeneratorExit, with TensorStore's whole spec: 60 lines each,
    some 20 of them for a missing data file); or the reads fail too, and asyncio logs a traceback
    for each task or future of them when it is collected ("... exception was never retrieved");
    the same for the other writes of a save that failed (a full disk: one run in ten of a test
    here). A damaged checkpoint is reported once, by set_aside or the scripts' error line, a
    failed save by its StorageError; only these are dropped. What is still uncollected when the
    process ends is collected at exit, while the hook holds: left to the interpreter's teardown,
    it would be reported by Python's default hook (seen under load, after a script's error line)."""
    if sys.unraisablehook is not drop_abandoned_reads:
        drop_abandoned_reads.previous = sys.unraisablehook
        sys.unraisablehook = drop_abandoned_reads
        atexit.register(gc.collect)
    asyncio_logger = python_logging.getLogger("asyncio")
    if drop_unretrieved_failed_io not in asyncio_logger.filters:
        asyncio_logger.addFilter(drop_unretrieved_failed_io)


def failed_io(error):
    """Whether `error`, or one it was raised from, is a read or write of TensorStore's that failed
    (or Orbax's wrapper of one: "Encountered error while reading array index ...")."""
    while error is not None:
        if any(words in str(error) for words in ("Error reading", "Error writing",
                                                  "Encountered error while reading array index")):
            return True
        error = error.__cause__ or error.__context__
    return False


def drop_unretrieved_failed_io(record):
    return not (record.getMessage().startswith(("Task exception was never retrieved",
                                                "Future exception was never retrieved"))
                and record.exc_info and failed_io(record.exc_info[1]))


def drop_abandoned_reads(unraisable):
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    abandoned_read = (getattr(unraisable.object, "__qualname__", None)
                      == "_read_array_index_and_device_put" and failed_io(error))
    if not (closed_loop or abandoned_read):
        drop_abandoned_reads.previous(unraisable)


def remove_for_good(folders, quiet_seconds=0.2, tries=10):
    """Removes a failed save's folders. A write of it still under way in TensorStore's threads
    (Orbax stops waiting at the first failure) can add a file while rmtree runs, which then
    cannot remove the folder: removed again until they stay gone a moment."""
    for _ in range(tries):
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        time.sleep(quiet_seconds)
        if not any(os.path.exists(folder) for folder in folders):
            return


class Checkpoints:

    def __init__(self, workdir, keep=None, read_only=False, best_metric="", best_mode="auto"):
        """Keeps the newest `keep` and, with `best_metric`, the best by it too (Orbax's
        preservation policies; only saves given that metric count). `read_only`: for using a
        run; creates and cleans up nothing."""
        ignore_io_left_after_a_failure()
        # A failed save's StorageError; the step of the last save; whether it may still run.
        self.failed, self.saving, self.pending = None, None, False
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        best = {}
        if best_metric:
            lower = better_is_lower(best_mode, best_metric)
            best = dict(best_fn=lambda metrics: metrics[best_metric],
                        best_mode="min" if lower else "max")
        policy = None
        if keep is not None:
            policy = ocp.checkpoint_managers.LatestN(keep)
            if best_metric:
                policy = ocp.checkpoint_managers.AnyPreservationPolicy([
                    policy, ocp.checkpoint_managers.BestN(
                        get_metric_fn=best["best_fn"], reverse=lower, n=1,
                        keep_checkpoints_without_metrics=False)])
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "loop": ocp.JsonCheckpointHandler(),
                           "checksums": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy, create=not read_only,
                cleanup_tmp_directories=not read_only, **best))

    def latest_step(self):
        return self.manager.latest_step()

    def best_step(self):
        """The step of the best checkpoint by best_metric (None: none has been evaluated)."""
        return self.manager.best_step()

    def save(self, state, loop=None, metrics=None):
        """Starts an asynchronous save of `state` at its step, with the loop's values (a dict of
        JSON) and the eval `metrics` best_metric is read from; `wait()` for it to finish. The
        checksums are computed on the device first: they go into the same atomic save, and Orbax
        takes its JSON items as values when the save starts. A save that fails, now or in Orbax's
        threads (reported at the next save or wait), raises StorageError."""
        sums = {name: int(value) for name, value in jax.device_get(checksums(state)).items()}
        self.saving, self.pending = int(state.step), True
        with self.failures():
            self.manager.save(int(state.step), metrics=metrics, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop or {}),
                checksums=ocp.args.JsonSave(sums)))

    @contextlib.contextmanager
    def failures(self):
        """A failed save as a StorageError naming its step, once: its temporary folder removed
        (the finished checkpoints stay), Orbax's manager not asked again."""
        if self.failed is not None:
            raise self.failed
        try:
            yield
        except Exception as e:  # pylint: disable=broad-except  (Orbax's, from any of its threads)
            # The failed save's other writes may still be under way: removed before they end, its
            # folder would come back.
            with contextlib.suppress(Exception):
                self.manager.wait_until_finished()
            partial = sorted(glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")))
            steps = [int(m[0]) for p in partial if (m := re.match(r"\d+", os.path.basename(p)))]
            self.failed = StorageError(f"saving the checkpoint of step "
                                       f"{steps[0] if steps else self.saving}", e, self.kept())
            if jax.process_index() == 0:
                remove_for_good(partial)
            raise self.failed from e

    def intact_steps(self):
        """The steps of the finished checkpoints on disk (Orbax renames a save into place only
        when it is complete)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

    def holds(self, step):
        """Whether a checkpoint of `step` is on disk or being saved."""
        return step in self.intact_steps() or self.saving == step

    def kept(self):
        """What a failure leaves: the newest intact checkpoint, and the space the folder has."""
        steps = self.intact_steps()
        newest = (f"the newest intact checkpoint is step {steps[-1]} in {self.directory}" if steps
                  else "no checkpoint had been saved yet")
        try:
            free = f"{shutil.disk_usage(self.workdir).free / 1e6:.1f} MB free"
        except OSError:
            free = "no space it can report (is it still there?)"
        return f"{newest}, and {self.workdir} has {free}"

    def restore(self, like_state, step=None, optimizer=True):
        """Returns (state, loop values) of the checkpoint at `step` (default: the latest), in the
        structure, shapes, dtypes and shardings of `like_state`; the state's checksums verified.
        Raises WorkdirError if it is a checkpoint of another model (nothing is read then).
        `optimizer` False: the optimizer state stays `like_state`'s, the checkpoint's dropped
        (using a run needs none, and the optimizer that made it may not be at hand)."""
        step = self.latest_step() if step is None else step
        saved = self.check_fits(step, like_state, optimizer)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        # Restored field by field: a checkpoint of an earlier version lacks the fields added since,
        # which `like_state` holds as None (not kept) unless the config asks for them.
        target = {field.name: getattr(abstract, field.name) for field in dataclasses.fields(abstract)
                  if field.metadata.get("pytree_node", True)
                  and (field.name in saved or getattr(abstract, field.name) is not None)}
        fallback = None
        if not optimizer:  # read and dropped (StandardRestore cannot leave it unread): placed as
            # saved, or replicated as the step is where those devices are not these
            target["opt_state"] = jax.tree.map(lambda array: jax.ShapeDtypeStruct(
                array.shape, array.dtype), saved["opt_state"])
            fallback = like_state.step.sharding
        # Checkpoints of earlier versions hold the state alone.
        extra = [item for item in ("loop", "checksums")
                 if os.path.isdir(os.path.join(self.directory, str(step), item))]
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target, fallback_sharding=fallback),
                **{item: ocp.args.JsonRestore() for item in extra}))
        except ValueError as e:
            if "structure" in str(e):  # an empty part (an optimizer state) that differs
                raise CheckpointMismatch(step, self.directory,
                                         str(e).splitlines()[0][:300]) from e
            raise
        state = like_state.replace(**restored.state)
        if not optimizer:
            state = state.replace(opt_state=like_state.opt_state)
        if "checksums" in extra:
            verify(state, restored.checksums)
        return state, restored.loop if "loop" in extra else {}

    def check_fits(self, step, like_state, optimizer=True):
        """Raises CheckpointMismatch naming the first array (the model's first) whose shape
        differs from `like_state` (the optimizer state's only where `optimizer`); returns the
        saved tree's metadata."""
        metadata = os.path.join(self.directory, str(step), "state", "_METADATA")
        # Orbax reads a missing one as None, with a warning that asks for a handler registry.
        if not os.path.isfile(metadata):
            raise Damaged("state/_METADATA is missing: unreadable metadata (the arrays' names, "
                          "shapes and types)")
        try:
            tree = self.manager.item_metadata(step)["state"].tree
        except Exception as e:  # pylint: disable=broad-except  (it reads the arrays' files too)
            try:
                with open(metadata, encoding="utf-8") as f:
                    json.load(f)
            except ValueError as not_json:
                raise Damaged(f"state/_METADATA: unreadable metadata (not JSON: {not_json})") from e
            raise
        saved_names, wanted_names = shapes_by_name(tree), shapes_by_name(like_state)  # shapes
        if (any(re.match(r"params/blocks_\d+/", name) for name in saved_names)
                and any(name.startswith("params/blocks/") for name in wanted_names)):
            raise CheckpointMismatch(step, self.directory, (
                "its transformer keeps each block apart (params/blocks_0/..., as the shipped "
                "transformer did before 2026-12-06), and this version stacks them over the layers "
                "(params/blocks/...): go on with the version that wrote it, or train again"))
        # Shapes, then dtypes (config.precision): Orbax would cast an array to the dtype asked
        # for, which its checksum then takes for damage.
        for saved, wanted in ((saved_names, wanted_names),
                              (dtypes_by_name(tree), dtypes_by_name(like_state))):
            for name in sorted(set(saved) | set(wanted), key=part_order):
                if not optimizer and name.startswith("opt_state/"):
                    continue
                if saved.get(name) != wanted.get(name):
                    raise CheckpointMismatch(step, self.directory,
                                             f"{name} is {saved.get(name, 'absent')} there and "
                                             f"{wanted.get(name, 'absent')} in the config")
        return tree

    def restore_latest_good(self, like_state):
        """(state, loop values) of the newest checkpoint that reads whole and matches its
        checksums, or None. Damaged ones are moved aside (never deleted) to
        workdir/damaged_checkpoints; a checkpoint of another model is an error."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.restore(like_state, step)
            except WorkdirError:
                raise
            except Exception as e:  # pylint: disable=broad-except  (unreadable: damaged)
                self.set_aside(step, e)
        return None

    def what_is_damaged(self, step, error):
        """What `error`, from restoring the checkpoint at `step`, found damaged: one line."""
        return what_is_damaged(os.path.join(self.directory, str(step)), error)

    def set_aside(self, step, error):
        target = os.path.join(self.workdir, "damaged_checkpoints", str(step))
        logging.warning("The checkpoint at step %d is damaged: %s; moving it to %s and trying "
                        "the one before.", step, self.what_is_damaged(step, error), target)
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def reached_preemption(self, step):
        """Several processes: JAX's preemption notice, agreed on by all of them at one step."""
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def check(self):
        """Raises StorageError as soon as an asynchronous save has ended in failure (nothing to
        do while it runs): the run stops then, not at the next save."""
        if self.pending and not self.manager.is_saving_in_progress():
            self.wait()  # returns at once, or raises the failure Orbax's threads kept

    def wait(self):
        with self.failures():
            self.manager.wait_until_finished()
        self.pending = False

    def close(self):
        """Ends Orbax's threads; a save that failed was reported when it was found."""
        if self.failed is None:
            with self.failures():
                self.manager.close()
            return
        try:
            self.manager.close()
        except Exception:  # pylint: disable=broad-except  (the same failure, said already)
            pass
