"""The file formats: model files, training checkpoints, and the cifarkit format they share.

Start here when a file will not load, or to know what one holds:

===================================== ==================================================================
:mod:`cifarkit.files.modelfiles`       ``save``, ``load``, ``inspect``, ``diagnose``: model files (the
                                       tutorial's two methods, safetensors), rebuilt without pickle
:mod:`cifarkit.files.checkpoints`      ``save_checkpoint``, ``load_checkpoint``: everything a resume needs
:mod:`cifarkit.files.format`           the layout of both, their one SHA-256, the version read, reading
                                       and checking what a file says before anything is built from it
===================================== ==================================================================

Below them, two modules every owner shares: :mod:`cifarkit.writing` (``PathLike`` and the atomic
writer: a path holds the old file or the whole new one) and :mod:`cifarkit.untrusted` (reading a
file someone else made: its kind, its zip directory, torch's ``weights_only`` unpickler, bounds on
its structure). The names most people need are importable from ``cifarkit`` itself
(``cifarkit.save``, ``cifarkit.load``, ``cifarkit.inspect``, ``cifarkit.save_checkpoint``...).
Anything read from a file is untrusted: see ``SECURITY.md``.
"""

from __future__ import annotations

from cifarkit.files.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from cifarkit.files.modelfiles import FileInfo, diagnose, inspect, load, save

__all__ = ["Checkpoint", "FileInfo", "diagnose", "inspect", "load", "load_checkpoint", "save", "save_checkpoint"]
