"""How results are shown: plain-text and HTML tables, matplotlib figures without pyplot, and
progress where the run is watched.

- Tables: :func:`format_table` is the one formatter behind every table cifarkit prints (gradient
  reports, model summaries, ``cifarkit inspect``), :func:`html_table` the same as HTML for Jupyter.
- Figures: made on their own ``Figure`` (no global backend or state changed), shown inline in
  Jupyter, or written to a PNG (atomically). matplotlib is imported only when a figure is made.
- Progress: a live bar in a terminal, a widget in Jupyter, and one plain line per epoch that
  stays on screen (and is all a log file gets). tqdm is imported only when a bar is shown.
"""

from __future__ import annotations

import html
import importlib.util
import io
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from cifarkit.errors import InvalidOptionError, MissingExtraError
from cifarkit.writing import PathLike, atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Medium",
    "Progress",
    "ProgressReport",
    "figure_png",
    "format_table",
    "html_table",
    "medium",
    "new_figure",
    "progress_bar",
    "save_or_return",
]


def format_table(
    rows: Sequence[Sequence[str]],
    *,
    headers: Sequence[str] | None = None,
    right: Sequence[int] = (),
) -> str:
    """Align ``rows`` of strings in columns separated by two spaces.

    Args:
        rows: The cells, one sequence per row; every row has the same number of cells.
        headers: Column titles, printed above a rule of dashes; ``None`` prints no header
            (a key/value listing).
        right: Indices of the columns to right-align (numbers); the others are left-aligned.

    Returns:
        The table, lines joined by ``"\\n"``, without trailing spaces.

    Example:
        >>> print(format_table([("conv", "2,432"), ("linear", "650")], headers=("layer", "params"), right=(1,)))
        layer   params
        ------  ------
        conv     2,432
        linear     650
        >>> print(format_table([("file", "m.pt"), ("epoch", "3")]))
        file   m.pt
        epoch  3
    """
    table = ([list(headers)] if headers is not None else []) + [list(r) for r in rows]
    if not table:
        return ""
    width = len(table[0])
    if any(len(r) != width for r in table):
        msg = f"every row needs {width} cells, got rows of {sorted({len(r) for r in table})}"
        raise ValueError(msg)
    widths = [max(len(r[i]) for r in table) for i in range(width)]

    def line(cells: Sequence[str]) -> str:
        parts = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(parts).rstrip()

    lines = [line(r) for r in table]
    if headers is not None:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def html_table(
    rows: Sequence[Sequence[str]],
    *,
    headers: Sequence[str] | None = None,
    right: Sequence[int] = (),
    caption: str | None = None,
) -> str:
    """The same table as :func:`format_table`, as HTML for Jupyter's ``_repr_html_`` (cells escaped).

    Example:
        >>> html = html_table([("a<b", "1")], headers=("name", "n"), right=(1,))
        >>> html.startswith('<table><thead><tr><th style="text-align:left">name</th>')
        True
        >>> '<td style="text-align:right">1</td>' in html and "a&lt;b" in html
        True
    """

    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(
            f'<{tag} style="text-align:{"right" if i in right else "left"}">{html.escape(c)}</{tag}>'
            for i, c in enumerate(row)
        )

    head = f"<thead><tr>{cells('th', headers)}</tr></thead>" if headers is not None else ""
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}{head}<tbody>{body}</tbody></table>"


def new_figure(what: str, **options: Any) -> Figure:
    """A fresh ``matplotlib.figure.Figure`` (``options`` go to its constructor) that Jupyter
    displays as a PNG when it is a cell's result.

    Raises:
        MissingExtraError: matplotlib is not installed (``what`` names the caller in the message).

    Example:
        >>> fig = new_figure("a test", figsize=(2, 1))
        >>> fig._repr_png_()[:4]
        b'\\x89PNG'
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        msg = f"{what} needs matplotlib: pip install 'cifarkit[plot]'"
        raise MissingExtraError(msg) from exc
    fig = Figure(**options)
    # Without pyplot nothing registers a display hook for figures: give this one its own.
    setattr(fig, "_repr_png_", lambda: figure_png(fig))  # noqa: B010
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (for a notebook, or a ``data:`` URI in an HTML page)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def save_or_return(fig: Figure, path: PathLike | None) -> Path | Figure:
    """Write ``fig`` as a PNG at ``path`` (atomically, parents created) and return the path; or,
    without a path, return the figure itself."""
    if path is None:
        return fig
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png"))


T = TypeVar("T")
#: ``True`` is ``"auto"``: a bar where someone watches, and a line per epoch. ``"bar"`` shows the bar
#: even into a file, ``"lines"`` only the epoch lines, ``False`` nothing.
Progress = bool | Literal["auto", "bar", "lines"]
Medium = Literal["terminal", "notebook", "file"]
_MODES = ("auto", "bar", "lines")


def medium() -> Medium:
    """Where output goes: a Jupyter kernel, a terminal, or a file or pipe.

    Example:
        >>> medium() in ("terminal", "notebook", "file")
        True
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        return "notebook"
    return "terminal" if sys.stderr.isatty() else "file"


def progress_bar(items: Iterable[T], *, desc: str, enabled: bool | Literal["bar"] = True) -> Iterable[T]:
    """``items`` wrapped in a bar that disappears when done.

    In Jupyter the bar is tqdm's widget (when ipywidgets is installed, else tqdm's text bar); in a
    terminal a text bar on stderr; into a file or pipe no bar at all (it would fill the file with
    carriage returns) unless ``enabled="bar"``. ``enabled=False`` returns ``items`` itself.

    Example:
        >>> list(progress_bar([1, 2], desc="epoch 1", enabled=False))
        [1, 2]
    """
    where = medium()
    if not enabled or (where == "file" and enabled != "bar"):
        return items
    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    if where == "notebook" and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as widget

        return widget(items, total=total, desc=desc, leave=False)
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, leave=False)


class ProgressReport:
    """What one run shows, decided once from ``progress`` and the rank.

    Args:
        progress: See :data:`Progress`.
        enabled: ``False`` on ranks other than 0: nothing is shown.

    Example:
        >>> report = ProgressReport("lines")
        >>> report.line("epoch 1/3  loss sum 12.00")
        epoch 1/3  loss sum 12.00
        >>> list(report.bar([1, 2], desc="epoch 1"))
        [1, 2]
    """

    def __init__(self, progress: Progress = True, *, enabled: bool = True) -> None:
        if not isinstance(progress, bool) and progress not in _MODES:
            msg = f"progress={progress!r} is not valid; choose True, False, 'auto', 'bar' or 'lines'"
            raise InvalidOptionError(msg)
        self.lines = enabled and progress is not False
        self._bar: bool | Literal["bar"] = enabled and ("bar" if progress == "bar" else progress in (True, "auto"))

    def bar(self, items: Iterable[T], *, desc: str) -> Iterable[T]:
        """``items`` with a bar, when this run shows one."""
        return progress_bar(items, desc=desc, enabled=self._bar)

    def line(self, text: str) -> None:
        """Print one summary line to stdout (it stays after the bar is gone)."""
        if self.lines:
            print(text, flush=True)
