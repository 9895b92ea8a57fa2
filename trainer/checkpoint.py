"""Orbax checkpoints in `workdir/checkpoints`: save, find the latest, restore.

The saved TrainState is all a resume needs: params, optimizer state, BatchNorm statistics, step
and RNG key. The data position is the step (the order is a function of seed and epoch). Orbax
writes each checkpoint to a temporary folder and renames it when complete, so the latest step
folder is always whole.
"""
import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:

    def __init__(self, workdir, keep):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

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

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
