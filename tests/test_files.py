"""The file formats' package: its map lists every module. (Which packages it may import is the
import-linter contract of pyproject.toml.)"""

from __future__ import annotations

from pathlib import Path

import cifarkit.files

PACKAGE = Path(cifarkit.files.__file__).resolve().parent


def test_the_map_names_every_module_of_the_package() -> None:
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert modules == ["checkpoints", "format", "modelfiles"]
    for name in modules:
        assert f":mod:`cifarkit.files.{name}`" in (cifarkit.files.__doc__ or ""), name
