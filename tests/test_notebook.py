"""The quickstart notebook, executed by a real Jupyter kernel: progress and HTML tables appear."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "quickstart.ipynb"


def outputs(cell: Any, kind: str) -> list[str]:
    """Every output of ``kind`` (a MIME type, or ``stdout``/``stderr`` for streams) as text."""
    found = []
    for out in cell.outputs:
        if out.output_type == "stream" and out.name == kind:
            found.append(out.text)
        elif kind in out.get("data", {}):
            value = out["data"][kind]
            found.append(value if isinstance(value, str) else str(value))
    return found


@pytest.mark.slow
def test_quickstart_runs_in_a_kernel_with_widgets_and_html_tables(tmp_path: Path) -> None:
    shutil.copy(NOTEBOOK, tmp_path / "quickstart.ipynb")
    nb = nbformat.read(tmp_path / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    code = {c.source.split("\n")[0]: c for c in nb.cells if c.cell_type == "code"}
    train = next(c for first, c in code.items() if first.startswith("model = cifarkit.build_cnn"))
    # the live bar is tqdm's widget, and one summary line per epoch stays in the output
    assert outputs(train, "application/vnd.jupyter.widget-view+json"), [o.output_type for o in train.outputs]
    lines = "".join(outputs(train, "stdout")).splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"epoch {e}/5" for e in range(1, 6)]
    assert all("\r" not in line and "eval acc" in line for line in lines)
    history_html = "".join(outputs(code["history"], "text/html"))
    assert "<table>" in history_html and "History: 5 epochs" in history_html and "eval acc" in history_html
    assert outputs(code["history.plot()"], "image/png")  # the curves display inline
    evaluate = next(c for first, c in code.items() if first.startswith("cifarkit.evaluate"))
    assert "<th" in "".join(outputs(evaluate, "text/html")) and "accuracy" in "".join(outputs(evaluate, "text/html"))
    summary = next(c for first, c in code.items() if first.startswith("cifarkit.save"))
    assert "145,578" in "".join(outputs(summary, "text/html"))
    assert (tmp_path / "quickstart.pt").is_file()
