"""Every notebook in notebooks/ runs top to bottom (FAST mode, offline) on the venv's kernel,
and is committed with its outputs (figures as interactive plotly data plus a PNG image)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A ``python3`` kernel spec that runs *this* interpreter, found first via JUPYTER_PATH.

    jupyter_client takes the first ``python3`` spec on its path; pointing JUPYTER_PATH at a spec
    with ``sys.executable`` makes the kernel the test runner's (venv) Python, whatever else is
    installed, without registering anything in the user's Jupyter directories.
    """
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "refusal-lens (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("REFUSAL_LENS_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return "python3"


def test_kernel_is_this_interpreter(venv_kernel):
    pytest.importorskip("jupyter_client")
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(venv_kernel).argv[0] == sys.executable


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, venv_kernel):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=venv_kernel, timeout=1800, allow_errors=False,
                            coalesce_streams=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError (with the failing cell) on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    _check_streams(nb)


def _check_streams(nb) -> None:
    """Progress bars do not flood the output: no widget fallback warning, and at most one
    stdout and one stderr output per cell (each redraw resolved, as Jupyter shows it)."""
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        streams = [o for o in cell.outputs if o.output_type == "stream"]
        assert len(streams) == len({o.name for o in streams}) <= 2, cell.source[:80]
        for o in streams:
            assert "IProgress" not in o.text and "TqdmWarning" not in o.text, o.text[:300]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_with_outputs(path):
    """What a reader browsing the repository sees: every code cell ran, in order, without
    errors, and every figure is there both as interactive plotly data and as a PNG image."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        "not executed top to bottom: run `python notebooks/execute.py`"
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    bundles = [o.data for c in code for o in c.outputs if "data" in o]
    figures = [b for b in bundles if "application/vnd.plotly.v1+json" in b]
    assert figures, "no figure in the saved outputs"
    for b in figures:
        assert b["image/png"].strip(), "a figure without its static image"
    _check_streams(nb)
    assert nb.metadata["refusal_lens"]["fast"] is True  # the saved outputs are fast mode


def test_failing_cell_fails(venv_kernel, tmp_path):
    """The executor really reports a failing cell (guards against a silently passing test)."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)"),
                                         nbformat.v4.new_code_cell("raise RuntimeError('boom')")])
    with pytest.raises(CellExecutionError, match="boom"):
        NotebookClient(nb, kernel_name=venv_kernel, timeout=120).execute()
    assert nb.cells[0].outputs[0]["text"].strip() == sys.executable
