"""Progress where it is watched: bars on terminals and in notebooks, lines everywhere, nothing when off."""

from __future__ import annotations

import sys

import pytest
from tqdm import tqdm

from cifarkit.errors import InvalidOptionError
from cifarkit.progress import ProgressReport, medium, progress_bar


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
