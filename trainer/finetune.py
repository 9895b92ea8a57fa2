"""Fine-tuning: `config.init_from`, another run's parameters and BatchNorm statistics, loaded by
name into a fresh state.

`plan()` runs at build time, before any file is written: it finds the checkpoint (a run's workdir:
its latest step; or one checkpoint's folder, workdir/checkpoints/N), reads the names and shapes of
its arrays, and decides for each array of the fresh state's `params` and `model_state`:

- loaded: its path matches `config.init_from_regex` (the whole path, `re.fullmatch`) and the
  checkpoint holds it with the same shape;
- skipped: the checkpoint holds it but with another shape (a new head), or the regex does not
  match it; it keeps its fresh initialisation;
- missing: the checkpoint does not hold it; it keeps its fresh initialisation.

`load()` restores just the planned arrays (an Orbax partial restore, placed as the fresh state's
are, checked against the checksums saved with them) when a run starts without a checkpoint of its
own, and logs the report. The optimizer state, step and RNG key stay fresh; with
config.ema_decay the moving average starts at the loaded parameters. A run that has checkpoints of
its own resumes from them and loads nothing.
"""
import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from trainer.checkpoint import (ChecksumError, Checkpoints, dtypes_by_name, shapes_by_name,
                                verify, what_failed)
from trainer.errors import SHOWN, ConfigError, listed, setting
from trainer.model import path_name

LOADABLE = ("params", "model_state")  # the parts of a TrainState fine-tuning loads


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `load` restores from the checkpoint at `folder` (its `state` item holds the arrays)."""
    folder: str  # one checkpoint's folder, workdir/checkpoints/N
    step: int | None  # its step, where its folder name says it
    loaded: tuple  # names, e.g. "params/Conv_0/kernel"
    skipped: tuple  # (name, shape in the checkpoint, shape in the model), the shapes differing
    unmatched: tuple  # names the regex does not match (skipped too)
    missing: tuple  # names of the model the checkpoint does not hold
    unused: tuple  # names of the checkpoint the model does not hold

    def report(self):
        """The lines logged when the arrays are loaded."""
        at = f"step {self.step} of " if self.step is not None else ""
        lines = [f"Fine-tuning from {at}{self.folder}: loaded {len(self.loaded)} arrays, skipped "
                 f"{len(self.skipped) + len(self.unmatched)}, missing {len(self.missing)}."]
        lines.append(f"  loaded: {', '.join(self.loaded)}")
        if self.skipped:
            lines.append("  skipped, another shape (kept as initialised): " + "; ".join(
                f"{name} {saved} in the checkpoint, {wanted} here"
                for name, saved, wanted in self.skipped))
        if self.unmatched:
            lines.append("  skipped, not matched by config.init_from_regex (kept as initialised): "
                         + ", ".join(self.unmatched))
        if self.missing:
            lines.append("  missing, not in the checkpoint (kept as initialised): "
                         + ", ".join(self.missing))
        if self.unused:
            lines.append("  in the checkpoint only, not in this model (not used): "
                         + ", ".join(self.unused))
        return "\n".join(lines)


def loadable_names(state):
    """{"params/Conv_0/kernel": shape, "model_state/batch_stats/...": shape} of a TrainState."""
    return shapes_by_name({part: getattr(state, part) for part in LOADABLE})


def find_checkpoint(path):
    """(checkpoint folder, step or None) that `path` names: a run's workdir (its latest step), its
    checkpoints folder, or one checkpoint's folder."""
    field = f"config.init_from={path}"
    if not os.path.exists(path):
        raise ConfigError(f"{field} does not exist. Give a run's workdir or one checkpoint's "
                          f"folder (workdir/checkpoints/N); a run that resumes from checkpoints "
                          f"of its own needs none: {setting('init_from', '')}.")
    if not os.path.isdir(path):
        raise ConfigError(f"{field} is a file. Give a run's workdir or one checkpoint's folder "
                          f"(workdir/checkpoints/N).")
    if os.path.isdir(os.path.join(path, "state")):
        name = os.path.basename(os.path.normpath(path))
        return path, int(name) if name.isdigit() else None
    workdir = path
    if os.path.basename(os.path.normpath(path)) == "checkpoints":
        workdir = os.path.dirname(os.path.normpath(path))
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ConfigError(f"{field} is not a run's workdir or a checkpoint folder: it holds no "
                          f"checkpoints/ folder and no state/. Give a run's workdir or one "
                          f"checkpoint's folder (workdir/checkpoints/N).")
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
        step = checkpoints.latest_step()
    finally:
        checkpoints.close()
    if step is None:
        raise ConfigError(f"{field} holds no checkpoint: {os.path.join(workdir, 'checkpoints')} is "
                          f"empty. Train that run first, or give another.")
    return os.path.join(workdir, "checkpoints", str(step)), step


def saved_names(folder):
    """Names and shapes of the params and model_state arrays saved in the checkpoint `folder`."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = handler.metadata(epath.Path(folder, "state")).tree
        if not isinstance(tree, dict) or "params" not in tree:
            raise ValueError("it holds no params")
        return shapes_by_name({part: tree[part] for part in LOADABLE if part in tree})
    except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(f"config.init_from: the checkpoint {folder} cannot be read "
                          f"({what_failed(e)}).") from e
    finally:
        handler.close()


def plan(config, state):
    """The Plan of config.init_from for the fresh `state`, or None when it is ''. Raises ConfigError
    (one line) for a folder that does not exist or holds no checkpoint, and for a regex that
    loads nothing."""
    if not config.init_from:
        return None
    folder, step = find_checkpoint(config.init_from)
    saved, wanted = saved_names(folder), loadable_names(state)
    regex = re.compile(config.init_from_regex)
    matched = [name for name in wanted if regex.fullmatch(name)]
    if not matched:
        raise ConfigError(f"config.init_from_regex={config.init_from_regex!r} matches no array of "
                          f"the model (the whole path must match); its arrays are "
                          f"{listed(wanted)}.")
    loaded = [name for name in matched if saved.get(name) == wanted[name]]
    skipped = [(name, saved[name], wanted[name]) for name in matched
               if name in saved and saved[name] != wanted[name]]
    if not loaded:
        shapes = "; ".join(f"{name} is {s} there and {w} here" for name, s, w in skipped[:SHOWN])
        raise ConfigError(f"config.init_from: no array config.init_from_regex="
                          f"{config.init_from_regex!r} matches is in the checkpoint {folder} with "
                          f"the model's shape" + (f" ({shapes})" if shapes else
                                                  f"; the checkpoint holds {listed(saved)}") + ".")
    return Plan(folder=folder, step=step, loaded=tuple(loaded), skipped=tuple(skipped),
                unmatched=tuple(name for name in wanted if name not in matched),
                missing=tuple(name for name in matched if name not in saved),
                unused=tuple(name for name in saved if name not in wanted))


def nested(flat):
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def saved_dtypes(folder):
    """{name: dtype} of the arrays saved in the checkpoint `folder`."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return dtypes_by_name(handler.metadata(epath.Path(folder, "state")).tree)
    finally:
        handler.close()


def check_sums(folder, restored):
    """The restored arrays against the checksums saved with them (checkpoints of earlier versions
    have none): a damaged source is one line, never silently loaded."""
    if not os.path.isdir(os.path.join(folder, "checksums")):
        return
    handler = ocp.JsonCheckpointHandler()
    try:
        verify(restored, handler.restore(epath.Path(folder, "checksums")))
    except ChecksumError as e:
        raise ConfigError(f"config.init_from: the checkpoint {folder} is damaged: {e}. Give "
                          f"another checkpoint of that run (workdir/checkpoints/N).") from e
    finally:
        handler.close()


def load(init_plan, state):
    """`state` (fresh, in checkpoint form) with the arrays `init_plan` loads read from its
    checkpoint, each placed as the fresh array it replaces; logs the report."""
    fresh = jax.tree_util.tree_flatten_with_path({part: getattr(state, part) for part in LOADABLE})
    saved = saved_dtypes(init_plan.folder)
    # Read as saved (the checksums are of those bytes), placed as the fresh array; converted to
    # the fresh array's dtype below (a float32 run fine-tuned in bfloat16, config.precision).
    abstract = nested({path_name(path): jax.ShapeDtypeStruct(
        leaf.shape, saved.get(path_name(path), leaf.dtype), sharding=leaf.sharding)
        for path, leaf in fresh[0] if path_name(path) in init_plan.loaded})
    handler = ocp.PyTreeCheckpointHandler()
    try:
        restored = handler.restore(
            epath.Path(init_plan.folder, "state"), args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except  (files missing or damaged)
        raise ConfigError(f"config.init_from: the checkpoint {init_plan.folder} cannot be read "
                          f"({what_failed(e)}).") from e
    finally:
        handler.close()
    check_sums(init_plan.folder, restored)
    by_name = {path_name(path): leaf
               for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]}

    def replace(part):
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: by_name.get(f"{part}/{path_name(path)}", leaf).astype(leaf.dtype),
            getattr(state, part))

    state = state.replace(**{part: replace(part) for part in LOADABLE})
    if state.ema_params is not None:  # the moving average starts at the parameters, as when fresh
        copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree),
                       out_shardings=jax.tree.map(lambda x: x.sharding, state.ema_params))
        state = state.replace(ema_params=copy(state.params))
    logging.info("%s", init_plan.report())
    return state
