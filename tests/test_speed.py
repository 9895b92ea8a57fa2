"""The speed machinery outside the loop: glibc's settings for XLA's buffers, and the benchmark."""
import json
import os
import subprocess
import sys

import pytest

from conftest import MNIST_DIR, REPO
from trainer import host_memory

PRINT_AND_RESTART = (
    f"import os, sys; sys.path.insert(0, {str(REPO)!r}); from trainer import host_memory; "
    "print(os.getpid(), os.environ.get('MALLOC_TOP_PAD_'), flush=True); "
    "host_memory.restart_with_reusing_malloc()")


def printed_lines(env):
    return subprocess.run([sys.executable, "-c", PRINT_AND_RESTART], env=env, check=True,
                          capture_output=True, text=True).stdout.splitlines()


def env_without_malloc_settings(**extra):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **extra}


@pytest.mark.skipif(not host_memory.uses_glibc(), reason="the settings are glibc's")
def test_the_process_restarts_once_in_place_with_the_malloc_settings():
    before, after = printed_lines(env_without_malloc_settings())
    pid = before.split()[0]
    assert before == f"{pid} None"
    assert after == f"{pid} {host_memory.SETTINGS['MALLOC_TOP_PAD_']}"  # same pid: exec, no child


def test_a_users_own_malloc_settings_are_left_alone():
    lines = printed_lines(env_without_malloc_settings(MALLOC_ARENA_MAX="2"))
    assert len(lines) == 1 and lines[0].endswith(" None")


def run_benchmark(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), *args],
                          capture_output=True, text=True, cwd=REPO)


def test_benchmark_reports_each_way_in_process_and_as_whole_commands(tmp_path):
    out = tmp_path / "benchmark.json"
    result = run_benchmark("--config=configs/mnist_mlp.py", f"--config.dataset.data_dir={MNIST_DIR}",
                           "--config.model.features=(32,)", "--config.num_epochs=1", "--repeats=1",
                           f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [row["name"] for row in report["in_process"]] == [
        "hand-written loop", "framework, per_step", "framework, fused"]
    for row in report["in_process"]:
        assert row["test_accuracy"] > 0.85, row
        assert row["examples_per_sec"] > 0 and row["compile_seconds"] > 0, row
    command = report["command"]
    assert {name: len(seconds) for name, seconds in command["seconds"].items()} == {
        "train.py": 1, "hand-written loop": 1, "hand-written loop, framework's malloc settings": 1}
    assert command["ratio_train_py_cold_cache_to_hand_loop"] == pytest.approx(
        command["seconds"]["train.py"][0] / command["seconds"]["hand-written loop"][0], abs=1e-3)


def test_benchmark_reports_what_named_metrics_cost_an_evaluation(tmp_path):
    out = tmp_path / "benchmark.json"
    result = run_benchmark("--config=configs/mnist_mlp.py", f"--config.dataset.data_dir={MNIST_DIR}",
                           "--config.model.features=(10,)", "--sections=evaluation",
                           "--eval_repeats=1", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "in_process" not in report and "command" not in report
    cost = report["evaluation"]
    assert (cost["examples"], cost["eval_batch_size"], cost["repeats"]) == (10000, 1000, 1)
    assert list(cost["ways"]) == ["today", "loss_accuracy", "all_metrics"]
    assert cost["ways"]["all_metrics"]["metrics"] == [
        "loss", "accuracy", "top5_accuracy", "precision", "recall", "f1", "confusion_matrix",
        "per_class_accuracy"]
    today = cost["ways"]["today"]
    for row in cost["ways"].values():
        assert row["accuracy"] == today["accuracy"], row  # the same metrics, computed anew
        assert row["loss"] == pytest.approx(today["loss"], abs=1e-4), row
        assert len(row["ms"]) == 1 and row["ms_per_evaluation"] == row["ms_min"] > 0, row
        assert row["compile_seconds"] > 0, row
    for name in ("ratio_loss_accuracy_to_today", "ratio_all_metrics_to_loss_accuracy",
                 "ratio_loss_accuracy_to_today_of_minima",
                 "ratio_all_metrics_to_loss_accuracy_of_minima"):
        assert isinstance(cost[name], float) and cost[name] > 0, (name, cost[name])


def test_benchmark_refuses_a_config_its_hand_loop_cannot_train():
    result = run_benchmark("--config=configs/xor_mlp.py")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the benchmark's hand-written loop is a classifier's, and this config's task is "
        "'binary_regression'. Give a classification config, e.g. configs/mnist_cnn.py."]
