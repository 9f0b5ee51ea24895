"""Plain-text tables: the one formatter behind every table cifarkit prints.

Gradient reports, model summaries and ``cifarkit inspect`` all print through
:func:`format_table`, so their columns line up the same way.

May import: nothing from cifarkit.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["format_table", "html_table"]


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
