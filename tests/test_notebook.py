"""notebooks/quickstart.ipynb runs top to bottom (tiny settings) and is committed without outputs."""


import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO, keras_reference_file

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLITE_KERAS_WEIGHTS", str(keras_reference_file("smolite_tiny.weights.h5")))
    monkeypatch.setenv("SMOLITE_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("SMOLITE_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("SMOLITE_NOTEBOOK_STEPS", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "SmoliteForCausalLM 64 2 layers" in outputs  # the conversion cell ran on the fixture
    assert "<start> 오늘 날씨 어때? <sep>" in outputs
    assert "eval_masked_accuracy" in outputs and "same logits: True" in outputs
    assert not any(output.get("output_type") == "error" for cell in notebook.cells for output in cell.get("outputs", []))
