"""Sphinx configuration: MyST guide pages and an API reference from docstrings."""

from __future__ import annotations

import sys
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import modmap  # docs/modmap.py: the module map, read from the source

project = "cifarkit"
author = "cifarkit developers"
copyright = "2026, cifarkit developers"
release = _version("cifarkit")
version = release

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
# Pages written as MyST notebooks ("A real training run") run when the docs are built, so their
# printed output and pictures are this build's, never pasted. An error fails the build.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_in_temp = True  # files the pages write (model.pt, run.pt) go to a temporary folder
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# tqdm's progress widget has no static rendering; the epoch lines printed beside it are the record.
suppress_warnings = ["mystnb.unknown_mime_type"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "furo"
html_title = f"cifarkit {release}"


def _insert_module_map(app: Any, docname: str, source: list[str]) -> None:
    """Replace the marker on the architecture page with the module map generated from the code."""
    if "<!-- module-map -->" in source[0]:
        source[0] = source[0].replace("<!-- module-map -->", modmap.markdown())


def setup(app: Any) -> None:
    app.connect("source-read", _insert_module_map)
