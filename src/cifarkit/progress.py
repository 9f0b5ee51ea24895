"""Progress bars for long loops, shown only where someone is watching.

May import: nothing from cifarkit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

__all__ = ["progress_bar"]

T = TypeVar("T")


def progress_bar(items: Iterable[T], *, desc: str, enabled: bool) -> Iterable[T]:
    """``items`` wrapped in a tqdm bar that disappears when done; ``items`` itself when disabled
    or when stderr is not a terminal (a log file would fill with carriage returns).

    Example:
        >>> list(progress_bar([1, 2], desc="epoch 1", enabled=False))
        [1, 2]
    """
    if not (enabled and sys.stderr.isatty()):
        return items
    from tqdm.auto import tqdm  # imported only when a bar is shown

    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    return tqdm(items, total=total, desc=desc, leave=False)
