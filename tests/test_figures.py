"""Figures made without pyplot: shown inline, saved as PNG, and a clear error without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from cifarkit.errors import MissingExtraError
from cifarkit.figures import new_figure, save_or_return


def test_a_figure_shows_itself_and_saves(tmp_path: Path) -> None:
    fig = new_figure("a test", figsize=(3, 2), dpi=50)
    fig.subplots().plot([1, 2], [3, 4])
    assert fig._repr_png_().startswith(b"\x89PNG")  # type: ignore[attr-defined]
    assert save_or_return(fig, None) is fig
    out = save_or_return(fig, tmp_path / "sub" / "f.png")
    with Image.open(out) as image:  # type: ignore[arg-type]
        assert image.size == (150, 100)


def test_without_matplotlib_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"History\.plot needs matplotlib: pip install 'cifarkit\[plot\]'"):
        new_figure("History.plot")
