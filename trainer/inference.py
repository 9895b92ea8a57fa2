"""Using a trained run: restore one of its checkpoints (by step, the latest or the best), with the
run's own config, for evaluate.py, predict.py and plot.py (trainer/evaluation.py does the rest)."""
import optax

from trainer import parts
from trainer.checkpoint import Checkpoints
from trainer.errors import SPOKEN, ConfigError, WorkdirError, argument, setting
from trainer.setup import build


def no_optimizer(**_):
    """What stands in for an optimizer given to trainer.api.fit() in Python and not given again:
    using a run needs none. It keeps no state, so the checkpoint's is left unread."""
    return optax.set_to_zero()


def stand_in(config):
    """{config.optimizer.name: no_optimizer} where that names an object given in Python that this
    call was not given; else {}."""
    name = config.optimizer.name
    if not (isinstance(name, str) and name.startswith(parts.GIVEN)):
        return {}
    try:
        parts.find(parts.OPTIMIZER, name)
    except ConfigError:  # not given to this call
        return {name: no_optimizer}
    return {}


def checkpoint_step(checkpoints, config, step):
    """The step `step` names: None for the latest, "best" for the best by config.best_metric,
    or a number."""
    steps = checkpoints.manager.all_steps()
    if not steps:
        train = (f"scripts/train.py --workdir={checkpoints.workdir}" if SPOKEN["flags"] else
                 f"trainer.api.fit(config, {checkpoints.workdir!r})")
        raise WorkdirError(f"no checkpoint in {checkpoints.directory}: train first with {train}.")
    if step == "best":
        best = checkpoints.best_step() if config.best_metric else None
        if best is None:
            raise WorkdirError(
                f"{argument('step', 'best')}: the run in {checkpoints.workdir} kept no best "
                f"checkpoint{'' if config.best_metric else ' (its config has no best_metric)'}. "
                f"Give a step (there are {sorted(steps)}), or train with "
                f"{setting('best_metric', 'eval/loss')} (or another eval metric).")
        return best
    if step is not None and not str(step).isdigit():
        raise ConfigError(f"{argument('step', step)}: give a step number (there are {sorted(steps)}) or "
                          f"'best'.")
    step = max(steps) if step is None else int(step)
    if step not in steps:
        raise WorkdirError(f"no checkpoint at step {step} in {checkpoints.directory}; "
                           f"there are steps {sorted(steps)}.")
    return step


def restore(config, workdir, step=None):
    """Returns (setup, state, step) for the checkpoint at `step` (None: the latest; "best": the
    best by config.best_metric; or a number); the state without the optimizer's where the run
    was given one in Python that this call was not (its opt_state then the stand-in's, empty)."""
    without_optimizer = stand_in(config)
    with parts.given(without_optimizer):
        setup = build(config, training=False, workdir=workdir)
    checkpoints = Checkpoints(workdir, read_only=True, best_metric=config.best_metric,
                              best_mode=config.best_mode)
    step = checkpoint_step(checkpoints, config, step)
    try:
        state, _ = checkpoints.restore(setup.state, step, optimizer=not without_optimizer)
    except WorkdirError:  # another model's checkpoint
        raise
    except Exception as e:  # pylint: disable=broad-except  (unreadable, or bytes changed: damaged)
        others = [s for s in checkpoints.manager.all_steps() if s != step]
        raise WorkdirError(
            f"the checkpoint at step {step} in {checkpoints.directory} is damaged: "
            f"{checkpoints.what_is_damaged(step, e)}. Give another {'--step' if SPOKEN['flags'] else 'step'}"
            f"{f' (there are {sorted(others)})' if others else ''}.") from e
    finally:
        checkpoints.close()
    return setup, state, step
