"""Matplotlib figures without pyplot: made on their own ``Figure`` (no global backend or state
changed), shown inline in Jupyter, or written to a PNG.

matplotlib is imported only here, and only when a figure is made.

May import: cifarkit.errors.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarkit.errors import MissingExtraError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "save_or_return"]


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
    setattr(fig, "_repr_png_", lambda: _png(fig))  # noqa: B010
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def save_or_return(fig: Figure, path: str | os.PathLike[str] | None) -> Path | Figure:
    """Write ``fig`` as a PNG at ``path`` (parents created) and return the path; or, without a
    path, return the figure itself."""
    if path is None:
        return fig
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
