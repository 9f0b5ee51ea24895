"""Saving and loading models: both of the tutorial's methods, safe, diagnosed and crash-proof.

File layout of ``save(model, path)`` (``method="state_dict"``), readable with plain
``torch.load(path, weights_only=True)``::

    {
        "format": "cifarkit.state_dict",   # str
        "format_version": 1,               # int
        "state_dict": {name: Tensor},      # CPU, contiguous
        "build": {"builder": ..., "kwargs": {...}} or None,
        "versions": {"cifarkit": str, "torch": str},
        "sha256": str,                     # hex digest of the tensor payload (see tensor_digest)
    }

``method="full"`` is ``torch.save(model)`` (a pickled module); ``method="safetensors"`` writes the
same ``state_dict`` with ``format``/``build``/``versions``/``sha256`` as JSON strings in the
safetensors metadata. Every write is atomic: the previous file stays intact until the new one is
complete on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast, get_args

import torch
from torch import nn

from cifarkit.diagnosis import Diagnosis, diagnose_state_dict, unwrap_model
from cifarkit.errors import (
    CheckpointIsDirectoryError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MissingExtraError,
    ModelClassNotFoundError,
    NonFiniteLossError,
    NotACheckpointError,
    StateDictMismatchError,
    UnsafeLoadError,
    WeightsOnlyFileError,
    check_choice,
)
from cifarkit.models import BuildRecord, get_build_record, rebuild

if TYPE_CHECKING:
    from cifarkit.train import History

__all__ = [
    "Checkpoint",
    "FileInfo",
    "atomic_write",
    "diagnose",
    "inspect",
    "load",
    "load_checkpoint",
    "read_state_dict",
    "save",
    "save_checkpoint",
    "tensor_digest",
]

FORMAT = "cifarkit.state_dict"
CHECKPOINT_FORMAT = "cifarkit.checkpoint"
FORMAT_VERSION = 1
Method = Literal["state_dict", "full", "safetensors"]
PathLike = str | os.PathLike[str]


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


# --------------------------------------------------------------------------- payloads


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


def _versions() -> dict[str, str]:
    from cifarkit import __version__

    return {"cifarkit": str(__version__), "torch": str(torch.__version__)}


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies: files don't depend on the device or on channels_last strides.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in unwrap_model(model).state_dict().items()}


def _state_payload(model: nn.Module, classes: Sequence[str] | None = None) -> dict[str, Any]:
    state_dict = _cpu_state_dict(model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": state_dict,
        "build": get_build_record(model),
        "classes": None if classes is None else [str(c) for c in classes],
        "versions": _versions(),
        "sha256": tensor_digest(state_dict),
    }


def _safetensors_bytes(model: nn.Module, classes: Sequence[str] | None) -> bytes:
    try:
        from safetensors.torch import save as st_save
    except ImportError as exc:
        msg = "method='safetensors' needs the safetensors package: pip install 'cifarkit[safetensors]'"
        raise MissingExtraError(msg) from exc
    payload = _state_payload(model, classes)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "build": json.dumps(payload["build"]),
        "classes": json.dumps(payload["classes"]),
        "versions": json.dumps(payload["versions"]),
        "sha256": payload["sha256"],
    }
    data: bytes = st_save(payload["state_dict"], metadata=metadata)
    return data


def save(
    model: nn.Module,
    path: PathLike,
    *,
    method: Method = "state_dict",
    classes: Sequence[str] | None = None,
) -> Path:
    """Save a model atomically with one of the tutorial's two methods (or safetensors).

    Args:
        model: The model; ``DistributedDataParallel``/``torch.compile`` wrappers are unwrapped,
            so the file never has ``module.`` or ``_orig_mod.`` prefixes.
        path: Destination file (parent folders are created).
        method: ``"state_dict"`` (method 2, the default): weights plus the build record, versions
            and a SHA-256; loads with plain ``torch.load(path, weights_only=True)``.
            ``"full"`` (method 1): the whole pickled module, as ``torch.save(model)``; loading it
            needs the class and ``trusted=True``. ``"safetensors"``: no pickle at all (needs the
            ``cifarkit[safetensors]`` extra).
        classes: Class names to store with the weights (``cifarkit predict`` prints them);
            ignored by ``method="full"``.

    Returns:
        The path written.

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit import build_cnn, load
        >>> path = save(build_cnn(), pathlib.Path(tempfile.mkdtemp()) / "cnn.pt")
        >>> type(load(path)).__name__
        'CifarCNN'
    """
    check_choice("method", method, get_args(Method))
    if method == "safetensors":
        data = _safetensors_bytes(model, classes)
        return atomic_write(path, lambda f: f.write(data))
    if method == "full":
        inner = unwrap_model(model)
        if type(inner).__module__ == "__main__":
            warnings.warn(
                f"{type(inner).__name__} is defined in __main__: the file will only load in a "
                "script that defines the same class. Save with method='state_dict' to avoid that.",
                stacklevel=2,
            )
        return atomic_write(path, lambda f: torch.save(inner, f))
    payload = _state_payload(model, classes)
    return atomic_write(path, lambda f: torch.save(payload, f))


# --------------------------------------------------------------------------- reading


def _sniff(path: Path) -> Literal["zip", "pickle", "safetensors"]:
    """Check that ``path`` exists and looks like a checkpoint; return which kind."""
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


def _unsafe_globals(path: Path) -> list[str]:
    with contextlib.suppress(Exception):
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    return []


def _torch_load(path: Path, *, trusted: bool, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            msg = f"{path} is damaged: unpickling failed ({exc}). Re-save it from the original model."
            raise CorruptCheckpointError(msg) from exc
        if not trusted:
            names = sorted(_unsafe_globals(path), key=lambda n: (n.startswith("torch."), n))
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


def _read_safetensors(path: Path) -> dict[str, Any]:
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
        versions = json.loads(meta["versions"]) if "versions" in meta else {}
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
        "versions": versions,
        "sha256": meta.get("sha256"),
    }


def _read(path: PathLike, *, trusted: bool = False, map_location: Any = "cpu") -> Any:
    file = Path(path)
    kind = _sniff(file)
    if kind == "safetensors":
        return _read_safetensors(file)
    return _torch_load(file, trusted=trusted, map_location=map_location)


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
    expected = obj.get("sha256")
    if expected is not None and tensor_digest(state_dict) != expected:
        msg = (
            f"{path} fails its SHA-256 check: the tensor data changed after it was saved "
            "(disk or copy corruption). Restore it from a good copy or re-save the model."
        )
        raise CorruptCheckpointError(msg)
    return state_dict


def _weights_and_record(obj: Any, path: PathLike) -> tuple[dict[str, torch.Tensor], BuildRecord | None]:
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _verified(obj, path), cast("BuildRecord | None", obj.get("build"))
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return _weights_and_record(obj.get("model"), path)
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
        >>> from cifarkit import build_cnn
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "plain.pt"
        >>> torch.save(build_cnn().state_dict(), path)
        >>> len(read_state_dict(path))
        10
    """
    return _weights_and_record(_read(path), path)[0]


def diagnose(model: nn.Module, path_or_state_dict: PathLike | Mapping[str, torch.Tensor]) -> Diagnosis:
    """Explain why weights do or do not fit ``model``: missing, unexpected and resized keys.

    Each difference comes with its likely cause and fix (an ``append``-adapted VGG16, an
    un-adapted ImageNet head, a ``module.`` prefix from DDP, the wrong architecture...). A prefix
    carried by every key is stripped automatically.

    Example:
        >>> from cifarkit import adapt_vgg16, build_cnn
        >>> diag = diagnose(build_cnn(), build_cnn(activation="relu").state_dict())
        >>> diag.ok
        False
        >>> "activation=" in str(diag)
        True
    """
    if isinstance(path_or_state_dict, Mapping):
        state_dict = dict(path_or_state_dict)
    else:
        state_dict = read_state_dict(path_or_state_dict)
    return diagnose_state_dict(model, state_dict)


def apply_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool, source: str
) -> Diagnosis:
    """Load ``state_dict`` into ``model`` (wrappers and key prefixes handled) and return the diagnosis.

    ``strict=True`` raises :class:`~cifarkit.errors.StateDictMismatchError` carrying the diagnosis
    when anything differs; ``strict=False`` loads the matching tensors and warns. ``source`` names
    the weights in messages.
    """
    diag = diagnose_state_dict(model, state_dict)
    inner = unwrap_model(model)
    if diag.ok:
        inner.load_state_dict(diag.state_dict)
    elif strict:
        msg = f"cannot load {source} into {type(inner).__name__}: {diag}"
        raise StateDictMismatchError(msg)
    else:
        inner.load_state_dict(diag.matching(), strict=False)
        warnings.warn(f"loaded {source} partially (strict=False): {diag}", stacklevel=3)
    return diag


def load(
    path: PathLike,
    *,
    model: nn.Module | None = None,
    trusted: bool = False,
    strict: bool = True,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load a model file, whatever it holds, safely.

    * a cifarkit file with a build record: the model is rebuilt with no pickle and no class
      import, then its weights are loaded (checksum verified);
    * ``model=`` given: the weights of any weights file are loaded into that model;
    * a whole pickled module (``torch.save(model)``): refused unless ``trusted=True``.

    Args:
        path: The file.
        model: A model to load the weights into (needed for plain ``state_dict`` files).
        trusted: Allow unpickling a whole module. Only for files you created: unpickling can
            run arbitrary code. cifarkit never falls back to it on its own.
        strict: Raise :class:`~cifarkit.errors.StateDictMismatchError` (with a diagnosis) when
            the weights don't fit; ``False`` loads what matches and warns with the diagnosis.
        map_location: Where tensors go (``"cpu"`` by default, whatever device they were saved on).

    Returns:
        The model (in training mode, like any new ``nn.Module``; call ``.eval()`` to predict).

    Raises:
        CheckpointNotFoundError, CheckpointIsDirectoryError: bad path.
        CorruptCheckpointError: empty, truncated or checksum-failing file.
        NotACheckpointError: an image, JSON or other non-checkpoint file.
        WeightsOnlyFileError: a plain ``state_dict`` file and no ``model=``.
        UnsafeLoadError: a pickled module without ``trusted=True``.
        ModelClassNotFoundError: ``trusted=True`` but the pickled class cannot be imported.
        StateDictMismatchError: the weights don't fit ``model`` (with ``strict=True``).

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit import adapt_vgg16, build_cnn, save
        >>> path = save(build_cnn(activation="relu"), pathlib.Path(tempfile.mkdtemp()) / "m.pt")
        >>> load(path).sequential[1]
        ReLU()
    """
    obj = _read(path, trusted=trusted, map_location=map_location)
    if isinstance(obj, nn.Module):
        if model is None:
            return obj
        apply_state_dict(model, obj.state_dict(), strict=strict, source=os.fspath(path))
        return model
    state_dict, record = _weights_and_record(obj, path)
    if model is None:
        if record is None:
            msg = (
                f"{path} holds only weights (a state_dict) and no record of the architecture. "
                "Build the model first and pass it: cifarkit.load(path, model=cifarkit.build_cnn()) "
                "(or the architecture it was saved from)."
            )
            raise WeightsOnlyFileError(msg)
        model = rebuild(record)
    apply_state_dict(model, state_dict, strict=strict, source=os.fspath(path))
    if map_location not in (None, "cpu") and not callable(map_location):
        model.to(torch.device(map_location) if isinstance(map_location, str) else map_location)
    return model


# --------------------------------------------------------------------------- inspect


@dataclass(frozen=True)
class FileInfo:
    """What a model file holds (``cifarkit inspect``)."""

    path: Path
    method: Literal["state_dict", "plain_state_dict", "full", "checkpoint", "safetensors"]
    size_bytes: int
    parameters: int | None
    tensors: int | None
    build: BuildRecord | None
    checksum: Literal["ok", "absent"]
    versions: dict[str, str]
    references: list[str]
    class_names: list[str] | None = None
    epoch: int | None = None

    def __str__(self) -> str:
        rows = [
            ("file", str(self.path)),
            ("method", self.method),
            ("size", f"{self.size_bytes:,} bytes ({self.size_bytes / 1e6:.2f} MB)"),
            ("parameters", "unknown (pickled module)" if self.parameters is None else f"{self.parameters:,}"),
            ("build record", json.dumps(self.build) if self.build else "none"),
            ("checksum", self.checksum),
            ("versions", ", ".join(f"{k} {v}" for k, v in self.versions.items()) or "unknown"),
        ]
        if self.class_names:
            rows.append(("class names", ", ".join(self.class_names)))
        if self.references:
            rows.append(("pickled classes", ", ".join(self.references)))
        if self.epoch is not None:
            rows.append(("epoch", str(self.epoch)))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def inspect(path: PathLike) -> FileInfo:
    """Describe a model file without running any pickled code.

    For a whole pickled module (method ``"full"``) the classes it references are listed but
    nothing is unpickled, so its parameter count is unknown.

    Raises:
        CorruptCheckpointError: the file fails its checksum (or is damaged).

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit import build_cnn, save
        >>> info = inspect(save(build_cnn(), pathlib.Path(tempfile.mkdtemp()) / "m.pt"))
        >>> info.method, info.parameters, info.checksum
        ('state_dict', 145578, 'ok')
    """
    file = Path(path)
    kind = _sniff(file)
    size = file.stat().st_size
    if kind != "safetensors":
        with contextlib.suppress(UnsafeLoadError):
            obj = _torch_load(file, trusted=False, map_location="cpu")
            return _describe(file, obj, size, is_safetensors=False)
        return FileInfo(
            path=file,
            method="full",
            size_bytes=size,
            parameters=None,
            tensors=None,
            build=None,
            checksum="absent",
            versions={},
            references=_unsafe_globals(file),
        )
    return _describe(file, _read_safetensors(file), size, is_safetensors=True)


def _describe(file: Path, obj: Any, size: int, *, is_safetensors: bool) -> FileInfo:
    method: Any
    inner = obj
    epoch = None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        method, inner, epoch = "checkpoint", obj.get("model"), obj.get("epoch")
    elif isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        method = "safetensors" if is_safetensors else "state_dict"
    else:
        method = "safetensors" if is_safetensors else "plain_state_dict"
    state_dict, record = _weights_and_record(inner, file)
    has_sum = isinstance(inner, Mapping) and inner.get("sha256") is not None
    versions = inner.get("versions", {}) if isinstance(inner, Mapping) else {}
    names = inner.get("classes") if isinstance(inner, Mapping) else None
    return FileInfo(
        path=file,
        method=method,
        size_bytes=size,
        parameters=sum(t.numel() for t in state_dict.values()),
        tensors=len(state_dict),
        build=record,
        checksum="ok" if has_sum else "absent",
        versions=dict(versions or {}),
        references=[],
        class_names=list(names) if isinstance(names, list) else None,
        epoch=epoch,
    )


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` restores besides the model and optimizer state."""

    epoch: int
    history: History | None
    extra: dict[str, Any] | None


def save_checkpoint(
    path: PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: History | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically save everything needed to resume training after ``epoch`` epochs.

    The file holds the model payload (as :func:`save`), the optimizer state, the epoch, the
    :class:`~cifarkit.train.History`, ``extra`` (plain containers, numbers, strings, tensors) and
    the CPU random state, and loads with ``torch.load(weights_only=True)``.

    Raises:
        NonFiniteLossError: the model has NaN/inf weights (the previous file is kept).

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit import build_cnn
        >>> model = build_cnn()
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> path = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "ck.pt", model=model, optimizer=opt, epoch=3)
        >>> load_checkpoint(path, model=build_cnn()).epoch
        3
    """
    bad = [n for n, p in unwrap_model(model).named_parameters() if not torch.isfinite(p).all()]
    if bad:
        msg = (
            f"refusing to write checkpoint {path}: parameters {', '.join(bad[:3])} hold NaN/inf "
            "(training diverged; lower the learning rate or set max_grad_norm). The previous file is kept."
        )
        raise NonFiniteLossError(msg)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "model": _state_payload(model),
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "history": history.to_dict() if history is not None else None,
        "extra": dict(extra) if extra is not None else None,
        "rng": {"torch": torch.get_rng_state()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # serialise first: a failure here leaves no file behind
    data = buffer.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Checkpoint:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    The CPU random state is restored too, so training resumes exactly where it stopped.

    Raises:
        NotACheckpointError: the file is a model file, not a training checkpoint.
        StateDictMismatchError: the weights don't fit ``model``.
    """
    from cifarkit.train import History

    obj = _read(path)
    if not (isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT):
        msg = (
            f"{path} is not a training checkpoint (it has no optimizer state or epoch); "
            "write one with save_checkpoint, or load a model file with cifarkit.load"
        )
        raise NotACheckpointError(msg)
    state_dict, _ = _weights_and_record(obj["model"], path)
    apply_state_dict(model, state_dict, strict=True, source=os.fspath(path))
    if optimizer is not None:
        optimizer.load_state_dict(obj["optimizer"])
    rng = (obj.get("rng") or {}).get("torch")
    if isinstance(rng, torch.Tensor):
        torch.set_rng_state(rng)
    history = History.from_dict(obj["history"]) if obj.get("history") else None
    return Checkpoint(epoch=int(obj["epoch"]), history=history, extra=obj.get("extra"))
