"""Which evaluations a run makes: `config.evals.<name>`, each on a split of the run's data set, on a
schedule of its own, logged as `<name>/<metric>` (`<name>_ema/<metric>` for the moving average).

An evaluation runs every config.eval_every_steps / eval_every_epochs unless it says otherwise,
and every one also runs at the end of training. A config without `evals` makes today's one
evaluation: the test split, logged as `eval/<metric>`, so older runs, their config.json and the
scripts read as before.

Selection (config.best_metric, config.early_stopping.metric) names `<evaluation>/<metric>` of a
split other than the test split: the test split reports, it does not choose
(config.select_on_test=True says that a run means it).
"""
import dataclasses

import ml_collections

from trainer.errors import ConfigError, argument, listed, setting

SPLITS = ("validation", "test", "train")
LEGACY = "eval"  # the name of the one evaluation of a config without evals


@dataclasses.dataclass(frozen=True)
class Evaluation:
    name: str
    split: str = "validation"  # a split of the run's data set: validation, test or train
    # > 0: every this many steps / epochs; both 0: only at the end; None: config.eval_every_*.
    every_steps: int = None
    every_epochs: int = None
    max_examples: int = 0  # > 0: only the split's first this many examples, the same each time
    ema: bool = True  # also the moving average of the parameters, where config.ema_decay keeps one
    # Names of trainer/metrics.py (or of evaluators of your own); None: the task's own (loss, and
    # accuracy for a classifier).
    metrics: tuple = None
    # Another data set, named and given fields as config.dataset is (its `split` is read); None:
    # the run's.
    dataset: ml_collections.ConfigDict = None

    def prefixes(self, ema_decay):
        """The prefixes of its rows: `name`, and `name_ema` where it evaluates the EMA too."""
        return (self.name, f"{self.name}_ema") if self.ema and ema_decay else (self.name,)

    def periods(self, steps_per_epoch):
        return (self.every_steps, self.every_epochs * steps_per_epoch)


FIELDS = [field.name for field in dataclasses.fields(Evaluation) if field.name != "name"]


def evaluations(config):
    """The run's evaluations, by name (a ConfigDict keeps its fields sorted), but those set to
    None (--config.evals.val=None); a ConfigError names a bad one."""
    named = {name: fields for name, fields in (config.get("evals") or {}).items()
             if fields is not None}
    if not named:  # --config.evals={} too
        return (Evaluation(LEGACY, "test", config.eval_every_steps, config.eval_every_epochs),)
    return tuple(evaluation(config, name, fields) for name, fields in named.items())


def evaluation(config, name, fields):
    where = f"config.evals.{name}"
    if not name.isidentifier() or name == "train" or name.endswith("_ema"):
        raise ConfigError(f"{where}: an evaluation's name must be an identifier, not 'train' (the "
                          f"training rows' prefix) and not ending in '_ema' (its moving "
                          f"average's rows); rename it.")
    if not isinstance(fields, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"{where}={fields!r}: give a dict of its fields "
                          f"({', '.join(FIELDS)}).")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: an evaluation has no such field; its fields are "
                          f"{', '.join(FIELDS)}.")
    made = Evaluation(name, **{"every_steps": config.eval_every_steps,
                               "every_epochs": config.eval_every_epochs, **{
                                   field: value for field, value in fields.items()
                                   if value is not None}})
    if made.split not in SPLITS:
        raise ConfigError(f"{where}.split={made.split!r} is not a split: give one of "
                          f"{', '.join(SPLITS)}.")
    for field in ("every_steps", "every_epochs", "max_examples"):
        value = getattr(made, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}.{field}={value!r} is invalid: it must be an integer >= 0.")
    if isinstance(made.metrics, str):  # "loss,f1"
        made = dataclasses.replace(made, metrics=(made.metrics,))
    if isinstance(made.metrics, (tuple, list)) and all(isinstance(n, str) for n in made.metrics):
        made = dataclasses.replace(made, metrics=tuple(  # a flag's "loss,f1": ("loss,f1",)
            name.strip() for entry in made.metrics for name in entry.split(",") if name.strip()))
    if made.metrics is not None:
        if (not isinstance(made.metrics, (tuple, list)) or not made.metrics
                or not all(isinstance(name, str) for name in made.metrics)):
            raise ConfigError(f"{where}.metrics={made.metrics!r} is invalid: give metric names, "
                              f"e.g. ('loss', 'accuracy', 'f1') (docs/runs.md#metrics).")
        made = dataclasses.replace(made, metrics=tuple(dict.fromkeys(made.metrics)))
    if made.dataset is not None and (not isinstance(made.dataset, (dict, ml_collections.ConfigDict))
                                     or not made.dataset.get("name")):
        raise ConfigError(f"{where}.dataset={made.dataset!r} is invalid: give a data set's name "
                          f"and fields, as config.dataset takes them, e.g. "
                          f"dict(name='image_folder', data_dir='digits').")
    if isinstance(made.dataset, dict):
        made = dataclasses.replace(made, dataset=ml_collections.ConfigDict(made.dataset))
    if not isinstance(made.ema, bool):
        raise ConfigError(f"{where}.ema={made.ema!r} is invalid: it must be True or False.")
    return made


def evaluation_of(config, metric):
    """The evaluation that logs `metric` ("val/accuracy", "val_ema/loss"); None for no such."""
    prefix = metric.split("/")[0]
    return next((each for each in evaluations(config) if prefix in each.prefixes(True)), None)


def logged(config, metrics_of):
    """Every `<prefix>/<metric>` the evaluations log, with the evaluation that logs it;
    `metrics_of(evaluation)`: its trainer.metrics.Metrics."""
    return {f"{prefix}/{metric}": each for each in evaluations(config)
            for prefix in each.prefixes(config.ema_decay)
            for metric in metrics_of(each).scalar_names()}


def check_selection(config, metrics_of):
    """config.best_metric and config.early_stopping.metric name metrics some evaluation logs, of
    a split other than the test split (unless config.select_on_test). An evaluation with
    evaluators of the user's own may log any name."""
    rows = logged(config, metrics_of)
    for field, name in (("best_metric", config.best_metric),
                        ("early_stopping.metric", config.early_stopping.metric)):
        if not name:
            continue
        each = evaluation_of(config, name)
        if each is not None and metrics_of(each).parts and name.split("/")[0] in each.prefixes(
                config.ema_decay):
            rows[name] = each
        if name not in rows:
            without_ema = "_ema/" in name and not config.ema_decay
            raise ConfigError(
                f"config.{field}={name!r} is never logged: evaluation logs {listed(list(rows))}"
                + (f"; {name.split('/')[0]}/... is the moving average of the parameters, which "
                   f"{setting('ema_decay', 0.999)} (say) keeps." if without_ema else "."))
        if rows[name].split == "test" and not config.select_on_test:
            raise ConfigError(
                f"config.{field}={name!r} would choose the model by the test split, whose "
                f"figures are then no longer an honest estimate: carve a validation split from "
                f"train ({setting('validation.fraction', 0.1)}) and evaluate it "
                f"(config.evals.val=dict(split='validation', every_epochs=1); "
                f"docs/runs.md#evaluations), and select on val/...; or "
                f"{setting('select_on_test', True)} if that is what you mean.")


def chosen(runs, name=None, split=None, testing=False):
    """The evaluations a use of a trained run asks for, of the run's `runs`: the one named
    `name`, else all (with `testing`, those of the test split); `split`: instead one of that split
    named after it, with the metrics of `name`'s, or else the task's."""
    if name is not None:
        named = [each for each in runs if each.name == name]
        if not named:
            raise ConfigError(f"{argument('eval', name)}: the run has no such evaluation; it has "
                              f"{listed(each.name for each in runs)}.")
        runs = named
    elif testing:  # of the run's data set, whose test split the data given replaces
        runs = [each for each in runs if each.split == "test" and each.dataset is None] or runs[:1]
    if split is None:
        return runs
    if split not in SPLITS:
        raise ConfigError(f"{argument('split', split)} is not a split: give one of "
                          f"{', '.join(SPLITS)}.")
    return [Evaluation(split, split, 0, 0, metrics=runs[0].metrics if name else None)]
