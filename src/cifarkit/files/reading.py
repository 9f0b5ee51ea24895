"""Model files on disk: the safe readers, the checksum check and the file layout.

Everything here is about bytes and formats, not about models: :mod:`cifarkit.models` reads
pretrained weights through :func:`read_state_dict`, :mod:`cifarkit.files.saving` builds ``save``/``load``
on the readers, and :mod:`cifarkit.files.checkpoints` reads checkpoints through :func:`read_payload`.

File layout of a cifarkit model file (``save(model, path)``), readable with plain
``torch.load(path, weights_only=True)``::

    {
        "format": "cifarkit.state_dict",   # str
        "format_version": 2,               # int
        "state_dict": {name: Tensor},      # CPU, contiguous
        "build": {"builder": ..., "kwargs": {...}} or None,
        "classes": [str, ...] or None,
        "preprocess": {...} or None,       # the preprocessing record (cifarkit.preprocess)
        "versions": {"cifarkit": str, "torch": str},
        "payload_sha256": str,             # of everything above (cifarkit.files.checksums.payload_digest)
    }

One format version is read: a cifarkit file of another version (those of development states
before the first release among them) is refused with its number and the fix, re-saving it.

A file is read once, into memory, and everything is parsed from those bytes: the zip's
directory (an entry that inflates to more than the file's size is refused before anything is
inflated), the pickle (only torch's ``weights_only`` unpickler runs on it), the globals a pickled
module references (listed, never imported). A file that cannot be parsed is
:class:`~cifarkit.errors.CorruptCheckpointError`; only a well-formed pickle that references
globals outside torch's allowlist is :class:`~cifarkit.errors.UnsafeLoadError`.

May import: cifarkit.errors, cifarkit.files, cifarkit.files.archives, cifarkit.files.checksums.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, cast

import torch

from cifarkit.errors import (
    CorruptCheckpointError,
    MissingExtraError,
    ModelClassNotFoundError,
    ModelFileNotFoundError,
    NotACheckpointError,
    PathIsDirectoryError,
    UnsafeLoadError,
)
from cifarkit.files import PathLike
from cifarkit.files.archives import Kind, check_zip, file_kind, references
from cifarkit.files.checksums import check_limits, excerpt, payload_digest

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DIGEST_KEY",
    "FORMAT",
    "FORMAT_VERSION",
    "Checksum",
    "checksum_status",
    "digest_stripped",
    "read_bytes",
    "read_payload",
    "read_safetensors",
    "read_state_dict",
    "sniff",
    "torch_load",
    "unsafe_globals",
    "verify_checksum",
    "version_problem",
    "versions",
    "weights_and_record",
]

FORMAT = "cifarkit.state_dict"
CHECKPOINT_FORMAT = "cifarkit.checkpoint"
FORMAT_VERSION = 2
#: The checkpoint format this cifarkit writes and resumes (see :mod:`cifarkit.files.checkpoints`).
CHECKPOINT_VERSION = 4
#: The key of the whole-payload digest (model files of format 2, checkpoints).
DIGEST_KEY = "payload_sha256"
#: The most bytes one JSON string in a safetensors file's metadata may hold.
MAX_JSON_BYTES = 1 << 20
#: A build record as read from a file (checked by ``cifarkit.files.records.validate_build_record``).
RawRecord = dict[str, Any]
#: ``ok``: the whole payload verified; ``absent``: nothing to verify (a plain ``state_dict``, or a
#: cifarkit file whose digest was removed); ``mismatch``: the file changed after it was saved.
Checksum = Literal["ok", "absent", "mismatch"]


def versions() -> dict[str, str]:
    """The versions a file records: cifarkit's (from the installed metadata) and torch's.

    ``torch.__version__`` is a ``str`` subclass that ``weights_only`` loading refuses, hence ``str()``.

    Example:
        >>> sorted(versions())
        ['cifarkit', 'torch']
    """
    try:
        own = version("cifarkit")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        own = "0+unknown"
    return {"cifarkit": own, "torch": str(torch.__version__)}


# --------------------------------------------------------------------------- reading bytes


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


def _json_field(meta: Mapping[str, str], key: str) -> Any:
    text = meta.get(key)
    if text is None:
        return None
    if not isinstance(text, str) or len(text) > MAX_JSON_BYTES:
        msg = f"metadata entry {key!r} is not a JSON string of at most {MAX_JSON_BYTES:,} bytes"
        raise ValueError(msg)
    return json.loads(text)


def read_safetensors(path: Path, data: bytes | None = None) -> dict[str, Any]:
    """A safetensors file as a cifarkit payload dict (or a plain ``state_dict`` for foreign files)."""
    try:
        from safetensors.torch import load as st_load
    except ImportError as exc:
        msg = f"{path} is a safetensors file: pip install 'cifarkit[safetensors]' to read it"
        raise MissingExtraError(msg) from exc
    data = path.read_bytes() if data is None else data
    try:
        header_size = int.from_bytes(data[:8], "little")
        if header_size > min(len(data) - 8, 100 << 20):
            msg = f"header of {header_size:,} bytes in a {len(data):,}-byte file"
            raise ValueError(msg)
        header = json.loads(data[8 : 8 + header_size])
        meta = header.get("__metadata__") or {}
        state_dict = st_load(data)
        fields = {key: _json_field(meta, key) for key in ("build", "classes", "preprocess", "versions")}
        format_version = int(meta.get("format_version", "0"))
    except Exception as exc:
        msg = f"{path} is a damaged safetensors file ({type(exc).__name__}: {excerpt(str(exc))})"
        raise CorruptCheckpointError(msg) from exc
    if meta.get("format") != FORMAT:
        return dict(state_dict)
    payload = {"format": FORMAT, "format_version": format_version, "state_dict": state_dict, **fields}
    payload["versions"] = payload["versions"] or {}
    if meta.get(DIGEST_KEY) is not None:
        payload[DIGEST_KEY] = meta[DIGEST_KEY]
    return payload


# --------------------------------------------------------------------------- checking what was read


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _dense(state_dict: Mapping[str, torch.Tensor], path: PathLike) -> dict[str, torch.Tensor]:
    """The state_dict, after checking every tensor is dense and holds data (no meta, sparse, quantized)."""
    for name, tensor in state_dict.items():
        if tensor.layout != torch.strided or tensor.is_meta or tensor.is_quantized:
            kind = "meta" if tensor.is_meta else "quantized" if tensor.is_quantized else str(tensor.layout)
            msg = f"{path}: tensor {excerpt(name, 80)} is a {kind} tensor; model files hold dense tensors with data"
            raise CorruptCheckpointError(msg)
    return dict(state_dict)


def checksum_status(obj: object) -> tuple[Checksum, str | None]:
    """What a payload's checksum says: its :data:`Checksum` and, on a mismatch, what changed.

    Every cifarkit model file and checkpoint carries one digest over everything else in it.
    """
    if not isinstance(obj, Mapping) or obj.get("format") not in (FORMAT, CHECKPOINT_FORMAT):
        return "absent", None
    check_limits(obj)
    if obj.get(DIGEST_KEY) is None:
        return "absent", None
    same = payload_digest(obj, exclude=DIGEST_KEY) == obj[DIGEST_KEY]
    return ("ok", None) if same else ("mismatch", "its content changed after it was saved")


def digest_stripped(obj: object) -> bool:
    """A cifarkit model file or checkpoint without its ``payload_sha256``: it was removed."""
    return isinstance(obj, Mapping) and obj.get("format") in (FORMAT, CHECKPOINT_FORMAT) and obj.get(DIGEST_KEY) is None


def version_problem(obj: object) -> str | None:
    """What is wrong with a cifarkit payload's format version (``None``: it is the one this reads).

    Example:
        >>> version_problem({"format": FORMAT, "format_version": 1})  # doctest: +ELLIPSIS
        'format version 1; this cifarkit reads model files of version 2 only. Re-save the model...'
    """
    if not isinstance(obj, Mapping):
        return None
    kind = obj.get("format")
    wanted = {
        FORMAT: (FORMAT_VERSION, "reads model files"),
        CHECKPOINT_FORMAT: (CHECKPOINT_VERSION, "resumes checkpoints"),
    }
    if kind not in wanted or obj.get("format_version") == wanted[kind][0]:
        return None
    number, verb = wanted[kind]
    fix = "Re-save the model" if kind == FORMAT else "Start the run again with this cifarkit, or resume it"
    return (
        f"format version {excerpt(obj.get('format_version'), 40)}; this cifarkit {verb} of version {number} only. "
        f"{fix} with the cifarkit that wrote it"
    )


def verify_checksum(obj: object, path: PathLike) -> Checksum:
    """Raise :class:`~cifarkit.errors.CorruptCheckpointError` unless ``obj`` passes its checksum.

    A file of another format version is refused first (naming the version); a cifarkit file
    without its digest fails too: it was stripped.
    """
    problem = version_problem(obj)
    if problem is not None:
        kind = "checkpoint" if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT else "cifarkit file"
        raise CorruptCheckpointError(f"{path} is a {kind} of {problem}")
    status, what = checksum_status(obj)
    if status == "mismatch" or digest_stripped(obj):
        msg = (
            f"{path} fails its SHA-256 check: {what or 'its checksum is missing'} (disk or copy corruption, "
            "or an edit). Restore it from a good copy or re-save the model."
        )
        raise CorruptCheckpointError(msg)
    return status


def read_payload(path: PathLike, *, trusted: bool = False, map_location: Any = "cpu", verify: bool = True) -> Any:
    """What a model file holds: a payload dict, a plain ``state_dict``, or (trusted) a module.

    The file is read once. With ``verify`` (the default) a cifarkit payload's checksum is checked.
    """
    file = Path(path)
    data, kind = read_bytes(file)
    if kind == "safetensors":
        obj = read_safetensors(file, data)
    else:
        obj = torch_load(file, trusted=trusted, map_location=map_location, data=data)
    del data
    if verify:
        verify_checksum(obj, file)
    return obj


def weights_and_record(obj: Any, path: PathLike) -> tuple[dict[str, torch.Tensor], RawRecord | None]:
    """The weights of a payload (dense tensors) and its build record, if it has one (unchecked).

    Raises:
        CorruptCheckpointError: a cifarkit payload's ``state_dict`` is not a dict of dense tensors.
        NotACheckpointError: ``obj`` holds no weights at all.
    """
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        state_dict = obj.get("state_dict")
        if not _is_tensor_dict(state_dict):
            msg = f"{path} claims the cifarkit format but its 'state_dict' entry is not a dict of tensors"
            raise CorruptCheckpointError(msg)
        problem = version_problem(obj)
        if problem is not None:
            raise CorruptCheckpointError(f"{path} is a cifarkit file of {problem}")
        record = obj.get("build")
        weights = _dense(cast("dict[str, torch.Tensor]", state_dict), path)
        return weights, dict(record) if isinstance(record, Mapping) else record
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return weights_and_record(obj.get("model"), path)
    if _is_tensor_dict(obj):
        return _dense(obj, path), None
    if isinstance(obj, Mapping) and _is_tensor_dict(obj.get("state_dict")):
        return _dense(obj["state_dict"], path), None  # a common hand-made {"state_dict": ...} file
    msg = (
        f"{path} holds a {type(obj).__name__}, not model weights (expected a dict of tensors, a "
        "cifarkit file, or a pickled module)"
    )
    raise NotACheckpointError(msg)


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of any safe weights file (cifarkit, plain ``state_dict``, checkpoint).

    Loading uses ``weights_only=True``; the checksum of cifarkit files is verified.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "plain.pt"
        >>> torch.save({"w": torch.zeros(3)}, path)
        >>> read_state_dict(path)["w"].shape
        torch.Size([3])
    """
    return weights_and_record(read_payload(path), path)[0]
