"""The W&B writer (the optional extra `.[wandb]`, part of `.[test]`), in W&B's offline mode: real
runs of scripts/train.py, their files read back with W&B's own reader of its transaction log
(`wandb leet inspect --json`). No network: HOME is a temporary folder, so nothing reaches the
user's W&B settings or caches either."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, files, run_train

XOR = ("--config=configs/xor_mlp.py", "--config.plots=False", "--config.log_every_steps=50",
       "--config.eval_every_steps=100", "--config.writers=('jsonl','wandb')")


def offline_env(tmp_path):
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
            "HOME": str(tmp_path / "home")}


def records(run_folder, env):
    """The records of one offline run's .wandb file, as W&B's own inspector reads them."""
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json",
                             str(run_folder)], capture_output=True, text=True, timeout=120,
                            env=env, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def history(run_records):
    """{step: {name: value}} of the scalars logged (W&B's own `_step`, `_runtime`... left out)."""
    rows = {}
    for record in run_records:
        if record["type"] == "history":
            item = record["history"]["item"]
            rows.setdefault(item["_step"], {}).update(
                {name: value for name, value in item.items() if not name.startswith("_")})
    return rows


def the_run(run_records):
    (run,) = [r["run"] for r in run_records if r["type"] == "run"]
    return run


def test_offline_run_holds_scalars_and_config_and_a_resume_continues_it(tmp_path):
    pytest.importorskip("wandb", reason="pip install -e '.[test]' installs it")
    env = {**os.environ, **offline_env(tmp_path)}
    workdir = tmp_path / "run"

    result = run_train(*XOR, f"--workdir={workdir}", "--config.num_steps=200",
                       env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    run_id = (workdir / "wandb_run_id").read_text().strip()
    (first,) = sorted((workdir / "wandb").glob("offline-run-*"))
    assert (first / f"run-{run_id}.wandb").is_file()
    first_records = records(first, env)
    run = the_run(first_records)
    assert run["run_id"] == run_id and run["project"] == "flaxfit"

    # The scalars: every step and value metrics.jsonl holds.
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    expected = {}
    for row in logged:
        expected.setdefault(row.pop("step"), {}).update(row)
    assert sorted(expected) == [50, 100, 150, 200]
    logged_to_wandb = history(first_records)
    assert sorted(logged_to_wandb) == sorted(expected)
    for step, scalars in expected.items():
        assert logged_to_wandb[step] == pytest.approx(scalars), step
    assert {"train/loss", "eval/loss", "eval/accuracy", "learning_rate"} <= set(expected[200])

    # The config: the run's whole config.
    config = run["config"]["update"]
    assert config["num_steps"] == 200 and config["model"]["features"] == [16, 1]
    assert config["optimizer"]["learning_rate"] == 0.1 and config["wandb"]["project"] == "flaxfit"

    # The same command with more steps resumes from step 200: the same W&B run, from step 200 on.
    result = run_train(*XOR, f"--workdir={workdir}", "--config.num_steps=400",
                       env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (workdir / "wandb_run_id").read_text().strip() == run_id
    (second,) = set((workdir / "wandb").glob("offline-run-*")) - {first}
    assert (second / f"run-{run_id}.wandb").is_file()
    second_records = records(second, env)
    assert the_run(second_records)["run_id"] == run_id
    assert the_run(second_records)["config"]["update"]["num_steps"] == 400
    assert sorted(history(second_records)) == [250, 300, 350, 400]


def test_a_sigkill_keeps_all_but_the_last_second(tmp_path):
    """W&B writes its run file every 15 s, and a kill loses what it has not written; the writer
    has it written every second."""
    pytest.importorskip("wandb", reason="pip install -e '.[test]' installs it")
    env = {**os.environ, **offline_env(tmp_path)}
    workdir = tmp_path / "run"
    run = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *XOR,
                            f"--workdir={workdir}", "--config.num_steps=100000000",
                            "--config.log_every_steps=1000", "--config.eval_every_steps=0"],
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 120
    while run.poll() is None and time.time() < deadline and not (
            metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    logged = json.loads(metrics.read_text().splitlines()[-1])["step"]  # W&B's is sent right after
    time.sleep(4)  # well over the second W&B may hold it
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL  # killed, not finished
    (folder,) = (workdir / "wandb").glob("offline-run-*")
    assert logged in history(records(folder, env))


def test_online_without_a_login_fails_before_writing_anything(tmp_path):
    workdir = tmp_path / "run"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")},
           "HOME": str(tmp_path / "home")}  # no W&B settings, no .netrc, no key
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *XOR,
                             f"--workdir={workdir}"], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: config.writers names 'wandb', which logs online, and no W&B API key is "
        "configured: run `wandb login` or set WANDB_API_KEY; or keep the run here, to upload "
        "later: WANDB_MODE=offline."]
    assert not workdir.exists()


def test_without_wandb_installed_the_run_fails_before_writing_anything(tmp_path):
    # A `wandb` that cannot be imported, ahead of any installed one.
    stub = tmp_path / "stub" / "wandb"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("No module named wandb")\n')
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "kept.txt").write_text("a file that stays")
    before = files(workdir)

    result = run_train("--config=configs/xor_mlp.py", f"--workdir={workdir}",
                       "--config.writers=('tensorboard','wandb')",
                       env={"PYTHONPATH": str(stub.parent), "HOME": str(tmp_path / "home")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert 'pip install -e ".[wandb]"' in lines[0]
    assert files(workdir) == before
