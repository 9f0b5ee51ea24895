"""Progress where the run is watched: a live bar in a terminal, a widget in Jupyter, and one plain
line per epoch that stays on screen (and is all a log file gets).

tqdm is imported only when a bar is shown.

May import: cifarkit.errors.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from typing import Literal, TypeVar

from cifarkit.errors import InvalidOptionError

__all__ = ["Medium", "Progress", "ProgressReport", "medium", "progress_bar"]

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
