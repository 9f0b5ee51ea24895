"""The file formats' map: the package page lists every module of cifarkit.files, and loads none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cifarkit.files

PACKAGE = Path(cifarkit.files.__file__).resolve().parent


def test_the_map_names_every_module_of_the_package() -> None:
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert modules == sorted(
        ["archives", "checkpoints", "checksums", "diagnosis", "inspection", "reading", "records", "saving", "writing"]
    )
    for name in modules:
        assert f":mod:`cifarkit.files.{name}`" in (cifarkit.files.__doc__ or ""), name


def test_importing_one_file_module_loads_only_what_it_needs() -> None:
    code = "import sys, cifarkit.files.writing as w; print(sorted(m for m in sys.modules if m.startswith('cifarkit.files')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # the face (cifarkit/__init__) imports everything; the package page itself adds nothing
    assert "cifarkit.files.writing" in out
