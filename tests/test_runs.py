"""What a run needs past the first one: gradient accumulation, the moving average of the
parameters, the best checkpoint, early stopping; each on real runs of scripts/train.py."""
import json
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from conftest import REPO, run_train
from test_reliability import finished_steps, saved_state
from trainer import plots

XOR = ["--config=configs/xor_mlp.py", "--config.plots=False"]


def logged(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_ema_and_grad_accumulation_resume_bitwise_after_sigkill(tmp_path):
    """The moving average lives in the checkpoint: a run killed after its first checkpoint and
    started again ends with the parameters and the average of a run never stopped."""
    args = [*XOR, "--config.steps=per_step", "--config.num_steps=1500",
            "--config.checkpoint_every_steps=300", "--config.ema_decay=0.99",
            "--config.grad_accum_steps=2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_train(*args, f"--workdir={whole}").returncode == 0
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *args, f"--workdir={killed}"]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while run.poll() is None and not finished_steps(killed) and time.time() < deadline:
        time.sleep(0.001)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL and finished_steps(killed)[-1] < 1500
    resumed = run_train(*args, f"--workdir={killed}")
    assert resumed.returncode == 0 and "Resuming from the checkpoint" in resumed.stderr
    expected, actual = saved_state(whole, 1500), saved_state(killed, 1500)
    for part in ("params", "ema_params", "opt_state", "rng"):
        assert jax.tree.all(jax.tree.map(np.array_equal, expected[part], actual[part])), part
    assert not jax.tree.all(jax.tree.map(np.array_equal, actual["params"], actual["ema_params"]))
    final = logged(killed)[-1]
    assert {"eval/loss", "eval/accuracy", "eval_ema/loss", "eval_ema/accuracy"} <= set(final)
    assert final == logged(whole)[-1] | {"step": 1500}
    assert set(plots.curves(logged(killed))["loss"]) == {"train", "eval", "eval_ema"}

    # The moving average, used by the scripts: said so, and its figures beside the others.
    predicted = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"),
                                f"--workdir={killed}", "--ema"], capture_output=True, text=True,
                               cwd=REPO)
    assert predicted.stdout.startswith("# mlp at step 1500, task binary_regression, the moving "
                                       "average of its parameters (--ema)\n"), predicted.stderr
    written = {}
    for ema in ([], ["--ema"]):
        figures = subprocess.run([sys.executable, str(REPO / "scripts" / "plot.py"),
                                  f"--workdir={killed}", *ema], capture_output=True, text=True,
                                 cwd=REPO)
        assert figures.returncode == 0, figures.stderr
        written[bool(ema)] = set(figures.stdout.split())
    assert written == {False: {str(killed / "curves.png"), str(killed / "confusion_matrix.png")},
                       True: {str(killed / "curves.png"), str(killed / "confusion_matrix_ema.png")}}


def test_curves_draw_every_evaluation_whatever_its_name(tmp_path, monkeypatch):
    rows = [{"step": 0, "val/loss": 2.3, "val/accuracy": 0.1},
            {"step": 50, "train/loss": 1.0, "train/accuracy": 0.6, "learning_rate": 1e-3},
            {"step": 100, "train/loss": 0.5, "train/accuracy": 0.8},
            {"step": 100, "val/loss": 0.6, "val/accuracy": 0.75, "val/f1": 0.7,
             "val/per_class_accuracy/3": 0.9, "val_ema/loss": 0.7, "val_ema/accuracy": 0.7},
            {"step": 100, "test/loss": 0.65, "test/accuracy": 0.74}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    series = plots.curves(rows)
    assert {metric: list(splits) for metric, splits in series.items()} == {
        "loss": ["train", "val", "val_ema", "test"], "accuracy": ["train", "val", "val_ema", "test"]}
    assert series["loss"]["train"] == [(50, 1.0), (100, 0.5)]
    assert series["accuracy"]["val"] == [(0, 0.1), (100, 0.75)]

    drawn = []
    monkeypatch.setattr(plots, "save", lambda figure, workdir, name: drawn.append(figure))
    plots.plot_curves(tmp_path)
    lines = {axis.get_title(): {line.get_label(): (line.get_linestyle(), line.get_marker())
                                for line in axis.get_lines()} for axis in drawn[0].axes}
    assert lines["loss"] == lines["accuracy"] == {
        "train": ("-", "None"), "val": ("-", "o"), "val_ema": ("--", "s"), "test": ("-", "o")}


def test_the_best_checkpoint_is_kept_while_newer_ones_rotate(tmp_path):
    # best_mode=max on the loss keeps the worst evaluation: an early one, so the rotation of the
    # newest two past it shows.
    args = [*XOR, "--config.num_steps=300", "--config.eval_every_steps=50",
            "--config.checkpoint_every_steps=50", "--config.keep_checkpoints=2",
            "--config.best_metric=eval/loss", "--config.best_mode=max",
            "--config.select_on_test=True", f"--workdir={tmp_path}"]
    result = run_train(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = {e["step"]: e["eval/loss"] for e in logged(tmp_path) if "eval/loss" in e}
    best = max(evals, key=evals.get)
    assert best < 250
    assert finished_steps(tmp_path) == sorted({best, 250, 300})

    evaluated = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"),
                                f"--workdir={tmp_path}", "--step=best"],
                               capture_output=True, text=True, cwd=REPO)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout.splitlines()[-1])
    assert report["step"] == best and report["eval/loss"] == evals[best]
    predicted = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"),
                                f"--workdir={tmp_path}", "--step=best"],
                               capture_output=True, text=True, cwd=REPO)
    assert predicted.returncode == 0 and f"at step {best}," in predicted.stdout


def test_step_best_and_ema_of_a_run_that_kept_neither_are_one_line(tmp_path):
    assert run_train(*XOR, "--config.num_steps=50", f"--workdir={tmp_path}").returncode == 0
    for flag, message in (("--step=best", "kept no best checkpoint (its config has no "
                                          "best_metric)"),
                          ("--ema", "kept no moving average of its parameters"),
                          ("--step=last", "--step=last: give a step number")):
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"),
                                 f"--workdir={tmp_path}", flag],
                                capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


EARLY = [*XOR, "--config.eval_every_steps=50", "--config.checkpoint_every_steps=1000",
         # max on a falling loss: no evaluation after the first improves on it
         "--config.early_stopping.metric=eval/loss", "--config.early_stopping.mode=max",
         "--config.early_stopping.patience=3", "--config.select_on_test=True"]


def test_early_stopping_says_why_and_a_resumed_run_remembers_the_count(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    result = run_train(*EARLY, "--config.num_steps=1000", f"--workdir={whole}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("Early stopping at step 200: eval/loss has not improved by more than 0.0 for 3 "
            "evaluations") in result.stderr
    assert json.loads((whole / "results.json").read_text())["step"] == 200
    assert finished_steps(whole) == [200]

    # Stopped at step 100 (one evaluation without improvement counted), then resumed: the count
    # goes on from 1, so the stop comes at 200 again, not at 250.
    assert run_train(*EARLY, "--config.num_steps=100", f"--workdir={resumed}").returncode == 0
    again = run_train(*EARLY, "--config.num_steps=1000", f"--workdir={resumed}")
    assert "Resuming from the checkpoint at step 100" in again.stderr
    assert "Early stopping at step 200" in again.stderr
    assert [e for e in logged(resumed) if "eval/loss" in e] == [
        e for e in logged(whole) if "eval/loss" in e]

    done = run_train(*EARLY, "--config.num_steps=1000", f"--workdir={resumed}")
    assert done.returncode == 0
    assert "already complete: early stopping ended it at step 200 of 1000" in done.stderr


def test_a_run_of_an_earlier_version_is_still_read(tmp_path):
    """Its config.json lacks the fields added since: they take today's defaults."""
    assert run_train(*XOR, "--config.num_steps=50", f"--workdir={tmp_path}").returncode == 0
    config = json.loads((tmp_path / "config.json").read_text())
    for field in ("grad_accum_steps", "ema_decay", "best_metric", "best_mode", "early_stopping",
                  "init_from", "init_from_regex", "profile_steps", "wandb"):
        del config[field]
    del config["optimizer"]["frozen"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    evaluated = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"),
                                f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=REPO)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout.splitlines()[-1])["step"] == 50


def test_a_checkpoint_of_the_earlier_version_resumes(tmp_path):
    """Written before the moving average, the loop's values and the checksums were kept: the
    state alone, without an ema_params field. It resumes (not set aside as damaged) and the run
    ends bitwise where a run never stopped ends."""
    args = [*XOR, "--config.checkpoint_every_steps=100"]
    whole, old = tmp_path / "whole", tmp_path / "old"
    assert run_train(*args, "--config.num_steps=300", f"--workdir={whole}").returncode == 0
    assert run_train(*args, "--config.num_steps=100", f"--workdir={old}").returncode == 0
    state = saved_state(old, 100)
    del state["ema_params"]
    shutil.rmtree(old / "checkpoints")
    manager = ocp.CheckpointManager(old / "checkpoints",
                                    item_handlers={"state": ocp.StandardCheckpointHandler()})
    manager.save(100, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
    manager.close()
    assert not (old / "checkpoints" / "100" / "checksums").exists()
    resumed = run_train(*args, "--config.num_steps=300", f"--workdir={old}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from the checkpoint at step 100" in resumed.stderr
    assert "damaged" not in resumed.stderr
    for part in ("params", "opt_state", "rng"):
        same = jax.tree.map(np.array_equal, saved_state(whole, 300)[part], saved_state(old, 300)[part])
        assert jax.tree.all(same), part


def test_early_stopping_counted_under_other_settings_starts_afresh(tmp_path):
    """A run stopped early is complete for its settings; with another patience it goes on."""
    assert run_train(*EARLY, "--config.num_steps=1000", f"--workdir={tmp_path}").returncode == 0
    longer = run_train(*EARLY, "--config.num_steps=1000", "--config.early_stopping.patience=5",
                       f"--workdir={tmp_path}")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "Resuming from the checkpoint at step 200" in longer.stderr
    # counted afresh from step 200: the evaluation at 250 is the best, then 5 without improvement
    assert "Early stopping at step 500" in longer.stderr
