"""The run's record of how it was trained, and what a resume may change.

`config.json` holds the settings the run trains with now (the scripts that use a run read it);
`config_history.jsonl` a line for each stretch of training that began with other settings: its
first step, the settings that changed and the whole config. Its first line, the settings the run
began with, is never rewritten.

A resume compares the config with the record first, before any checkpoint is read. Every setting
that differs is said in the line that announces the resume; those that change what the run is
(the seed, which fixes the initial parameters and the data order; the data; the model; the task;
the augmentation) refuse it, unless config.resume_with_changes says the user means it. Paths
(`*_dir`, `*_path`) may move with the data, and settings of how to run, not what, are free.
"""
import json
import os

from absl import logging

from datasets import tokenizers
from trainer import parts
from trainer.errors import WorkdirError, listed, setting
from trainer.writers import writing

CONFIG = "config.json"
HISTORY = "config_history.jsonl"
# The validation split the run chose its model on: its size, how it was drawn, and a digest of
# its indices, which the settings alone do not fix (they are drawn from the training split's size).
SPLIT = "validation_split.json"
# A tokenizer the run trained (or was given as a file): what its token ids mean, kept with them.
TOKENIZER = "tokenizer.model"

# What the run is: a change here makes the resumed run another one.
DEFINING = ("seed", "dataset", "validation", "model", "task", "augment")
# Whose change says nothing of the run: where files are, and how this session runs.
FREE = ("resume", "resume_with_changes", "init_from", "init_from_regex")
# The settings that shape the train state: where a checkpoint does not fit, one of them changed.
STATE_SETTINGS = ("model", "dataset", "task", "optimizer", "ema_decay", "precision", "dtype")


def flat(tree, prefix=""):
    """{"optimizer.learning_rate": 0.1, ...} of a config's JSON."""
    if not isinstance(tree, dict) or not tree:
        return {prefix[:-1]: tree}
    return {name: value for key, subtree in tree.items()
            for name, value in flat(subtree, f"{prefix}{key}.").items()}


def saved(workdir):
    """The settings the run trained with last, as JSON: its config.json, or where that cannot be
    read (cut short by a crash of an earlier version, which wrote it in place) the last line of
    config_history.jsonl; None where the run has neither."""
    try:
        with open(os.path.join(workdir, CONFIG), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(workdir, HISTORY), encoding="utf-8") as f:
            return json.loads(f.read().splitlines()[-1])["config"]
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None


def as_json(config):
    return json.loads(config.to_json_best_effort())


def changes(before, after):
    """{name: (value there, value here)} of each setting that differs; paths and FREE left out.
    A setting that one of them lacks (a run of an earlier version) is not a change."""
    before, after = flat(before), flat(after)
    return {name: (before[name], after[name]) for name in sorted(set(before) & set(after))
            if before[name] != after[name] and name.split(".")[0] not in FREE
            and not name.endswith(("_dir", "_path"))}


def said(changed):
    return listed(f"{name} ({there!r} there, {here!r} here)"
                  for name, (there, here) in changed.items())


def settings_changed(config, workdir):
    """Which settings that shape the state differ from the run's record, said for a
    CheckpointMismatch ("" where none does, or the run has no record)."""
    before = saved(workdir)
    if before is None:
        return ""
    changed = {name: values for name, values in changes(before, as_json(config)).items()
               if name.split(".")[0] in STATE_SETTINGS}
    return f"The run's config.json differs in {said(changed)}." if changed else ""


def given_differs(name, there, here):
    """What a changed object given in Python ("given:__main__.CNN#1f2e3d4c") means, for a message."""
    if not all(isinstance(v, str) and v.startswith(parts.GIVEN) for v in (there, here)):
        return ""
    if there.split("#")[0] == here.split("#")[0]:
        return (f" ({name}: the same object with other code or data: its fingerprint is "
                f"{there.split('#')[-1]} there and {here.split('#')[-1]} here)")
    return f" ({name}: another object given in Python)"


def saved_split(workdir):
    try:
        with open(os.path.join(workdir, SPLIT), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # a run of an earlier version, which had none


def check_resume(config, workdir, step, split):
    """The settings that differ from the run's record, on a resume from `step` ({} where the run
    has no record); a WorkdirError where one that defines the run changed, or its validation
    split (`split`: what setup.with_validation describes of it), and config.resume_with_changes
    is not set. Nothing is written."""
    before = saved(workdir)
    changed = {} if before is None else changes(before, as_json(config))
    defining = {name: values for name, values in changed.items()
                if name.split(".")[0] in DEFINING}
    if defining and not config.resume_with_changes:
        given = "".join(given_differs(name, *values) for name, values in defining.items())
        raise WorkdirError(
            f"the run in {workdir} (at step {step}) was trained with other settings that define "
            f"it: {said(defining)}{given}. Resuming would make it another run under the same "
            f"record. Give the run's own settings again to resume; or {setting('resume', False)} "
            f"to start afresh in a new subfolder (the checkpoints stay as they are); or "
            f"{setting('resume_with_changes', True)} to resume with these (the record keeps "
            f"both).")
    recorded = saved_split(workdir)
    if recorded != split and not config.resume_with_changes:
        raise WorkdirError(
            f"the run in {workdir} (at step {step}) chose its model on another validation split: "
            f"{recorded} there, {split} here ({SPLIT}). Training would now see examples it "
            f"validated on, or the other way round. Give the run's own data and "
            f"config.validation to resume; or {setting('resume', False)} to start afresh in a "
            f"new subfolder; or {setting('resume_with_changes', True)} to resume with this split.")
    return changed


def write(workdir, config, step, changed, split, tokenizer):
    """The record of training from `step` (0: a run that begins, its history begun afresh):
    config.json, and a line of config_history.jsonl where the run begins or its settings
    changed (`changed`: check_resume's), validation_split.json (`split`) and the data set's
    tokenizer file. Called by process 0."""
    replace_json(workdir, SPLIT, split)
    keep_tokenizer(workdir, tokenizer)
    path = os.path.join(workdir, HISTORY)
    lines = []
    # A run of an earlier version: its config.json is the best record of its start there is.
    began = saved(workdir) if step > 0 and not os.path.exists(path) else None
    if began is not None:
        lines.append({"step": 0, "changed": {}, "config": began})
    if step == 0 or changed:
        lines.append({"step": step, "changed": {name: list(values)
                                                for name, values in changed.items()},
                      "config": as_json(config)})
    if lines:
        with writing(f"writing {HISTORY}"), open(path, "w" if step == 0 else "a",
                                                  encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
    replace_json(workdir, CONFIG, as_json(config))


def replace_json(workdir, name, value):
    """Whole or not at all: a resume's check reads it."""
    path = os.path.join(workdir, name)
    with writing(f"writing {name}"):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2)
        os.replace(path + ".tmp", path)


def announce(step, changed):
    logging.info("Resuming from the checkpoint at step %d%s.", step,
                 f", with settings changed since: {said(changed)}" if changed else "")


def keep_tokenizer(workdir, tokenizer):
    """Copies the data set's tokenizer file (a SentencePiece .model) into the run, whole, once: a
    resume, generate.py and api.load read it there (setup.with_kept_tokenizer)."""
    source = getattr(tokenizer, "model_file", None)
    kept = os.path.join(workdir, TOKENIZER)
    if source is None or os.path.exists(kept):
        return
    with writing(f"keeping the tokenizer in {kept}"), open(source, "rb") as f:
        tokenizers.write_atomically(kept, f.read())
