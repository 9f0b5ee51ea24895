"""Every ```python block of the guide runs, page by page, in a fresh folder."""

from __future__ import annotations

import re
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
    } <= names
    assert sum(len(FENCE.findall(p.read_text())) for p in PAGES) >= 20


@pytest.mark.parametrize("page", [p for p in PAGES if FENCE.search(p.read_text())], ids=lambda p: p.stem)
def test_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(FENCE.findall(page.read_text()), start=1):
        code = compile(block, f"{page.name} block {number}", "exec")
        exec(code, namespace)
