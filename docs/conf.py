"""Sphinx configuration: MyST guide pages and an API reference from docstrings."""

from __future__ import annotations

from importlib.metadata import version as _version

project = "cifarkit"
author = "cifarkit developers"
copyright = "2026, cifarkit developers"
release = _version("cifarkit")
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "furo"
html_title = f"cifarkit {release}"
