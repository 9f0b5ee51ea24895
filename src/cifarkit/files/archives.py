"""What a file's bytes are, before anything is unpickled: its kind, its zip directory, its globals.

Nothing here imports or calls anything a file names: the zip directory is read with
:mod:`zipfile` (entries are not inflated), the pickle with :mod:`pickletools` (opcodes only).

May import: cifarkit.errors, cifarkit.files.checksums.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path
from typing import Literal

import torch

from cifarkit.errors import CorruptCheckpointError, NotACheckpointError
from cifarkit.files.checksums import excerpt

__all__ = ["Kind", "check_zip", "file_kind", "pickled_globals", "references"]

Kind = Literal["zip", "pickle", "safetensors"]


def file_kind(head: bytes, size: int, path: Path) -> Kind:
    """Which kind of checkpoint a file whose first bytes are ``head`` is.

    Raises:
        CorruptCheckpointError: the file is empty.
        NotACheckpointError: an image, JSON, text or anything else.

    Example:
        >>> file_kind(b"PK\\x03\\x04rest", 100, Path("m.pt"))
        'zip'
    """
    if size == 0:
        msg = f"{path} is empty (0 bytes): the save that wrote it did not finish; re-save the model"
        raise CorruptCheckpointError(msg)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"  # torch's legacy (non-zip) format
    if len(head) >= 9 and head[8:9] == b"{" and 8 < int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    kinds = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image"}
    what = next((v for k, v in kinds.items() if head.startswith(k)), None)
    if what is None and head.lstrip()[:1] in (b"{", b"["):
        what = "a JSON or text file"
    msg = (
        f"{path} is not a PyTorch checkpoint ({what or 'unknown format, first bytes ' + repr(head[:8])}); "
        "pass a file written by cifarkit.save or torch.save"
    )
    raise NotACheckpointError(msg)


def check_zip(data: bytes, path: Path) -> None:
    """Refuse a zip whose directory is damaged, whose entries would inflate past the file's size
    (a compression bomb: nothing is inflated to find out), or that holds no ``data.pkl``.

    Raises:
        CorruptCheckpointError, NotACheckpointError.
    """
    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        msg = f"{path} is truncated or damaged: its zip directory cannot be read ({excerpt(str(exc))})"
        raise CorruptCheckpointError(msg) from exc
    declared = sum(entry.file_size for entry in entries)
    if declared > len(data):
        msg = (
            f"{path} declares {declared:,} bytes of content in a {len(data):,}-byte file (a compression bomb "
            "or a damaged file); torch.save and cifarkit write entries uncompressed. Nothing was inflated"
        )
        raise CorruptCheckpointError(msg)
    if not any(entry.filename.endswith("data.pkl") for entry in entries):
        msg = f"{path} is a zip archive but not a PyTorch checkpoint (it has no data.pkl); pass a torch.save file"
        raise NotACheckpointError(msg)


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickled_globals(data: bytes, pickles: int) -> list[str] | None:
    """The globals named by the first ``pickles`` pickles in ``data``; ``None`` if they are malformed.

    Only parses (``pickletools``): nothing is imported or called.
    """
    stream, found = io.BytesIO(data), []
    try:
        for _ in range(pickles):
            recent: list[object] = []
            memo: dict[object, object] = {}
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in _STRING_OPS:
                    recent.append(arg)
                elif op.name in {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}:
                    memo[arg if op.name != "MEMOIZE" else len(memo)] = recent[-1] if recent else None
                elif op.name in {"GET", "BINGET", "LONG_BINGET"}:
                    recent.append(memo.get(arg))
                elif op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(str(v) for v in recent[-2:]))
                elif op.stack_after:
                    recent.append(None)
    except Exception:  # pickletools raises ValueError and friends on any malformed stream
        return None
    return found


def references(data: bytes, kind: Kind) -> list[str] | None:
    """Globals outside torch's allowlist that a well-formed file references (``None``: malformed)."""
    if kind == "zip":
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
        except Exception:
            return None
    names = pickled_globals(data, pickles=4)  # legacy format: magic, protocol, sys info, the object
    if names is None:
        return None
    return sorted({n for n in names if not n.startswith("torch.") and n != "collections.OrderedDict"})
