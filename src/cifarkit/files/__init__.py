"""The file formats, in one place: model files, checkpoints, and how cifarkit reads and writes them.

Start here when a file will not load or you want to know what one holds:

======================================= ================================================================
:mod:`cifarkit.files.saving`             ``save``, ``load``, ``diagnose``: model files (``state_dict``,
                                         whole pickled model, safetensors), rebuilt without pickle
:mod:`cifarkit.files.checkpoints`        ``save_checkpoint``, ``load_checkpoint``: everything a resume needs
:mod:`cifarkit.files.inspection`         ``inspect``: what a file holds, without building anything
:mod:`cifarkit.files.diagnosis`          why weights do not fit a model ("Missing key(s)", "size mismatch")
:mod:`cifarkit.files.reading`            safe reading: the layout, ``weights_only`` loading, the checks
:mod:`cifarkit.files.records`            build records: which model a file rebuilds, checked first
:mod:`cifarkit.files.checksums`          the one SHA-256 over a file's payload, bounds on its structure
:mod:`cifarkit.files.archives`           byte-level checks of zip and pickle files before torch sees them
:mod:`cifarkit.files.writing`            atomic writes: a path holds the old file or the whole new one
======================================= ================================================================

The names most people need are importable from ``cifarkit`` itself (``cifarkit.save``,
``cifarkit.load``, ``cifarkit.inspect``, ``cifarkit.save_checkpoint``...). This package imports
none of its modules, so importing one of them (say, the atomic writer) loads nothing else.

It also holds :data:`PathLike`, what every cifarkit function takes as a file path.

May import: nothing from cifarkit.
"""

from __future__ import annotations

import os

__all__ = ["PathLike"]

#: What every cifarkit function takes as a file path (the one alias).
PathLike = str | os.PathLike[str]
