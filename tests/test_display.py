"""Showing results: tables (text and HTML), figures without pyplot, progress that fits its medium."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image
from tqdm import tqdm

from cifarkit.display import ProgressReport, format_table, medium, new_figure, progress_bar, save_or_return
from cifarkit.errors import InvalidOptionError, MissingExtraError


def test_columns_align_left_and_right() -> None:
    text = format_table([("a", "1"), ("long name", "1,000")], headers=("name", "n"), right=(1,))
    assert text.splitlines() == ["name           n", "---------  -----", "a              1", "long name  1,000"]


def test_key_value_listing_has_no_header_and_no_trailing_spaces() -> None:
    text = format_table([("file", "m.pt"), ("build record", "")])
    assert text.splitlines() == ["file          m.pt", "build record"]
    assert format_table([]) == ""


def test_ragged_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        format_table([("a", "b"), ("c",)])


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


def test_medium_follows_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert medium() == "terminal"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert medium() == "file"

    class ZMQInteractiveShell:  # what ipykernel's shell is called
        pass

    class FakeIPython:
        @staticmethod
        def get_ipython() -> ZMQInteractiveShell:
            return ZMQInteractiveShell()

    monkeypatch.setitem(sys.modules, "IPython", FakeIPython)
    assert medium() == "notebook"


def test_a_file_gets_lines_and_no_carriage_returns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    report = ProgressReport(True)
    assert list(report.bar([1, 2], desc="epoch 1")) == [1, 2]
    report.line("epoch 1/2  loss sum 3.00")
    out, err = capsys.readouterr()
    assert out == "epoch 1/2  loss sum 3.00\n" and err == ""
    forced = ProgressReport("bar").bar([1, 2], desc="epoch 1")
    assert isinstance(forced, tqdm)  # "bar" asks for the bar even into a file
    list(forced)


def test_false_and_other_ranks_show_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    for report in (ProgressReport(False), ProgressReport(True, enabled=False)):
        items = [1]
        assert report.bar(items, desc="x") is items
        report.line("hidden")
    assert capsys.readouterr() == ("", "")
    with pytest.raises(InvalidOptionError, match="progress='loud' is not valid"):
        ProgressReport("loud")  # type: ignore[arg-type]
