"""History and EpochStats: round trips, columns, the run folder, and curves drawn without pyplot."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from cifarkit import EpochStats, History
from cifarkit.errors import HistoryFormatError, HistoryNotFoundError, InvalidOptionError


def two_epochs() -> History:
    return History([EpochStats(1, 10.0, 1.5, 0.3, 10, 1.0, 10.0, eval_loss=1.6, eval_accuracy=0.25),
                    EpochStats(2, 8.0, 1.2, 0.5, 10, 1.0, 10.0, eval_loss=1.3, eval_accuracy=0.45)])  # fmt: skip


def test_history_plot_writes_a_png(tmp_path: Path) -> None:
    out = two_epochs().plot(tmp_path / "sub" / "curves.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1000, 400)


def test_plot_leaves_matplotlibs_backend_and_pyplot_alone(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, matplotlib
        matplotlib.use("pdf")  # the caller's choice
        from cifarkit import History
        History.from_json({str(tmp_path / "h.json")!r}).plot({str(tmp_path / "c.png")!r})
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
        """
    )
    (tmp_path / "h.json").write_text(json.dumps(two_epochs().to_dict()))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["pdf", "False"]


def test_json_round_trip_columns_and_the_run_folder(tmp_path: Path) -> None:
    history = two_epochs()
    (tmp_path / "history.json").write_text(json.dumps(history.to_dict()))
    assert History.from_json(tmp_path) == history == History.from_json(tmp_path / "history.json")
    assert history.column("eval_accuracy") == [0.25, 0.45] and len(history) == 2
    newer = history.to_dict()
    newer["epochs"][0]["a_figure_from_a_later_version"] = 1.0
    assert History.from_dict(newer) == history
    with pytest.raises(InvalidOptionError, match=r"eval_acc.*choose one of"):
        history.column("eval_acc")


def test_missing_history_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(HistoryNotFoundError, match=r"no history at .*history\.json") as info:
        History.from_json(tmp_path)
    assert isinstance(info.value, FileNotFoundError)


def test_tables_for_terminals_and_notebooks() -> None:
    history = two_epochs()
    text = repr(history).splitlines()
    assert text[0] == "History: 2 epochs"
    assert text[1].split() == ["epoch", "loss", "sum", "mean", "loss", "train", "acc", "eval", "loss", "eval", "acc",
                               "img/s", "seconds"]  # fmt: skip
    assert text[3].split() == ["1", "10.00", "1.5000", "30.0%", "1.6000", "25.0%", "10", "1.0"]
    assert str(history) == repr(history) and len(text) == 5
    html = history._repr_html_()
    assert html.count("<tr>") == 3 and "<caption>History: 2 epochs</caption>" in html and "45.0%" in html
    single = EpochStats(1, 10.0, 1.5, 0.3, 10, 1.0, 10.0)
    assert repr(single).splitlines()[2].split()[4:6] == ["—", "—"]  # no eval figures
    assert single._repr_html_().count("<tr>") == 2
    assert single.summary(3) == "epoch 1/3  loss sum 10.00  mean loss 1.5000  train acc 30.0%  10 img/s"


def test_plot_without_a_path_returns_a_figure_that_shows_itself() -> None:
    figure = two_epochs().plot()
    png = figure._repr_png_()  # type: ignore[union-attr]
    assert png.startswith(b"\x89PNG")
    ticks = figure.axes[0].get_xticks()
    assert all(float(t).is_integer() for t in ticks)  # whole-number epoch ticks


def test_an_epochs_phase_round_trips_and_shows_in_the_table() -> None:
    history = two_epochs()
    history.epochs[0].phase, history.epochs[1].phase = "frozen", "unfrozen"
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))) == history
    assert "1 (frozen)" in repr(history) and "2 (unfrozen)" in history._repr_html_()
    bad = history.to_dict()
    bad["epochs"][0]["phase"] = 3
    with pytest.raises(HistoryFormatError, match="phase"):
        History.from_dict(bad)
