"""Orbax checkpoints in `workdir/checkpoints`: save, find the latest good one, restore.

The saved TrainState is all a resume needs: params, optimizer state, BatchNorm statistics, step,
RNG key and the non-finite counters. The data position is the step (the order is a function of
seed and epoch). Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a crash during a save leaves the previous ones whole; old checkpoints are removed only after a
newer one is complete. Checkpoints are arrays and JSON metadata: restoring unpickles nothing.
"""
import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from trainer.errors import WorkdirError


def path_name(path):
    """'params/Dense_0/kernel' for a tree path, whatever the kinds of its keys."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def shapes_by_name(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(path): tuple(leaf.shape) for path, leaf in leaves}


def ignore_reads_left_after_a_failed_restore():
    """A failed restore ends Orbax's asyncio loop while TensorStore still finishes the other reads
    of that checkpoint; their callbacks then meet the closed loop, and Python would print a
    traceback for each. A damaged checkpoint is reported once, by set_aside; only that error is
    dropped."""
    if sys.unraisablehook is not drop_closed_loop_errors:
        drop_closed_loop_errors.previous = sys.unraisablehook
        sys.unraisablehook = drop_closed_loop_errors


def drop_closed_loop_errors(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
        drop_closed_loop_errors.previous(unraisable)


class Checkpoints:

    def __init__(self, workdir, keep=None, read_only=False):
        """`read_only`: for evaluation; creates and cleans up nothing."""
        ignore_reads_left_after_a_failed_restore()
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory, item_handlers={"state": ocp.StandardCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, state):
        """Starts an asynchronous save of `state` at its step; `wait()` for it to finish."""
        self.manager.save(int(state.step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)))

    def restore(self, like_state, step=None):
        """Restores into the structure, shapes, dtypes and shardings of `like_state`."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return restored.state

    def check_fits(self, step, like_state):
        """Raises WorkdirError naming the first array whose shape differs from `like_state`."""
        saved = shapes_by_name(self.manager.item_metadata(step)["state"].tree)
        wanted = shapes_by_name(like_state)
        for name in sorted(set(saved) | set(wanted)):
            if saved.get(name) != wanted.get(name):
                raise WorkdirError(
                    f"the checkpoint at step {step} in {self.directory} does not fit the config: "
                    f"{name} is {saved.get(name, 'absent')} there and {wanted.get(name, 'absent')} "
                    f"in the config. Use the config that run was started with, or pass "
                    f"--config.resume=False to start a fresh run in a new subfolder (the "
                    f"checkpoints stay as they are).")

    def restore_latest_good(self, like_state):
        """The newest checkpoint that reads whole, or None. Damaged ones are moved aside (never
        deleted) to workdir/damaged_checkpoints; a checkpoint of another model is an error."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self.check_fits(step, like_state)
                return self.restore(like_state, step)
            except WorkdirError:
                raise
            except Exception as e:  # pylint: disable=broad-except  (unreadable: damaged)
                self.set_aside(step, e)
        return None

    def set_aside(self, step, error):
        target = os.path.join(self.workdir, "damaged_checkpoints", str(step))
        logging.warning("The checkpoint at step %d cannot be read (%s: %s); moving it to %s and "
                        "trying the one before.", step, type(error).__name__,
                        str(error).splitlines()[0][:200], target)
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def reached_preemption(self, step):
        """Several processes: JAX's preemption notice, agreed on by all of them at one step."""
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
