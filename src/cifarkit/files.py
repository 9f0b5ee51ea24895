"""Model files on disk: atomic writes, the safe readers, and the SHA-256 digest.

Everything here is about bytes and formats, not about models: :mod:`cifarkit.models` reads
pretrained weights through :func:`read_state_dict`, :mod:`cifarkit.persist` builds ``save``/``load``
on the readers, and checkpoints and run logs write through :func:`atomic_write`.

File layout of a cifarkit model file (``save(model, path)``), readable with plain
``torch.load(path, weights_only=True)``::

    {
        "format": "cifarkit.state_dict",   # str
        "format_version": 1,               # int
        "state_dict": {name: Tensor},      # CPU, contiguous
        "build": {"builder": ..., "kwargs": {...}} or None,
        "classes": [str, ...] or None,
        "preprocess": {...} or None,       # the preprocessing record (cifarkit.preprocess)
        "versions": {"cifarkit": str, "torch": str},
        "sha256": str,                     # hex digest of the tensor payload (see tensor_digest)
        "meta_sha256": str,                # of build, classes and preprocess (see meta_digest)
    }

Files written before ``preprocess`` and ``meta_sha256`` existed load as before.

May import: cifarkit.errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any, Literal, cast

import torch

from cifarkit.errors import (
    CheckpointIsDirectoryError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MissingExtraError,
    ModelClassNotFoundError,
    NotACheckpointError,
    UnsafeLoadError,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "FORMAT",
    "FORMAT_VERSION",
    "atomic_write",
    "meta_digest",
    "read_payload",
    "read_safetensors",
    "read_state_dict",
    "sniff",
    "tensor_digest",
    "torch_load",
    "unsafe_globals",
    "versions",
    "weights_and_record",
]

FORMAT = "cifarkit.state_dict"
CHECKPOINT_FORMAT = "cifarkit.checkpoint"
FORMAT_VERSION = 1
PathLike = str | os.PathLike[str]
#: A build record as read from a file: ``{"builder": str, "kwargs": {...}}`` (checked by ``rebuild``).
RawRecord = dict[str, Any]


# --------------------------------------------------------------------------- atomic writes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files left by writers of ``path`` that were killed (SIGKILL, power off)."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[^.]+\.tmp$")
    for candidate in path.parent.iterdir():
        match = pattern.match(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                candidate.unlink()


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file so that ``path`` holds either the old or the complete new content.

    ``write`` fills a temporary file in the same directory; it is flushed, ``fsync``-ed, renamed
    over ``path`` with ``os.replace`` and the directory is ``fsync``-ed. On any exception,
    ``KeyboardInterrupt`` included, the temporary file is removed and ``path`` is untouched.
    Temporaries left by killed writers are cleaned up by the next write.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "hello.bin"
        >>> atomic_write(target, lambda f: f.write(b"hi")).read_bytes()
        b'hi'
    """
    target = Path(path)
    if target.is_dir():
        msg = f"cannot write to {target}: it is a directory; pass a file path such as {target}/model.pt"
        raise CheckpointIsDirectoryError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    with contextlib.suppress(OSError):  # directory fsync is unsupported on some filesystems
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


# --------------------------------------------------------------------------- digests and versions


def tensor_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of every tensor, in sorted key order.

    Example:
        >>> tensor_digest({"w": torch.zeros(2)}) == tensor_digest({"w": torch.zeros(2)})
        True
        >>> tensor_digest({"w": torch.zeros(2)}) == tensor_digest({"w": torch.ones(2)})
        False
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def meta_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 of the payload's build record, class names and preprocessing record, as canonical JSON.

    Example:
        >>> meta_digest({"build": None, "classes": ["a"]}) == meta_digest({"classes": ["a"], "build": None})
        True
    """
    fields = {key: payload.get(key) for key in ("build", "classes", "preprocess")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


# --------------------------------------------------------------------------- reading


def sniff(path: Path) -> Literal["zip", "pickle", "safetensors"]:
    """Check that ``path`` exists and looks like a checkpoint; return which kind.

    Raises:
        CheckpointNotFoundError, CheckpointIsDirectoryError, CorruptCheckpointError (empty),
        NotACheckpointError (an image, JSON, text...).
    """
    if not path.exists():
        msg = f"no such file: {path}. Check the path (cwd is {Path.cwd()})"
        raise CheckpointNotFoundError(msg)
    if path.is_dir():
        msg = f"{path} is a directory, not a model file; pass the file inside it"
        raise CheckpointIsDirectoryError(msg)
    with path.open("rb") as handle:
        head = handle.read(16)
    size = path.stat().st_size
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


def unsafe_globals(path: Path) -> list[str]:
    """The globals a pickled checkpoint references outside torch's allowlist (nothing is run)."""
    with contextlib.suppress(Exception):
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    return []


def torch_load(path: Path, *, trusted: bool, map_location: Any) -> Any:
    """``torch.load`` with ``weights_only=True``; a pickled module only with ``trusted=True``.

    Raises:
        UnsafeLoadError: the file is a pickled module and ``trusted`` is false.
        ModelClassNotFoundError: ``trusted`` but the pickled class cannot be imported.
        CorruptCheckpointError: the file is truncated or damaged.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            msg = f"{path} is damaged: unpickling failed ({exc}). Re-save it from the original model."
            raise CorruptCheckpointError(msg) from exc
        if not trusted:
            names = sorted(unsafe_globals(path), key=lambda n: (n.startswith("torch."), n))
            found = f" (it references {', '.join(names[:4])})" if names else ""
            msg = (
                f"{path} is a pickled module{found}; loading it can run arbitrary code. "
                "Pass trusted=True only for files you created, or re-save the model with "
                "cifarkit.save(model, path) (method 'state_dict') to load it safely."
            )
            raise UnsafeLoadError(msg) from exc
    except Exception as exc:
        msg = f"{path} is truncated or damaged and cannot be read ({type(exc).__name__}: {exc})"
        raise CorruptCheckpointError(msg) from exc
    return _trusted_load(path, map_location)


def _trusted_load(path: Path, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
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
        msg = f"{path} is truncated or damaged and cannot be read ({type(exc).__name__}: {exc})"
        raise CorruptCheckpointError(msg) from exc


def read_safetensors(path: Path) -> dict[str, Any]:
    """A safetensors file as a cifarkit payload dict (or a plain ``state_dict`` for foreign files)."""
    try:
        from safetensors.torch import load as st_load
    except ImportError as exc:
        msg = f"{path} is a safetensors file: pip install 'cifarkit[safetensors]' to read it"
        raise MissingExtraError(msg) from exc
    data = path.read_bytes()
    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        state_dict = st_load(data)
        meta = header.get("__metadata__") or {}
        build = json.loads(meta["build"]) if "build" in meta else None
        classes = json.loads(meta["classes"]) if "classes" in meta else None
        preprocess = json.loads(meta["preprocess"]) if "preprocess" in meta else None
        file_versions = json.loads(meta["versions"]) if "versions" in meta else {}
    except Exception as exc:
        msg = f"{path} is a damaged safetensors file ({type(exc).__name__}: {exc})"
        raise CorruptCheckpointError(msg) from exc
    if meta.get("format") != FORMAT:
        return dict(state_dict)
    return {
        "format": FORMAT,
        "state_dict": state_dict,
        "build": build,
        "classes": classes,
        "preprocess": preprocess,
        "versions": file_versions,
        "sha256": meta.get("sha256"),
        "meta_sha256": meta.get("meta_sha256"),
    }


def read_payload(path: PathLike, *, trusted: bool = False, map_location: Any = "cpu") -> Any:
    """What a model file holds: a payload dict, a plain ``state_dict``, or (trusted) a module."""
    file = Path(path)
    if sniff(file) == "safetensors":
        return read_safetensors(file)
    return torch_load(file, trusted=trusted, map_location=map_location)


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _verified(obj: Mapping[str, Any], path: PathLike) -> dict[str, torch.Tensor]:
    """Return the state_dict of a cifarkit payload after checking its SHA-256."""
    state_dict = obj.get("state_dict")
    if not _is_tensor_dict(state_dict):
        msg = f"{path} claims the cifarkit format but its 'state_dict' entry is not a dict of tensors"
        raise CorruptCheckpointError(msg)
    state_dict = cast("dict[str, torch.Tensor]", state_dict)
    checks: tuple[tuple[str, Callable[[], str], str], ...] = (
        ("meta_sha256", lambda: meta_digest(obj), "its build record, class names or preprocessing record changed"),
        ("sha256", lambda: tensor_digest(state_dict), "the tensor data changed"),
    )
    for key, actual, what in checks:
        expected = obj.get(key)
        if expected is not None and actual() != expected:
            msg = (
                f"{path} fails its SHA-256 check: {what} after it was saved (disk or copy corruption, or "
                "an edit). Restore it from a good copy or re-save the model."
            )
            raise CorruptCheckpointError(msg)
    return state_dict


def weights_and_record(obj: Any, path: PathLike) -> tuple[dict[str, torch.Tensor], RawRecord | None]:
    """The (checksum-verified) weights of a payload and its build record, if it has one.

    Raises:
        CorruptCheckpointError: a cifarkit payload fails its checksum.
        NotACheckpointError: ``obj`` holds no weights at all.
    """
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        record = obj.get("build")
        return _verified(obj, path), dict(record) if isinstance(record, Mapping) else None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return weights_and_record(obj.get("model"), path)
    if _is_tensor_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping) and _is_tensor_dict(obj.get("state_dict")):
        return dict(obj["state_dict"]), None  # a common hand-made {"state_dict": ...} file
    msg = (
        f"{path} holds a {type(obj).__name__}, not model weights (expected a dict of tensors, a "
        "cifarkit file, or a pickled module)"
    )
    raise NotACheckpointError(msg)


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of any safe weights file (cifarkit, plain ``state_dict``, checkpoint).

    Loading uses ``weights_only=True``; the SHA-256 of cifarkit files is verified.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "plain.pt"
        >>> torch.save({"w": torch.zeros(3)}, path)
        >>> read_state_dict(path)["w"].shape
        torch.Size([3])
    """
    return weights_and_record(read_payload(path), path)[0]
