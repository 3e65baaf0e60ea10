"""The analyst notebook runs top to bottom on a fresh lake and draws its plots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import lakever as lv

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "tour.ipynb"


@pytest.mark.slow
def test_notebook_runs(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir(exist_ok=True)  # the kernel keeps its state under $HOME
    # laid out as a clone is: the quickstart's lake at the root, the notebook one level down
    (tmp_path / "notebooks").mkdir()
    root = tmp_path / "lakever-data"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path / "notebooks")}},
    ).execute()
    assert "traffic-demo" in lv.connect(root).list_datasets()["name"].to_list()
    assert not (tmp_path / "notebooks" / "lakever-data").exists()
    assert "lakever.cli" not in NOTEBOOK.read_text()  # public API only
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # labels per class per snapshot; changes per class
