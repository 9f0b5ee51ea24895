"""The module map of cifarkit, read from the source: layers, what each module holds and imports.

``LAYERS`` is the one statement of the architecture: modules listed bottom to top, and a module
may import only modules of lower layers. ``tests/test_architecture.py`` checks the code against
it, and the Sphinx build (``docs/conf.py``) renders :func:`markdown` into the page
"How cifarkit is built". Run it to print that table::

    python docs/modmap.py
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "cifarkit"

#: (layer name, modules), bottom to top.
LAYERS: list[tuple[str, list[str]]] = [
    ("errors, and the file formats' map", ["errors", "files"]),
    ("leaf helpers", ["device", "display", "losses", "schedules", "files.checksums", "files.writing"]),
    ("records and diagnoses", ["preprocess", "history", "grads", "files.archives", "files.diagnosis"]),
    (
        "reading: files, batches, pictures, programs; the pre-flight doctor; the networks' table",
        ["files.reading", "files.records", "loader", "images", "runtime", "doctor", "models.zoo", "models.overview"],
    ),
    ("datasets, models, what a file holds, processes", ["data", "models", "files.inspection", "distributed"]),
    (
        "saving models, your own pictures, the step's helpers, calibration",
        ["files.saving", "folders", "steps", "evaluation.calibration"],
    ),
    (
        "checkpoints, callbacks, evaluation",
        ["files.checkpoints", "callbacks", "evaluation", "evaluation.interpretation"],
    ),
    ("training, leaving Python, the report", ["train", "exporting", "evaluation.report"]),
    ("fine-tuning: the learning-rate finder, two phases", ["tuning"]),
    ("the commands", ["cli.commands"]),
    ("the command line and the face", ["cli", "__init__"]),
    ("python -m cifarkit", ["__main__"]),
]


@dataclass
class Module:
    """One ``src/cifarkit/*.py`` file as the parser sees it."""

    name: str
    layer: int
    lines: int
    summary: str
    docstring: str
    imports: set[str] = field(default_factory=set)  # cifarkit modules imported at top level
    local_imports: list[str] = field(default_factory=list)  # "target (line N)" inside functions/classes
    type_only: set[str] = field(default_factory=set)  # under ``if TYPE_CHECKING:``

    @property
    def may_import(self) -> set[str] | None:
        """The modules its docstring's ``May import:`` line names (``None`` without such a line)."""
        match = re.search(r"^May import:(.*?)(?:\n\s*\n|\Z)", self.docstring, re.S | re.M)
        if match is None:
            return None
        return {name.rstrip(".") for name in re.findall(r"cifarkit\.([\w.]+)", match.group(1))}


def layer_of() -> dict[str, int]:
    """Module name -> layer index (0 is the bottom)."""
    return {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def module_name(path: Path) -> str:
    """``src/cifarkit/files/reading.py`` -> ``files.reading``; a subpackage's ``__init__`` is its name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if len(parts) > 1 and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _known() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    known = _known()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names if alias.name.split(".")[0] == "cifarkit"]
        return [name.split(".", 1)[1] if "." in name else "__init__" for name in names]
    if node.level or not node.module or node.module.split(".")[0] != "cifarkit":
        return []
    base = node.module.split(".", 1)[1] if "." in node.module else ""
    # ``from cifarkit import errors`` and ``from cifarkit.files import saving`` name submodules
    found = [f"{base}.{a.name}" if base else a.name for a in node.names]
    named = [name for name in found if name in known]
    if len(named) == len(found):
        return named
    return [base or "__init__"]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def parse(path: Path, layer: int) -> Module:
    """Read one module's docstring and its imports of cifarkit modules."""
    source = path.read_text()
    tree = ast.parse(source)
    doc = ast.get_docstring(tree) or ""
    module = Module(module_name(path), layer, source.count("\n"), doc.split("\n\n")[0].replace("\n", " "), doc)

    def visit(node: ast.AST, *, top: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child):
                    if type_only:
                        module.type_only.add(target)
                    elif top:
                        module.imports.add(target)
                    else:
                        module.local_imports.append(f"{target} (line {child.lineno})")
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, top=top, type_only=True)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                visit(child, top=False, type_only=type_only)
            else:
                visit(child, top=top, type_only=type_only)

    visit(tree, top=True, type_only=False)
    return module


def modules() -> list[Module]:
    """Every module of the package, bottom layer first (unlisted modules get layer -1)."""
    layers = layer_of()
    found = [parse(p, layers.get(module_name(p), -1)) for p in sorted(PACKAGE.rglob("*.py"))]
    return sorted(found, key=lambda m: (m.layer, m.name))


def _plain(text: str) -> str:
    """reST inline markup (``code``, :func:`name`) as Markdown code spans."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def markdown() -> str:
    """The module map as a MyST table, one row per module, bottom layer first."""
    rows = [
        "| layer | module | what it holds | imports from cifarkit | lines |",
        "|---|---|---|---|---|",
    ]
    for m in modules():
        layer = LAYERS[m.layer][0] if m.layer >= 0 else "(unlisted)"
        imports = ", ".join(f"`{name}`" for name in sorted(m.imports)) or "—"
        summary = _plain(m.summary).replace("|", "\\|")
        rows.append(f"| {m.layer} {layer} | `cifarkit.{m.name}` | {summary} | {imports} | {m.lines} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
