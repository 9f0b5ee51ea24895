"""The layout stays as the guide describes it: layers, one-way imports, small modules, tests."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_modmap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("modmap", ROOT / "docs" / "modmap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["modmap"] = module
    spec.loader.exec_module(module)
    return module


modmap = _load_modmap()
MODULES = modmap.modules()
NAMES = [m.name for m in MODULES]


def test_every_module_has_a_layer_and_every_layer_entry_exists() -> None:
    listed = set(modmap.layer_of())
    assert set(NAMES) == listed, {"unlisted": set(NAMES) - listed, "missing": listed - set(NAMES)}


@pytest.mark.parametrize("module", MODULES, ids=NAMES)
def test_imports_go_down_only_and_none_hide_in_functions(module: Any) -> None:
    layers = modmap.layer_of()
    upward = sorted(t for t in module.imports if layers.get(t, 99) >= module.layer)
    assert not upward, f"cifarkit.{module.name} imports {upward}, which are not below it"
    assert not module.local_imports, f"function-local imports of cifarkit modules: {module.local_imports}"
    assert not module.type_only - module.imports or all(layers[t] < module.layer for t in module.type_only)


def test_the_import_graph_has_no_cycle() -> None:
    graph = {m.name: m.imports | {t.split(" ")[0] for t in m.local_imports} for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, name, target]))
            if target not in state:
                visit(target, [*path, name])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_the_checker_catches_a_cycle_and_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "errors.py").write_text('"""E.\n\nMay import: nothing from cifarkit.\n"""\nimport cifarkit.train\n')
    (tmp_path / "train.py").write_text('"""T."""\ndef f():\n    from cifarkit import errors\n')
    monkeypatch.setattr(modmap, "PACKAGE", tmp_path)
    parsed = {m.name: m for m in modmap.modules()}
    assert parsed["errors"].imports == {"train"}  # upward: layer 0 importing layer 12
    assert parsed["train"].local_imports == ["errors (line 3)"]  # hidden in a function


@pytest.mark.parametrize("module", MODULES, ids=NAMES)
def test_docstring_says_what_lives_there_and_what_it_may_import(module: Any) -> None:
    layers = modmap.layer_of()
    may = module.may_import
    assert module.summary, f"cifarkit.{module.name} has no module docstring"
    assert may is not None, f"cifarkit.{module.name}'s docstring lacks a 'May import:' line"
    assert module.imports <= may, f"imports {module.imports - may} that its docstring does not allow"
    above = sorted(t for t in may if layers.get(t, 99) >= module.layer)
    assert not above, f"its docstring allows {above}, which are not below it"


@pytest.mark.parametrize("module", MODULES, ids=NAMES)
def test_modules_stay_small(module: Any) -> None:
    assert module.lines <= 450, f"cifarkit.{module.name} has {module.lines} lines; split it by concern"


@pytest.mark.parametrize("name", [n for n in NAMES if n not in {"__init__", "__main__"}])
def test_each_module_has_its_test_file(name: str) -> None:
    assert (ROOT / "tests" / f"test_{name.split('.')[-1]}.py").is_file()


def test_the_package_top_stays_small_and_the_file_formats_live_together() -> None:
    top = sorted(p.name for p in (ROOT / "src" / "cifarkit").glob("*.py"))
    assert len(top) <= 24, f"{len(top)} modules directly in src/cifarkit: {top}"
    formats = {"writing", "checksums", "archives", "records", "reading", "inspection", "saving", "checkpoints"}
    assert {n.split(".")[-1] for n in NAMES if n.startswith("files.")} >= formats


def test_module_map_lists_every_module() -> None:
    table = modmap.markdown()
    for name in NAMES:
        assert f"`cifarkit.{name}`" in table
    assert "(unlisted)" not in table


def test_api_reference_documents_every_module() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    for name in NAMES:
        if name not in {"__init__", "__main__"}:
            assert f".. automodule:: cifarkit.{name}\n" in api, name


_IMPORT_SCRIPT = """
import json, sys
import torch
before = set(sys.modules)
if sys.argv[1] == "import":
    import cifarkit
else:
    from cifarkit.cli import main
    try:
        main([sys.argv[1]])
    except SystemExit:
        pass
print(json.dumps(sorted({name.split(".")[0] for name in set(sys.modules) - before})))
"""
#: Heavy packages that `import cifarkit` must not pull in: they load where they are used.
_HEAVY = {"torchvision", "PIL", "tqdm", "matplotlib", "tensorboard", "safetensors", "IPython", "ipywidgets", "scipy"}


@pytest.mark.parametrize("how", ["import", "--version", "--help"])
def test_import_and_the_commands_help_pull_in_no_heavy_package(how: str) -> None:
    out = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT, how], capture_output=True, text=True, check=True)
    added = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "cifarkit" in added
    assert not added & _HEAVY, f"`{how}` imports {sorted(added & _HEAVY)} beyond torch"
