"""Plain-text tables: the one formatter behind every table cifarkit prints.

Gradient reports, model summaries and ``cifarkit inspect`` all print through
:func:`format_table`, so their columns line up the same way.

May import: nothing from cifarkit.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


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
