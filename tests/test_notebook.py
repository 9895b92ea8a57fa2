"""docs/quickstart.ipynb run headless by a real Jupyter kernel (nbclient), as a reader runs it,
with fewer MNIST steps: every cell runs, a figure is shown inline, the accuracies are printed."""
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
                         f"MNIST = {str(MNIST_DIR)!r}\nQUICK = dict(num_steps=150)")
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
