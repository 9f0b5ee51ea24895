"""The cifarkit file format: what a model file and a checkpoint hold, their one checksum, the
version this cifarkit reads, and reading them (through :mod:`cifarkit.untrusted`).

A cifarkit model file (``save(model, path)``) reads with plain ``torch.load(path, weights_only=True)``::

    {
        "format": "cifarkit.state_dict",   # str
        "format_version": 2,               # int
        "state_dict": {name: Tensor},      # CPU, contiguous
        "build": {"builder": ..., "kwargs": {...}} or None,   # cifarkit.models.records
        "classes": [str, ...] or None,
        "preprocess": {...} or None,       # the preprocessing record (cifarkit.preprocess)
        "versions": {"cifarkit": str, "torch": str},
        "payload_sha256": str,             # of everything above (payload_digest)
    }

A checkpoint (:mod:`cifarkit.files.checkpoints`) is ``{"format": "cifarkit.checkpoint",
"format_version": 4, "model": <the above>, ...}`` under one ``payload_sha256`` too; a
safetensors model file holds the same fields as JSON strings in its metadata.

One format version of each is read: a file of another version (those of development states
before the first release among them) is refused with its number and the fix. A file whose
records, class names or versions are malformed is described by :func:`metadata_problems`
before anything is built from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, cast

import torch

from cifarkit.errors import CorruptCheckpointError, MissingExtraError, ModelRecordError, NotACheckpointError
from cifarkit.models.records import validate_build_record
from cifarkit.preprocess import MAX_CLASSES, Preprocess, validate_record
from cifarkit.untrusted import check_limits, excerpt, read_bytes, tensor_dict, torch_load
from cifarkit.writing import PathLike

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DIGEST_KEY",
    "FORMAT",
    "FORMAT_VERSION",
    "Checksum",
    "checksum_status",
    "digest_stripped",
    "field_problems",
    "file_preprocess",
    "metadata_problems",
    "payload_digest",
    "read_payload",
    "read_safetensors",
    "read_state_dict",
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
#: A build record as read from a file (checked by ``cifarkit.models.records.validate_build_record``).
RawRecord = dict[str, Any]
#: ``ok``: the whole payload verified; ``absent``: nothing to verify (a plain ``state_dict``, or a
#: cifarkit file whose digest was removed); ``mismatch``: the file changed after it was saved.
Checksum = Literal["ok", "absent", "mismatch"]
_SCALARS = (str, bytes, int, float, bool, type(None))


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


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a dense tensor, without a copy when it is already a contiguous CPU tensor."""
    if tensor.is_sparse or tensor.layout != torch.strided or tensor.is_meta or tensor.is_quantized:
        msg = f"a {tensor.layout} {tensor.device.type} tensor cannot be checksummed: files hold dense tensors"
        raise CorruptCheckpointError(msg)
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy().data) if flat.numel() else memoryview(b"")


def _key_order(key: object) -> tuple[str, str]:
    return type(key).__name__, str(key)


def payload_digest(payload: Mapping[str, Any], *, exclude: str = "payload_sha256") -> str:
    """SHA-256 over every entry of ``payload`` but ``exclude``: tensors (name, dtype, shape, bytes),
    records, numbers, strings. It is the same for a torch file and for the JSON-in-metadata of a
    safetensors file: lists and tuples hash alike, so a JSON round trip does not change it.

    Dict entries are hashed in sorted key order; a list and a tuple with the same items hash
    alike; every value carries its type (``1``, ``1.0``, ``True`` and ``"1"`` differ).

    Raises:
        CorruptCheckpointError: the payload exceeds :func:`check_limits`, or holds a sparse or
            meta tensor.

    Example:
        >>> a = payload_digest({"w": torch.zeros(2), "classes": ("cat", "dog")})
        >>> a == payload_digest({"classes": ["cat", "dog"], "w": torch.zeros(2)})
        True
        >>> a == payload_digest({"w": torch.zeros(2), "classes": ["cat", "cow"]})
        False
    """
    body = {key: value for key, value in payload.items() if key != exclude}
    check_limits(body)
    digest = hashlib.sha256()
    stack: list[object] = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, torch.Tensor):
            digest.update(f"T{node.dtype}{tuple(node.shape)}|".encode())
            digest.update(_tensor_bytes(node))
        elif isinstance(node, Mapping):
            keys = sorted(node, key=_key_order)
            digest.update(f"D{len(keys)}|".encode())
            for key in reversed(keys):  # a stack: push backwards to hash forwards
                stack.extend((node[key], key))
        elif isinstance(node, (list, tuple)):
            digest.update(f"L{len(node)}|".encode())
            stack.extend(reversed(node))
        elif isinstance(node, _SCALARS):
            text = repr(node)
            digest.update(f"{type(node).__name__}:{len(text)}:{text}|".encode())
        else:  # torch.dtype, torch.device...: what weights_only loading admits besides the above
            text = f"{type(node).__qualname__}:{node!r}"
            digest.update(f"O{len(text)}:{text}|".encode())
    return digest.hexdigest()


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
        weights = tensor_dict(obj.get("state_dict"), path)
        if weights is None:
            msg = f"{path} claims the cifarkit format but its 'state_dict' entry is not a dict of tensors"
            raise CorruptCheckpointError(msg)
        problem = version_problem(obj)
        if problem is not None:
            raise CorruptCheckpointError(f"{path} is a cifarkit file of {problem}")
        record = obj.get("build")
        return weights, dict(record) if isinstance(record, Mapping) else cast("RawRecord | None", record)
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return weights_and_record(obj.get("model"), path)
    plain = tensor_dict(obj, path)  # a state_dict, or a hand-made {"state_dict": ...} file
    if plain is not None:
        return plain, None
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


def _model_part(obj: Any) -> Any:
    """A checkpoint's embedded model payload, or the payload itself."""
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj.get("model")
    return obj


def field_problems(inner: Any) -> dict[str, str]:
    """Field of a cifarkit model payload -> what is wrong with it (records, class names, versions)."""
    if not (isinstance(inner, Mapping) and inner.get("format") == FORMAT):
        return {}
    problems = {}
    for key, validate in (("build", validate_build_record), ("preprocess", validate_record)):
        if inner.get(key) is not None:
            try:
                validate(inner[key])
            except ModelRecordError as exc:
                problems[key] = str(exc)
    names = inner.get("classes")
    if names is not None and not (
        isinstance(names, list) and len(names) <= MAX_CLASSES and all(isinstance(n, str) for n in names)
    ):
        problems["classes"] = f"class names {excerpt(names)} are not a list of at most {MAX_CLASSES:,} strings"
    found = inner.get("versions", {})
    if not (isinstance(found, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in found.items())):
        problems["versions"] = f"versions {excerpt(found)} are not a dict of names to version strings"
    return problems


def metadata_problems(obj: Any) -> list[str]:
    """What is wrong with a cifarkit payload's records, class names and versions (nothing is built)."""
    return list(field_problems(_model_part(obj)).values())


def file_preprocess(obj: Any) -> Preprocess | None:
    """The preprocessing record of a cifarkit payload (or a checkpoint's model), if any (checked before)."""
    inner = _model_part(obj)
    record = inner.get("preprocess") if isinstance(inner, Mapping) and inner.get("format") == FORMAT else None
    return None if record is None else validate_record(record)
