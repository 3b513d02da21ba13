"""Run tests/notebooks/check.ipynb headless in a Jupyter kernel and check its outputs.

What only a notebook shows: functions and a @stateful class defined in cells (they live
in the kernel's __main__) mapped on ProcessEngine, progress bars, an ``await
engine.amap(...)`` and a blocking ``pipeline.map`` on AsyncEngine from inside Jupyter's
running event loop, and ``visualize()`` displayed inline.  The notebook is written by
tests/notebooks/make_check.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook check needs nbformat "
                               "(pip install nbformat nbclient ipykernel: the test extra)")
nbclient = pytest.importorskip("nbclient", reason="the notebook check needs nbclient "
                               "(pip install nbformat nbclient ipykernel: the test extra)")
pytest.importorskip("ipykernel", reason="the notebook check needs ipykernel "
                    "(pip install nbformat nbclient ipykernel: the test extra)")

NOTEBOOK = Path(__file__).parent / "notebooks" / "check.ipynb"
KERNEL = "gilfree-test-python"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec for exactly this interpreter, first on JUPYTER_PATH.

    "python3" would be looked up in the user's and the system's Jupyter folders too,
    where a spec may point at another Python without gilfree; this one cannot.
    """
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gilfree tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def _lines(cell) -> dict[str, str]:
    """``name: value`` lines that a cell printed."""
    out = {}
    for o in cell.outputs:
        if o.output_type == "stream" and o.name == "stdout":
            for line in o.text.splitlines():
                key, sep, value = line.partition(": ")
                if sep:
                    out[key] = value
    return out


@pytest.mark.timeout(120)
def test_notebook_runs_headless(kernel_name, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=60,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    setup, _, process_map, amap, sync_map, viz = nb.cells

    assert _lines(setup)["prefix"] == sys.prefix  # the test environment's own Python
    assert _lines(process_map) == {"counts": "[2, 3, 1, 4]", "in workers": "True"}
    # Progress bars: tqdm's text bars on stderr, or notebook widgets when ipywidgets
    # is installed.
    stderr = "".join(o.text for o in process_map.outputs
                     if o.output_type == "stream" and o.name == "stderr")
    widgets = [o for o in process_map.outputs
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets or ("words" in stderr and "4/4" in stderr), process_map.outputs
    assert _lines(amap) == {"amap": "[2, 4, 6]", "loop running": "True"}
    assert _lines(sync_map) == {"map": "[8, 10]"}

    (shown,) = [o for o in viz.outputs if o.output_type == "execute_result"]
    html = shown.data["text/html"]
    assert "<svg" in html and ">tokenize<" in html and ">count<" in html
    assert "image/svg+xml" in shown.data  # for front ends that prefer the SVG itself
