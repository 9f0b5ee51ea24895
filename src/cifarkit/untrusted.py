"""Reading a file someone else made: what its bytes are and what they hold, before anything of
cifarkit's trusts them.

Nothing here imports or calls anything a file names. A file is read once, into memory, and parsed
from those bytes: its kind from its first bytes (:func:`file_kind`); a zip's directory with
:mod:`zipfile`, an entry that would inflate past the file's size refused before anything is
inflated (:func:`check_zip`); the pickle only by torch's ``weights_only`` unpickler
(:func:`torch_load`), the globals a pickled module names listed with :mod:`pickletools`, never
imported (:func:`references`). Before anything walks, hashes, prints or builds from what was read,
:func:`check_limits` bounds its nesting and its size, and :func:`excerpt` is how a message quotes it.

cifarkit's own formats (:mod:`cifarkit.files.format`) and the pretrained weights of
:func:`cifarkit.adapt` are read through here; see ``SECURITY.md`` for the promises.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import reprlib
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from cifarkit.errors import (
    CorruptCheckpointError,
    ModelClassNotFoundError,
    ModelFileNotFoundError,
    NotACheckpointError,
    PathIsDirectoryError,
    UnsafeLoadError,
    cut,
)
from cifarkit.writing import PathLike

__all__ = [
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "Kind",
    "check_limits",
    "check_zip",
    "excerpt",
    "file_kind",
    "pickled_globals",
    "read_bytes",
    "references",
    "sniff",
    "tensor_dict",
    "torch_load",
    "unsafe_globals",
]

Kind = Literal["zip", "pickle", "safetensors"]

#: Deepest nesting of dicts and lists a file may hold (a checkpoint needs 6).
MAX_DEPTH = 32
#: Most entries (dict values, list items, scalars, tensors) a file's structure may hold.
MAX_ENTRIES = 2_000_000
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def excerpt(obj: object, limit: int = 200) -> str:
    """A short ``repr`` of untrusted content for an error message: at most ``limit`` characters.

    Example:
        >>> len(excerpt(["x" * 1000] * 1000)) <= 200
        True
    """
    try:
        text = _REPR.repr(obj)
    except Exception:  # a repr that fails is no reason to fail the message
        text = f"<{type(obj).__name__}>"
    return cut(text, limit)


def _children(obj: object) -> Iterator[object]:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield key
            yield value
    elif isinstance(obj, (list, tuple)):
        yield from obj


def check_limits(obj: object, what: str = "the file") -> None:
    """Raise :class:`~cifarkit.errors.CorruptCheckpointError` when ``obj`` nests deeper than
    :data:`MAX_DEPTH` or holds more than :data:`MAX_ENTRIES` entries. Iterative: no recursion.

    Example:
        >>> nested = []
        >>> for _ in range(100):
        ...     nested = [nested]
        >>> check_limits(nested, "the record")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cifarkit.errors.CorruptCheckpointError: the record nests deeper than 32 levels...
    """
    stack: list[tuple[object, int]] = [(obj, 0)]
    entries = 0
    while stack:
        node, depth = stack.pop()
        entries += 1
        if entries > MAX_ENTRIES:
            msg = f"{what} holds more than {MAX_ENTRIES:,} entries: it is damaged or crafted, not a cifarkit file"
            raise CorruptCheckpointError(msg)
        if isinstance(node, (Mapping, list, tuple)):
            if depth >= MAX_DEPTH:
                msg = f"{what} nests deeper than {MAX_DEPTH} levels: it is damaged or crafted, not a cifarkit file"
                raise CorruptCheckpointError(msg)
            stack.extend((child, depth + 1) for child in _children(node))


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


# --------------------------------------------------------------------------- reading a file once


def _regular_file(path: Path) -> None:
    if not path.exists():
        msg = f"no such file: {path}. Check the path (cwd is {Path.cwd()})"
        raise ModelFileNotFoundError(msg)
    if path.is_dir():
        msg = f"{path} is a directory, not a model file; pass the file inside it"
        raise PathIsDirectoryError(msg)
    if not path.is_file():  # a FIFO would block a read for ever
        msg = f"{path} is not a regular file (a FIFO, device or socket); pass a model file"
        raise NotACheckpointError(msg)


def sniff(path: Path) -> Kind:
    """Check that ``path`` exists and looks like a checkpoint; return which kind (reads 16 bytes).

    Raises:
        ModelFileNotFoundError, PathIsDirectoryError, CorruptCheckpointError (empty),
        NotACheckpointError (an image, JSON, text, a FIFO...).
    """
    _regular_file(path)
    with path.open("rb") as handle:
        head = handle.read(16)
    return file_kind(head, path.stat().st_size, path)


def read_bytes(path: PathLike) -> tuple[bytes, Kind]:
    """A model file's bytes (read once) and its kind, after the checks of :func:`sniff`."""
    file = Path(path)
    _regular_file(file)
    data = file.read_bytes()
    return data, file_kind(data[:16], len(data), file)


def _torch_load(data: bytes, *, weights_only: bool, map_location: Any) -> Any:
    with warnings.catch_warnings():  # random bytes in the legacy format warn about the protocol first
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)


def torch_load(path: Path, *, trusted: bool, map_location: Any, data: bytes | None = None) -> Any:
    """``torch.load`` with ``weights_only=True``; a pickled module only with ``trusted=True``.

    ``data``: the file's bytes when already read (the file is then not opened again).

    Raises:
        UnsafeLoadError: the file is a well-formed pickled module and ``trusted`` is false.
        ModelClassNotFoundError: ``trusted`` but the pickled class cannot be imported.
        CorruptCheckpointError: the file is truncated or damaged (or a compression bomb).
    """
    data, kind = _with_kind(path, data)
    if kind == "zip":
        check_zip(data, path)
    try:
        return _torch_load(data, weights_only=True, map_location=map_location)
    except Exception as exc:
        refused = isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc)
        names = references(data, kind) if refused else None
        if not names:
            msg = f"{path} is truncated or damaged and cannot be read ({type(exc).__name__}: {excerpt(str(exc))})"
            raise CorruptCheckpointError(msg) from exc
        if not trusted:
            found = ", ".join(sorted(names, key=lambda n: (n.startswith("torch."), n))[:4])
            msg = (
                f"{path} is a pickled module (it references {found}); loading it can run arbitrary code. "
                "Pass trusted=True only for files you created, or re-save the model with "
                "cifarkit.save(model, path) (method 'state_dict') to load it safely."
            )
            error = UnsafeLoadError(msg)
            error.references = tuple(names)
            raise error from exc
    return _trusted_load(path, data, map_location)


def _with_kind(path: Path, data: bytes | None) -> tuple[bytes, Kind]:
    """The file's bytes (read now unless given) and their kind."""
    return read_bytes(path) if data is None else (data, file_kind(data[:16], len(data), path))


def unsafe_globals(path: Path, data: bytes | None = None) -> list[str]:
    """The globals a pickled checkpoint references outside torch's allowlist (nothing is run)."""
    return references(*_with_kind(path, data)) or []


def _trusted_load(path: Path, data: bytes, map_location: Any) -> Any:
    try:
        return _torch_load(data, weights_only=False, map_location=map_location)
    except (AttributeError, ImportError) as exc:
        text = str(exc)
        match = re.search(r"Can't get attribute '([\w.]+)' on <module '([\w.]+)'", text)
        if match:
            cls, module = match.group(1), match.group(2)
        else:
            cls, module = "?", getattr(exc, "name", None) or "?"
        msg = (
            f"{path} is a pickled model whose class {cls!r} cannot be found in module {module!r} "
            f"({text}). Either import or define {cls} (in {module}) before loading, or save the "
            "model with cifarkit.save(model, path) (method 'state_dict'), which needs no class."
        )
        raise ModelClassNotFoundError(msg) from exc
    except Exception as exc:
        msg = f"{path} is truncated or damaged and cannot be read ({type(exc).__name__}: {excerpt(str(exc))})"
        raise CorruptCheckpointError(msg) from exc


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _dense(state_dict: Mapping[str, torch.Tensor], path: PathLike) -> dict[str, torch.Tensor]:
    """The weights, after checking every tensor is dense and holds data (no meta, sparse, quantized)."""
    for name, tensor in state_dict.items():
        if tensor.layout != torch.strided or tensor.is_meta or tensor.is_quantized:
            kind = "meta" if tensor.is_meta else "quantized" if tensor.is_quantized else str(tensor.layout)
            msg = f"{path}: tensor {excerpt(name, 80)} is a {kind} tensor; model files hold dense tensors with data"
            raise CorruptCheckpointError(msg)
    return dict(state_dict)


def tensor_dict(obj: object, path: PathLike) -> dict[str, torch.Tensor] | None:
    """The weights in what a torch file held: a dict of dense tensors (a ``state_dict``), or the
    ``"state_dict"`` entry of a dict (the common hand-made ``{"state_dict": ...}`` file); ``None``
    when it holds neither.

    Raises:
        CorruptCheckpointError: a tensor that is meta, sparse or quantized: not weights with data.

    Example:
        >>> tensor_dict({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, "m.pt")["w"].shape
        torch.Size([2])
    """
    if _is_tensor_dict(obj):
        return _dense(obj, path)  # type: ignore[arg-type]
    if isinstance(obj, Mapping) and _is_tensor_dict(obj.get("state_dict")):
        return _dense(obj["state_dict"], path)
    return None
