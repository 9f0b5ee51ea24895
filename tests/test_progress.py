"""Progress bars appear only on a terminal."""

from __future__ import annotations

import sys

import pytest
from tqdm import tqdm

from cifarkit.progress import progress_bar


def test_disabled_or_not_a_terminal_gives_the_items_back(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [1, 2, 3]
    assert progress_bar(items, desc="x", enabled=False) is items
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert progress_bar(items, desc="x", enabled=True) is items


def test_a_terminal_gets_a_bar_that_yields_the_same_items(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = progress_bar([1, 2, 3], desc="epoch 1", enabled=True)
    assert isinstance(bar, tqdm) and bar.total == 3
    assert list(bar) == [1, 2, 3]
