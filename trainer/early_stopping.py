"""config.early_stopping: stop a run whose eval metric has not improved for `patience`
evaluations. Its count lives in each checkpoint (the `loop` item), so a resumed run goes on
counting where the checkpoint left off, and a run that stopped early stays complete."""
import math

from trainer.checkpoint import better_is_lower


class EarlyStopping:

    def __init__(self, config, saved=None):
        """`saved`: what `values()` returned when the checkpoint resumed from was saved. Counted
        under other settings (another metric, mode, patience or min_delta), it starts afresh."""
        self.metric, self.patience, self.min_delta = config.metric, config.patience, config.min_delta
        self.lower = bool(self.metric) and better_is_lower(config.mode, self.metric)
        self.settings = [self.metric, self.lower, self.patience, self.min_delta]
        saved = saved if saved and saved.get("settings") == self.settings else {}
        self.best = saved.get("best")  # the best value so far (None: no evaluation yet)
        self.evals_since_best = saved.get("evals_since_best", 0)
        self.stopped_at = saved.get("stopped_at")  # the step the run stopped at, if it did

    def values(self):
        return {"best": self.best, "evals_since_best": self.evals_since_best,
                "stopped_at": self.stopped_at, "settings": self.settings}

    def improved(self, value):
        if self.best is None:
            return math.isfinite(value)
        gain = self.best - value if self.lower else value - self.best
        return gain > self.min_delta  # a NaN compares false: never an improvement

    def update(self, step, scalars):
        """Counts the evaluation at `step` (`scalars`: the evaluations due there, which may not
        hold the metric: another's schedule); returns why the run stops there, or None."""
        if not self.metric or self.metric not in scalars:
            return None
        value = scalars[self.metric]
        if self.improved(value):
            self.best, self.evals_since_best = value, 0
            return None
        self.evals_since_best += 1
        if self.evals_since_best < self.patience:
            return None
        self.stopped_at = step
        best = "none finite" if self.best is None else f"{self.best:.6g}"
        return (f"Early stopping at step {step}: {self.metric} has not improved by more than "
                f"{self.min_delta} for {self.patience} evaluations (best {best}, now {value:.6g}).")
