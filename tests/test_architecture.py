"""The layout a newcomer reads: each package's map names its modules, the API reference has one
page per package, the public names come from their owners, and importing stays light.

Which package may import which is one contract in pyproject.toml, checked by import-linter in
``nox -s lint``; these tests check what that tool cannot.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import cifarkit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(m.name for m in pkgutil.iter_modules(cifarkit.__path__, "cifarkit.") if m.ispkg)


def _modules(package: str) -> list[str]:
    module = importlib.import_module(package)
    return sorted(m.name for m in pkgutil.iter_modules(module.__path__, package + "."))


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_map_names_every_module_it_holds(package: str) -> None:
    doc = importlib.import_module(package).__doc__ or ""
    for name in _modules(package):
        assert f"{name.split('.')[-1]}`" in doc, f"{package}'s docstring (its map) does not name {name}"


def test_the_api_reference_has_one_page_per_package_documenting_each_module() -> None:
    pages = ROOT / "docs" / "api"
    for package in PACKAGES:
        page = (pages / f"{package.split('.')[-1]}.md").read_text()
        for name in [package, *_modules(package)]:
            assert f".. automodule:: {name}\n" in page, f"{name} is missing from docs/api/"
    foundation = (pages / "foundation.md").read_text()
    tops = [m.name for m in pkgutil.iter_modules(cifarkit.__path__, "cifarkit.") if not m.ispkg]
    for name in tops:
        if name != "cifarkit.__main__":
            assert f".. automodule:: {name}\n" in foundation, f"{name} is missing from docs/api/foundation.md"


def test_the_contract_covers_every_package_and_top_module() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    top = next(c for c in config["contracts"] if c["containers"] == ["cifarkit"])
    listed = {name.strip() for layer in top["layers"] for name in layer.split("|")}
    present = {m.name for m in pkgutil.iter_modules(cifarkit.__path__)} - {"__main__"}
    assert listed == present and top["exhaustive"] is True


@pytest.mark.parametrize("name", sorted(set(cifarkit.__all__) - {"__version__", "errors"}))
def test_each_public_name_is_on_the_page_of_the_package_that_owns_it(name: str) -> None:
    obj = getattr(cifarkit, name)
    owner = obj.__module__  # cifarkit.<package>.<module>, or a foundation module cifarkit.<module>
    home = ".".join(owner.split(".")[:2])
    assert getattr(importlib.import_module(home), name) is obj, f"cifarkit.{name} is not in {home}'s names"


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
