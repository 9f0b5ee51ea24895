"""Every ```python block of the guide runs, page by page, in a fresh folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
# ```python blocks, and the ```{code-cell} blocks of pages the docs build executes (myst-nb).
FENCE = re.compile(r"^```(?:python|\{code-cell\} ipython3)\n(.*?)^```", re.S | re.M)


def test_the_guide_has_pages_with_examples() -> None:
    names = {p.stem for p in PAGES}
    assert {
        "losses",
        "data",
        "training",
        "persistence",
        "performance",
        "distributed",
        "monitoring",
        "architecture",
        "real-run",
        "own-pictures",
        "anywhere",
        "fine-tune",
        "trust",
    } <= names
    assert sum(len(FENCE.findall(p.read_text())) for p in PAGES) >= 20


@pytest.mark.parametrize("page", [p for p in PAGES if FENCE.search(p.read_text())], ids=lambda p: p.stem)
def test_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in os.environ.items():  # a page may set variables (TORCH_HOME): undone after it
        monkeypatch.setenv(name, value)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(FENCE.findall(page.read_text()), start=1):
        code = compile(block, f"{page.name} block {number}", "exec")
        exec(code, namespace)


def test_the_onnx_client_runs_where_torch_cannot_be_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's ten-line client: numpy, Pillow and onnxruntime only, checked against predict."""
    import cifarkit

    blocks = FENCE.findall((DOCS / "guide" / "anywhere.md").read_text())
    client = next(i for i, b in enumerate(blocks) if "import onnxruntime" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_anywhere"}
    for number, block in enumerate(blocks[:client], start=1):  # export the model, write the picture
        exec(compile(block, f"anywhere.md block {number}", "exec"), namespace)
    no_torch = "import sys\nfor name in ('torch', 'torchvision', 'cifarkit'):\n    sys.modules[name] = None\n"
    script = tmp_path / "client.py"
    script.write_text(no_torch + blocks[client])
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    label, probability = result.stdout.split()
    answer = cifarkit.predict(namespace["model"], tmp_path / "picture.jpg")[0]  # type: ignore[arg-type]
    assert label == answer.label and abs(float(probability) - answer.probability) < 1e-4
    check = subprocess.run([sys.executable, "-c", no_torch + "import torch"], capture_output=True, text=True)
    assert check.returncode != 0 and "ModuleNotFoundError" in check.stderr  # the client really had no torch
