"""A resume with other settings (trainer/record.py): every setting that changed is said in the
resume's line and added to config_history.jsonl, whose first line is never rewritten; a change of
what the run is (its seed, its model, an object's code) is refused in one line, nothing written,
unless resume_with_changes says it is meant."""
import json
import re
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO, files, run_train
from trainer import api
from trainer.errors import WorkdirError

XOR = ["--config=configs/xor_mlp.py", "--config.log_every_steps=25",
       "--config.eval_every_steps=50", "--config.checkpoint_every_steps=50"]


def history_lines(workdir):
    return [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_50(tmp_path_factory):
    """An XOR run of 50 steps, trained with the config's own settings (batch 4, lr 0.1, seed 0)."""
    workdir = tmp_path_factory.mktemp("xor")
    result = run_train(*XOR, "--config.num_steps=50", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    return workdir


def kept(workdir):
    """The run's files but the lock, which holds the pid of the last process to start there."""
    return {path: data for path, data in files(workdir).items()
            if not path.name.startswith(".lock")}


def copy_of(run, tmp_path):
    workdir = tmp_path / "run"
    for path, data in files(run).items():
        (workdir / path.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path.relative_to(run)).write_bytes(data)
    return workdir


def test_a_resume_says_every_changed_setting_and_the_record_keeps_both(first_50, tmp_path):
    workdir = copy_of(first_50, tmp_path)
    assert [line["step"] for line in history_lines(workdir)] == [0]
    began = history_lines(workdir)[0]
    assert began["changed"] == {} and began["config"]["batch_size"] == 4

    result = run_train(*XOR, "--config.num_steps=100", "--config.batch_size=2",
                       "--config.optimizer.learning_rate=0.05", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    assert ("Resuming from the checkpoint at step 50, with settings changed since: batch_size (4 "
            "there, 2 here), num_steps (50 there, 100 here), optimizer.learning_rate (0.1 there, "
            "0.05 here).") in result.stderr
    lines = history_lines(workdir)
    assert lines[0] == began  # the start, never rewritten
    assert lines[1]["step"] == 50 and lines[1]["changed"] == {
        "batch_size": [4, 2], "num_steps": [50, 100], "optimizer.learning_rate": [0.1, 0.05]}
    now = json.loads((workdir / "config.json").read_text())
    assert now == lines[1]["config"] and now["batch_size"] == 2  # what the scripts read

    # The same settings again: a run already complete, nothing added.
    assert run_train(*XOR, "--config.num_steps=100", "--config.batch_size=2",
                     "--config.optimizer.learning_rate=0.05",
                     f"--workdir={workdir}").returncode == 0
    assert history_lines(workdir) == lines


def test_a_changed_seed_is_refused_touching_nothing_unless_meant(first_50, tmp_path):
    workdir = copy_of(first_50, tmp_path)
    before = kept(workdir)
    result = run_train(*XOR, "--config.num_steps=100", "--config.seed=5", f"--workdir={workdir}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: the run in {workdir} (at step 50) was trained with other settings that define "
        f"it: seed (0 there, 5 here). Resuming would make it another run under the same record. "
        f"Give the run's own settings again to resume; or --config.resume=False to start afresh "
        f"in a new subfolder (the checkpoints stay as they are); or "
        f"--config.resume_with_changes=True to resume with these (the record keeps both)."]
    assert kept(workdir) == before

    with pytest.raises(WorkdirError, match=r"seed \(0 there, 5 here\).*resume=False .*"
                       r"resume_with_changes=True to resume"):  # Python's wording from Python
        api.fit("configs/xor_mlp.py", workdir, num_steps=100, seed=5, plots=False)
    assert kept(workdir) == before

    run = api.fit("configs/xor_mlp.py", workdir, num_steps=100, seed=5, plots=False,
                  resume_with_changes=True, checkpoint_every_steps=50, log_every_steps=25,
                  eval_every_steps=50)
    assert run.step == 100
    lines = history_lines(workdir)
    assert [line["step"] for line in lines] == [0, 50]
    assert lines[1]["changed"] == {"seed": [0, 5], "num_steps": [50, 100],
                                   "plots": [True, False]}


def test_a_run_without_a_history_keeps_its_config_json_as_its_start(first_50, tmp_path):
    """A run of an earlier version wrote config.json alone."""
    workdir = copy_of(first_50, tmp_path)
    (workdir / "config_history.jsonl").unlink()
    written = json.loads((workdir / "config.json").read_text())
    result = run_train(*XOR, "--config.num_steps=100", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    lines = history_lines(workdir)
    assert lines[0] == {"step": 0, "changed": {}, "config": written}
    assert lines[1]["step"] == 50 and lines[1]["changed"] == {"num_steps": [50, 100]}


MODEL = '''
import flax.linen as nn


class Net(nn.Module):
    rate: float = 0.1

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(1)(nn.relu(nn.Dense(16)(x)) * (1 - self.rate))
'''

FIT = '''
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import net
from trainer import api
try:
    api.fit("configs/xor_mlp.py", sys.argv[3], model=net.Net, num_steps=int(sys.argv[4]),
            checkpoint_every_steps=10, plots=False)
except api.WorkdirError as e:
    print(e)
    sys.exit(2)
'''


def test_a_model_whose_code_changed_is_refused_in_another_process(tmp_path):
    """The notebook of tomorrow: the same class from the same file resumes; one edit, a field's
    default, is refused with both fingerprints."""
    (tmp_path / "net.py").write_text(MODEL)
    workdir = tmp_path / "run"

    def fit(num_steps):
        return subprocess.run([sys.executable, "-c", FIT, str(tmp_path), str(REPO), str(workdir),
                               str(num_steps)], capture_output=True, text=True, cwd=REPO,
                              timeout=300)

    assert fit(10).returncode == 0
    resumed = fit(20)
    assert resumed.returncode == 0 and "Resuming from the checkpoint at step 10" in resumed.stderr
    (tmp_path / "net.py").write_text(MODEL.replace("rate: float = 0.1", "rate: float = 0.5"))
    before = kept(workdir)
    refused = fit(30)
    assert refused.returncode == 2
    assert "(at step 20) was trained with other settings that define it: model.name " \
           "('given:net.Net#" in refused.stdout
    assert "(model.name: the same object with other code or data: its fingerprint is " in (
        refused.stdout)
    assert kept(workdir) == before


def test_the_resume_command_after_a_stop_under_resume_false_resumes(first_50, tmp_path):
    """resume=False started a new subfolder: the same command again would start another, so the
    stop names the command that resumes this one."""
    workdir = copy_of(first_50, tmp_path)
    args = [*XOR, "--config.checkpoint_every_steps=1000000", "--config.eval_every_steps=0",
            "--config.log_every_steps=100"]
    run = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args,
                            "--config.num_steps=1000000", "--config.resume=False", f"--workdir={workdir}"], cwd=REPO, text=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for line in run.stderr:
        if "Steps run" in line:
            run.send_signal(signal.SIGTERM)
            break
    stderr = run.communicate(timeout=120)[1]
    assert run.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    stopped_at = int(re.search(r"Stopped by SIGTERM at step (\d+)", stderr)[1])
    assert (f"To resume, give --workdir={workdir / 'restart_1'} and --config.resume=True: with "
            f"resume=False the same again would start another run beside it.") in stderr
    resumed = run_train(*args, f"--config.num_steps={stopped_at + 10}",
                        "--config.resume=True", f"--workdir={workdir / 'restart_1'}")
    assert f"Resuming from the checkpoint at step {stopped_at}, with settings changed since: " \
           f"num_steps (1000000 there, {stopped_at + 10} here)" in resumed.stderr


def test_a_finished_run_asked_for_fewer_steps_says_so(first_50, tmp_path):
    workdir = copy_of(first_50, tmp_path)
    result = run_train(*XOR, "--config.num_steps=20", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    assert (f"The run in {workdir} is already complete: step 50, past the 20 steps asked for now "
            f"(it trains no further, nor back; --step=N of scripts/evaluate.py uses an earlier "
            f"checkpoint).") in result.stderr
    assert "early" not in result.stderr


def test_errors_say_settings_and_arguments_as_their_reader_gives_them(first_50, tmp_path):
    """A run without checkpoints, from Python and from a script: each its own wording."""
    workdir = copy_of(first_50, tmp_path)
    shutil.rmtree(workdir / "checkpoints")
    with pytest.raises(WorkdirError) as refused:
        api.load(workdir)
    assert str(refused.value).endswith(f"train first with trainer.api.fit(config, "
                                       f"{str(workdir)!r}).")
    script = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"),
                             f"--workdir={workdir}"], capture_output=True, text=True, cwd=REPO)
    assert script.returncode == 2
    assert script.stderr.strip().endswith(f"train first with scripts/train.py --workdir={workdir}.")
