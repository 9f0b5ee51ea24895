"""The picture of cifarkit's owners, drawn from the import contract in ``pyproject.toml``.

The contract (import-linter's ``layers``, checked by ``nox -s lint``) is the one statement of how
the packages import one another. This module draws it, so the guide's "How cifarkit is built"
cannot drift from it: one row per layer, top to bottom, each owner a box captioned with the first
line of its docstring, and every import goes down. ``docs/conf.py`` puts :func:`markdown` into
that page at build time; ``python docs/modmap.py`` prints it.
"""

from __future__ import annotations

import ast
import html
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "cifarkit"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the docs build on 3.11+
    import tomli as tomllib


def layers() -> list[list[str]]:
    """The top-level layers of the contract, top first: the owners in each (``|`` separates
    owners that may not import each other)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    top = next(c for c in config["contracts"] if c.get("containers") == ["cifarkit"])
    return [[name.strip() for name in layer.split("|")] for layer in top["layers"]]


def summary(owner: str) -> str:
    """The first sentence of an owner's docstring (a package's ``__init__`` or a module)."""
    path = PACKAGE / owner / "__init__.py" if (PACKAGE / owner).is_dir() else PACKAGE / f"{owner}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    sentence = first.split(". ")[0].rstrip(".").replace("|", "\\|")
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", sentence).replace("``", "`")  # reST roles to Markdown


def svg(rows: list[list[str]] | None = None) -> str:
    """The layers as boxes, top to bottom, with the direction of every import."""
    rows = rows or layers()
    width, box_h, gap, margin = 900, 34, 22, 60
    height = len(rows) * (box_h + gap) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        'role="img" aria-label="cifarkit owners: each row imports only the rows below it" '
        'font-family="system-ui, sans-serif" font-size="13">',
        '<defs><marker id="down" viewBox="0 0 10 10" refX="5" refY="9" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,0 L5,10 z" fill="#666"/></marker></defs>',
        f'<line x1="24" y1="14" x2="24" y2="{height - 14}" stroke="#666" stroke-width="2" marker-end="url(#down)"/>',
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle" '
        'fill="#444">imports go down</text>',
    ]
    for i, row in enumerate(rows):
        y = 10 + i * (box_h + gap)
        span = (width - margin - 10) / len(row)
        for j, owner in enumerate(row):
            x = margin + j * span
            package = (PACKAGE / owner).is_dir()
            fill = "#dbe9f6" if package else "#eeeeee"
            parts.append(
                f'<rect x="{x:.0f}" y="{y}" width="{span - 8:.0f}" height="{box_h}" rx="5" fill="{fill}" '
                'stroke="#5a7fa8"/>'
            )
            label = f"cifarkit.{owner}" if package else owner
            parts.append(
                f'<text x="{x + (span - 8) / 2:.0f}" y="{y + box_h / 2 + 4:.0f}" text-anchor="middle">'
                f"{html.escape(label)}</text>"
            )
    parts.append("</svg>")
    return "\n".join(parts)


def markdown() -> str:
    """The picture and, below it, one row per owner: its layer and what it holds."""
    rows = layers()
    table = ["| layer (top first) | owner | what it holds |", "|---|---|---|"]
    for i, row in enumerate(rows):
        for owner in row:
            kind = "package" if (PACKAGE / owner).is_dir() else "module"
            table.append(f"| {i + 1} | `cifarkit.{owner}` ({kind}) | {summary(owner)} |")
    return svg(rows) + "\n\n" + "\n".join(table) + "\n"


if __name__ == "__main__":
    print(markdown())
