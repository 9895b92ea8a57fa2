"""docs/quickstart.ipynb run headless by a real Jupyter kernel (nbclient), as a reader runs it,
with fewer MNIST steps: every cell runs, a figure is shown inline, the accuracies are printed, the
validation loss is drawn beside the training loss."""
import json
import re
import sys

import pytest

from conftest import MNIST_DIR, REPO

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' installs the notebook "
                                                  "extra")
nbclient = pytest.importorskip("nbclient")


def test_the_quickstart_notebook_runs_and_shows_its_results(tmp_path, monkeypatch):
    # A kernel of this environment's Python, wherever `python` on the PATH points.
    spec = tmp_path / "jupyter" / "kernels" / "flaxfit"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "flaxfit", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    notebook = nbformat.read(REPO / "docs" / "quickstart.ipynb", as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = (f"REPO = {str(REPO)!r}\nimport pathlib\nREPO = pathlib.Path(REPO)\n"
                         f"RUNS = pathlib.Path({str(tmp_path / 'runs')!r})\n"
                         f"MNIST = {str(MNIST_DIR)!r}\n"
                         f"SHAKESPEARE = {str(REPO.parent / 'shared' / 'data' / 'shakespeare')!r}\n"
                         # Rows and validations often enough for curves of a few points.
                         f"QUICK = dict(num_steps=150, log_every_steps=25, eval_every_steps=50)\n"
                         "LM_QUICK = dict(num_steps=60, optimizer=dict(warmup_steps=10), "
                         "evals=dict(val=dict(every_steps=30, max_examples=256), "
                         "test=dict(max_examples=256)), samples=dict(max_new_tokens=40))")
    # After the notebook, a cell of the test's own: what the validation curve's cell drew.
    notebook.cells.append(nbformat.v4.new_code_cell(
        'print("drawn:", {line.get_label(): len(line.get_xdata()) for line in axis.get_lines()})'))
    nbclient.NotebookClient(notebook, kernel_name="flaxfit", timeout=600,
                            resources={"metadata": {"path": str(REPO / "docs")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figures, inline
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    for model in ("MNIST CNN", "MNIST MLP", "NNX MLP"):
        accuracy = float(re.search(rf"{model}: ([\d.]+)% test accuracy at step 150", text)[1])
        assert accuracy > 80, (model, accuracy)
    assert "array([[" in text  # XOR's four outputs
    loss = float(re.search(r"Tiny LM: validation loss ([\d.]+) a byte at step 60", text)[1])
    assert loss < 3.5  # from ln 257 = 5.55 at the start
    (generated,) = [cell for cell in notebook.cells if "lm.generate(" in cell.source]
    assert len(generated.outputs[-1]["text"].splitlines()[-1]) > 0  # text written back
    (curve,) = [cell for cell in notebook.cells if '"val/loss"' in cell.source]
    assert any("image/png" in o.get("data", {}) for o in curve.outputs)  # shown inline
    # Train rows every 25 steps; validation every 50 steps and at the end.
    assert re.search(r"drawn: (\{.*\})", text)[1] == "{'train/loss': 6, 'val/loss': 3}"
