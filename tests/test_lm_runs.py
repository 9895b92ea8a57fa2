"""A transformer trained on the real Shakespeare corpus through the command line, as a user runs
configs/shakespeare_lm.py (small: one block, width 32, 20 steps; remat=full and mixed_bfloat16, so
that every promise below holds with recomputation and in bfloat16 too): what it logs and writes
back, bitwise resume after SIGKILL,
a resume under another remat, 8 devices with fsdp=4 against one, NNX, generation, and bad input
as one line (a mixture's: tests/test_text.py). The data: ../shared/data/shakespeare, its token
cache written beside it."""
import json
import math
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, devices, files, history, run_train

SHAKESPEARE = REPO.parent / "shared" / "data" / "shakespeare"
SMALL_LM = ["--config=configs/shakespeare_lm.py", f"--config.dataset.path={SHAKESPEARE}",
            "--config.model.num_layers=1", "--config.model.embed_dim=32",
            "--config.model.num_heads=2", "--config.batch_size=16", "--config.num_steps=20",
            "--config.optimizer.warmup_steps=5", "--config.log_every_steps=5",
            "--config.checkpoint_every_steps=10", "--config.evals.val.every_steps=10",
            "--config.evals.val.max_examples=64", "--config.evals.test.max_examples=64",
            "--config.eval_batch_size=32", "--config.samples.max_new_tokens=24",
            "--config.plots=False", "--config.remat=full",
            "--config.precision=mixed_bfloat16"]


# Host batches, so that worker processes can read them (the default, fused, cuts them on the device).
PER_STEP = ["--config.steps=per_step"]


def train_lm(workdir, *args, num_devices=1):
    result = run_train(*SMALL_LM, f"--workdir={workdir}", *args, env=devices(num_devices))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory):
    if not (SHAKESPEARE / "tragedies" / "hamlet.md").exists():
        pytest.fail(f"the Shakespeare corpus is expected at {SHAKESPEARE} (see its README)")
    workdir = tmp_path_factory.mktemp("lm")
    train_lm(workdir, *PER_STEP, "--config.pipeline.workers=0")
    return workdir


def train_rows(workdir):
    return [row for row in history(workdir) if "train/loss" in row]


def test_a_run_logs_the_language_model_figures_and_writes_samples(lm_run):
    rows = [json.loads(line) for line in (lm_run / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if "train/loss" in row]
    assert [row["step"] for row in train] == [5, 10, 15, 20]
    assert train[-1]["train/loss"] < train[0]["train/loss"]
    for row in train:
        assert row["train/perplexity"] == pytest.approx(math.exp(row["train/loss"]), rel=1e-4)
        # Bytes as tokens: a bit per byte is the loss in bits, but each document's end-of-
        # document target counts in the loss and holds no byte.
        assert row["train/bits_per_byte"] >= row["train/loss"] / math.log(2) * (1 - 1e-6)
        assert row["train/bits_per_byte"] == pytest.approx(row["train/loss"] / math.log(2),
                                                           rel=0.02)
        assert 0 < row["train/accuracy"] < 1 and row["tokens_per_sec"] > 0
    val = [row for row in rows if "val/loss" in row]
    assert [row["step"] for row in val] == [10, 20] and 0 < val[0]["val/tokens"] <= 64 * 64
    samples = [row for row in rows if "samples" in row]
    assert [row["step"] for row in samples] == [10, 20]
    assert all(row["samples"].startswith("**ROMEO**  \n") for row in samples)
    assert samples[0]["samples"] != samples[1]["samples"]  # a new key each evaluation
    results = json.loads((lm_run / "results.json").read_text())
    assert results["best_step"] in (10, 20) and "best/test/bits_per_byte" in results


def test_sigkill_then_the_same_command_gives_the_same_bits_with_any_workers(lm_run, tmp_path):
    """Killed while 2 worker processes read the packed rows, resumed with 1: the history and
    parameters of the run read in the trainer's process (0 workers), bit for bit."""
    workdir = tmp_path / "killed"
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *SMALL_LM, *PER_STEP,
               "--config.pipeline.workers=2", f"--workdir={workdir}"]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "10").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    assert not (workdir / "results.json").exists()
    result = train_lm(workdir, *PER_STEP, "--config.pipeline.workers=1")
    assert "Resuming from the checkpoint at step 10" in result.stderr
    assert "read by 1 worker process(es)" in result.stderr
    assert history(workdir) == history(lm_run)
    checksums = "checkpoints/20/checksums/metadata"
    assert (workdir / checksums).read_text() == (lm_run / checksums).read_text()


def test_remat_changes_no_state_a_run_resumes_under_another(lm_run, tmp_path):
    """The checkpoint at step 10 that lm_run wrote under remat=full, resumed under remat=none:
    the same arrays restored, and the same training within float32 rounding (a recomputed
    activation may be summed in another order)."""
    workdir = tmp_path / "run"
    shutil.copytree(lm_run, workdir)
    shutil.rmtree(workdir / "checkpoints" / "20")  # as if killed before step 20's checkpoint
    (workdir / "results.json").unlink()
    result = train_lm(workdir, *PER_STEP, "--config.pipeline.workers=0", "--config.remat=none")
    assert "Resuming from the checkpoint at step 10" in result.stderr
    expected, found = train_rows(lm_run), train_rows(workdir)
    assert [row["step"] for row in found] == [5, 10, 15, 20] and found[:2] == expected[:2]
    for row, same in zip(found[2:], expected[2:]):
        assert row["train/loss"] == pytest.approx(same["train/loss"], rel=1e-4)


def test_eight_devices_with_fsdp_give_the_losses_of_one(lm_run, tmp_path):
    result = train_lm(tmp_path, "--config.mesh.fsdp=4", num_devices=8)
    assert "mesh data=2 x fsdp=4" in result.stderr
    # The transformer's own annotations: attention kernels split over fsdp (and model, size 1),
    # not over their layers.
    assert "(None, 'fsdp', 'model')" in result.stderr
    expected, found = train_rows(lm_run), train_rows(tmp_path)
    assert len(found) == len(expected)
    for a, b in zip(expected, found):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4)


def test_nnx_transformer_trains_and_writes(tmp_path):
    from trainer import api  # pylint: disable=import-outside-toplevel
    run = api.fit("configs/shakespeare_lm.py", tmp_path, model=dict(
        name="nnx_transformer", num_layers=1, embed_dim=32, num_heads=2, dropout_rate=0.1),
        dataset=dict(path=str(SHAKESPEARE)), batch_size=16, num_steps=12,
        optimizer=dict(warmup_steps=2), evals=dict(val=dict(every_steps=0, max_examples=64),
                                                   test=dict(max_examples=64)),
        eval_batch_size=32, samples=dict(prompts=()), plots=False, log_every_steps=4)
    losses = [row["train/loss"] for row in run.history if "train/loss" in row]
    assert losses[-1] < losses[0]
    again = run.generate(["To be", "**HAMLET**  \n"], 20, temperature=1.0, seed=3)
    assert run.generate(["To be", "**HAMLET**  \n"], 20, temperature=1.0, seed=3) == again
    assert all(isinstance(text, str) and text for text in again)


def test_generation_same_seed_same_text(lm_run):
    from trainer import api  # pylint: disable=import-outside-toplevel
    run = api.load(lm_run)
    prompts = ["**ROMEO**  \n", "O"]
    first = run.generate(prompts, 40, temperature=1.0, top_k=20, seed=1)
    assert run.generate(prompts, 40, temperature=1.0, top_k=20, seed=1) == first
    assert run.generate(prompts, 40, temperature=1.0, top_k=20, seed=2) != first
    greedy = run.generate("**ROMEO**  \n", 40, temperature=0)
    assert run.generate("**ROMEO**  \n", 40, temperature=0, seed=9) == greedy
    # Past the window of 64: the text goes on from its last half.
    assert len(run.generate("O", 150, temperature=0).encode()) > 64 or "\n" in greedy
    script = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate.py"), f"--workdir={lm_run}",
         "--prompt=**ROMEO**  \\n", "--prompt=O", "--max_new_tokens=40", "--temperature=1.0",
         "--top_k=20", "--seed=1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert script.returncode == 0, script.stderr[-3000:]
    assert script.stdout.rstrip("\n") == "\n\n".join(p + t for p, t in zip(prompts, first))


def test_a_prompt_longer_than_the_context_is_one_line(lm_run):
    script = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate.py"), f"--workdir={lm_run}",
         "--prompt=" + "x" * 65], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert script.returncode == 2
    assert script.stderr.strip().splitlines() == [
        "error: a prompt is 65 tokens long and the model's context is 64: give a shorter prompt "
        "(at most 64 tokens)."]


def bad_corpus(root):
    (root / "empty").mkdir()
    (root / "latin1").mkdir()
    (root / "latin1" / "ok.txt").write_text("fine text\n")
    (root / "latin1" / "caf\u00e9.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    (root / "not.model").write_bytes(b"not a sentencepiece model")
    return root


@pytest.mark.parametrize("args, message", [
    (["--config.dataset.path={root}/empty"], "holds no .txt, .md, .jsonl file"),
    (["--config.dataset.path={root}/latin1"], "caf\u00e9.txt is not UTF-8 text: byte 3"),
    (["--config.dataset.seq_len=65"], "sequences are 65 tokens long and config.model.max_len=64"),
    (["--config.dataset.tokenizer={root}/not.model"], "not.model"),
], ids=["empty_folder", "not_utf8", "seq_len_above_max_len", "tokenizer_file"])
def test_bad_text_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    root = bad_corpus(tmp_path)
    before = files(root)
    result = run_train(*SMALL_LM, *[a.format(root=root) for a in args],
                       f"--workdir={root / 'run'}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert message.format(root=root) in lines[0]
    assert files(root) == before and not (root / "run").exists()



def test_a_trained_sentencepiece_is_kept_in_the_run_and_never_trained_again(tmp_path):
    """The run keeps the tokenizer it trained; with the data folder's cache deleted, a resume and
    a use of the run read that copy (no SentencePiece model is written to the cache again)."""
    from trainer import api  # pylint: disable=import-outside-toplevel
    corpus = tmp_path / "plays"
    corpus.mkdir()
    for play in ("tragedies/macbeth.md", "romances/the-tempest.md"):
        shutil.copy(SHAKESPEARE / play, corpus)
    fields = dict(model=dict(num_layers=1, embed_dim=32, num_heads=2, vocab_size=400),
                  dataset=dict(path=str(corpus), tokenizer="sentencepiece", vocab_size=400),
                  batch_size=8, optimizer=dict(warmup_steps=1), samples=dict(prompts=()),
                  evals=dict(val=dict(every_steps=0, max_examples=16),
                             test=dict(max_examples=16)),
                  eval_batch_size=16, plots=False, log_every_steps=2)
    api.fit("configs/shakespeare_lm.py", tmp_path / "run", num_steps=2, **fields)
    trained = list((corpus / ".cache").glob("sentencepiece-*.model"))
    assert len(trained) == 1
    kept = tmp_path / "run" / "tokenizer.model"
    assert kept.read_bytes() == trained[0].read_bytes()
    shutil.rmtree(corpus / ".cache")
    resumed = api.fit("configs/shakespeare_lm.py", tmp_path / "run", num_steps=4, **fields)
    assert [row["step"] for row in resumed.history if "train/loss" in row] == [2, 4]
    assert isinstance(api.load(tmp_path / "run").generate("**MACBETH**", 8), str)
    assert not list((corpus / ".cache").glob("sentencepiece-*.model"))
