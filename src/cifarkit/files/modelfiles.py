"""Model files: ``save`` with either of the tutorial's methods (or safetensors), ``load`` that
rebuilds the model with no pickle, ``inspect`` that describes a file without building anything,
and ``diagnose`` that says why weights do not fit a model.

``save(model, path)`` writes the cifarkit format (see :mod:`cifarkit.files.format`), readable with
plain ``torch.load(path, weights_only=True)``. ``method="full"`` is ``torch.save(model)`` (a pickled
module); ``method="safetensors"`` writes the same ``state_dict`` with the other fields as JSON
strings in the safetensors metadata. Every write is atomic (:func:`~cifarkit.writing.atomic_write`).
``load`` checks everything a file says before it builds anything: its checksum, its records (the
build record by :func:`~cifarkit.models.records.validate_build_record`), and its tensor shapes
against the recorded architecture on a ``meta`` model.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from cifarkit.device import unwrap_model
from cifarkit.display import format_table
from cifarkit.errors import (
    CorruptCheckpointError,
    MissingExtraError,
    ModelRecordError,
    NonFiniteWeightsError,
    NotACheckpointError,
    StateDictMismatchError,
    UnsafeLoadError,
    WeightsOnlyFileError,
    check_choice,
)
from cifarkit.files.format import (
    CHECKPOINT_FORMAT,
    DIGEST_KEY,
    FORMAT,
    FORMAT_VERSION,
    Checksum,
    checksum_status,
    digest_stripped,
    field_problems,
    file_preprocess,
    metadata_problems,
    payload_digest,
    read_payload,
    read_safetensors,
    read_state_dict,
    version_problem,
    versions,
    weights_and_record,
)
from cifarkit.models.fitting import Diagnosis, apply_state_dict, diagnose_state_dict
from cifarkit.models.rebuilding import rebuild
from cifarkit.models.records import BuildRecord, get_build_record
from cifarkit.preprocess import Preprocess, preprocessing_of, set_preprocessing
from cifarkit.untrusted import excerpt, read_bytes, torch_load
from cifarkit.writing import PathLike, atomic_write, check_writable

__all__ = ["FileInfo", "Method", "check_finite_weights", "diagnose", "inspect", "load", "save", "state_payload"]

Method = Literal["state_dict", "full", "safetensors"]


def check_finite_weights(model: nn.Module, path: PathLike, *, override: str | None = None) -> None:
    """Raise :class:`~cifarkit.errors.NonFiniteWeightsError` when a parameter holds NaN or inf.

    ``override`` names the caller's option that writes the file anyway (``save`` has
    ``allow_nonfinite=True``); the message offers it only when there is one.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> check_finite_weights(model, "m.pt")  # fine
        >>> with torch.no_grad():
        ...     model.bias[0] = float("nan")
        >>> check_finite_weights(model, "m.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cifarkit.errors.NonFiniteWeightsError: refusing to write m.pt: parameters bias hold NaN/inf ...
    """
    bad = [n for n, p in unwrap_model(model).named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        msg = (
            f"refusing to write {os.fspath(path)}: parameters {', '.join(bad[:3])} hold NaN/inf "
            "(training diverged; lower the learning rate or set max_grad_norm). Any previous file is kept"
            + (f"; pass {override} to write it anyway." if override else ".")
        )
        raise NonFiniteWeightsError(msg)


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies: files don't depend on the device or on channels_last strides.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in unwrap_model(model).state_dict().items()}


def state_payload(model: nn.Module, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The dict :func:`save` writes (method ``"state_dict"``); checkpoints embed it as their model."""
    state_dict = _cpu_state_dict(model)
    record = preprocessing_of(model)
    if classes is None and record is not None:
        classes = record.get("classes")
    if record is not None and classes is not None:
        record["classes"] = [str(c) for c in classes]
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": state_dict,
        "build": get_build_record(model),
        "classes": None if classes is None else [str(c) for c in classes],
        "preprocess": record,
        "versions": versions(),
    }
    payload[DIGEST_KEY] = payload_digest(payload)
    return payload


def _safetensors_bytes(model: nn.Module, classes: Sequence[str] | None) -> bytes:
    try:
        from safetensors.torch import save as st_save
    except ImportError as exc:
        msg = "method='safetensors' needs the safetensors package: pip install 'cifarkit[safetensors]'"
        raise MissingExtraError(msg) from exc
    payload = state_payload(model, classes)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "build": json.dumps(payload["build"]),
        "classes": json.dumps(payload["classes"]),
        "preprocess": json.dumps(payload["preprocess"]),
        "versions": json.dumps(payload["versions"]),
        DIGEST_KEY: payload[DIGEST_KEY],
    }
    data: bytes = st_save(payload["state_dict"], metadata=metadata)
    return data


def save(
    model: nn.Module,
    path: PathLike,
    *,
    method: Method = "state_dict",
    classes: Sequence[str] | None = None,
    allow_nonfinite: bool = False,
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
        allow_nonfinite: Write weights holding NaN/inf instead of refusing them.

    Returns:
        The path written.

    Raises:
        NonFiniteWeightsError: a parameter holds NaN/inf (nothing is written).
        PathIsDirectoryError: ``path`` is a directory.
        WriteError: a FIFO, device or socket at ``path``, the disk full, a failed ``fsync``: the
            previous file is intact and no temporary is left (see :mod:`cifarkit.writing`).

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit import build_cnn, load
        >>> path = save(build_cnn(), pathlib.Path(tempfile.mkdtemp()) / "cnn.pt")
        >>> type(load(path)).__name__
        'CifarCNN'
    """
    check_choice("method", method, get_args(Method))
    check_writable(path)  # a directory, FIFO or device at the path: refused before any work
    if not allow_nonfinite:
        check_finite_weights(model, path, override="allow_nonfinite=True")
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
    payload = state_payload(model, classes)
    return atomic_write(path, lambda f: torch.save(payload, f))


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


def _rebuilt(record: Any, state_dict: Mapping[str, torch.Tensor], path: PathLike, *, strict: bool) -> nn.Module:
    """The model a checked build record describes, built only after the file's shapes were compared
    on a ``meta`` model (no memory): a record cannot make ``load`` allocate more than the tensors need."""
    with torch.device("meta"):
        skeleton = rebuild(record)  # rebuild checks the record first
    diag = diagnose_state_dict(skeleton, state_dict)
    if strict and not diag.ok:
        msg = f"cannot load {os.fspath(path)} into {type(skeleton).__name__}: {diag}"
        raise StateDictMismatchError(msg)
    return rebuild(record)


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
        ModelFileNotFoundError, PathIsDirectoryError: bad path.
        CorruptCheckpointError: empty, truncated, damaged or checksum-failing file (or one
            whose zip would inflate past its size).
        ModelRecordError: the build record, preprocessing record, class names or versions are
            malformed or out of bounds (checked before anything is built).
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
    obj = read_payload(path, trusted=trusted, map_location=map_location)
    if isinstance(obj, nn.Module):
        if model is None:
            return obj
        apply_state_dict(model, obj.state_dict(), strict=strict, source=os.fspath(path))
        return model
    state_dict, record = weights_and_record(obj, path)
    problems = metadata_problems(obj)
    if problems:
        msg = f"{path}: {problems[0]}"
        raise ModelRecordError(msg)
    preprocess = file_preprocess(obj)
    if model is None:
        if record is None:
            msg = (
                f"{path} holds only weights (a state_dict) and no record of the architecture. "
                "Build the model first and pass it: cifarkit.load(path, model=cifarkit.build_cnn()) "
                "(or the architecture it was saved from)."
            )
            raise WeightsOnlyFileError(msg)
        model = _rebuilt(record, state_dict, path, strict=strict)
    apply_state_dict(model, state_dict, strict=strict, source=os.fspath(path))
    if preprocess is not None:
        set_preprocessing(model, preprocess)
    if map_location not in (None, "cpu") and not callable(map_location):
        model.to(torch.device(map_location) if isinstance(map_location, str) else map_location)
    return model


@dataclass(frozen=True)
class FileInfo:
    """What a model file holds (``cifarkit inspect``), problems included.

    ``checksum``: ``"ok"`` (everything in the file verified), ``"absent"`` (a plain
    ``state_dict`` or a pickled module: nothing to verify), ``"mismatch"`` (changed after it was
    saved). ``problems`` lists what makes the file unfit to load; empty for a sound file.
    """

    path: Path
    method: Literal["state_dict", "plain_state_dict", "full", "checkpoint", "safetensors"]
    size_bytes: int
    parameters: int | None
    tensors: int | None
    build: BuildRecord | None
    checksum: Checksum
    versions: dict[str, str]
    references: list[str]
    class_names: list[str] | None = None
    epoch: int | None = None
    preprocess: Preprocess | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problems found (a pickled module is sound, though it needs ``trusted=True``)."""
        return not self.problems

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
            shown = ", ".join(self.class_names[:20])
            more = f" ... ({len(self.class_names):,} in all)" if len(self.class_names) > 20 else ""
            rows.append(("class names", (shown if len(shown) <= 300 else shown[:297] + "...") + more))
        if self.preprocess is not None:
            p = self.preprocess
            norm = f"mean {p.get('mean')}, std {p.get('std')}" if p.get("mean") is not None else "none"
            rows.append(("preprocessing", f"size {p.get('input_size') or 'any'}, {p.get('scale')}, normalize: {norm}"))
            if p.get("temperature"):
                rows.append(("calibrated", f"temperature {p['temperature']:.4g} (cifarkit.calibrate)"))
            if p.get("averaged"):
                a = p["averaged"]
                rows.append(("weights", f"an EMA average (decay {a['decay']:g}, {a['updates']:,} updates)"))
            if p.get("mirror") is False:
                rows.append(("mirror", "pictures must not be mirrored (flip TTA refused)"))
        if self.references:
            rows.append(("pickled classes", ", ".join(self.references)))
            rows.append(("loading", "needs trusted=True: unpickling a module runs its code (only for your own files)"))
        if self.epoch is not None:
            rows.append(("epoch", str(self.epoch)))
        rows.extend(("problem", problem) for problem in self.problems)
        return format_table(rows)


def inspect(path: PathLike) -> FileInfo:
    """Describe a model file without running any pickled code, problems included.

    The file is read once. For a whole pickled module (method ``"full"``) the classes it
    references are listed but nothing is unpickled, so its parameter count is unknown. A file
    that parses is always described: a failed checksum, a malformed or out-of-bounds record,
    class names that are not strings... are listed in ``problems``, never built or allocated.

    Raises:
        ModelFileNotFoundError, NotACheckpointError: no such file, or not a checkpoint at all.
        CorruptCheckpointError: the file is truncated or damaged beyond parsing.

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit import build_cnn, save
        >>> info = inspect(save(build_cnn(), pathlib.Path(tempfile.mkdtemp()) / "m.pt"))
        >>> info.method, info.parameters, info.checksum, info.ok
        ('state_dict', 145578, 'ok', True)
    """
    file = Path(path)
    data, kind = read_bytes(file)
    size = len(data)
    if kind == "safetensors":
        return _describe(file, read_safetensors(file, data), size, is_safetensors=True)
    try:
        obj = torch_load(file, trusted=False, map_location="cpu", data=data)
    except UnsafeLoadError as exc:
        return FileInfo(
            path=file, method="full", size_bytes=size, parameters=None, tensors=None, build=None,
            checksum="absent", versions={}, references=list(exc.references),
        )  # fmt: skip
    del data
    return _describe(file, obj, size, is_safetensors=False)


def _describe(file: Path, obj: Any, size: int, *, is_safetensors: bool) -> FileInfo:
    method: Any = "safetensors" if is_safetensors else "plain_state_dict"
    inner, epoch, problems = obj, None, []
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        method, inner, epoch = "checkpoint", obj.get("model"), obj.get("epoch")
        problem = version_problem(obj)
        if problem is not None:
            problems.append(f"a checkpoint of {problem}")
        if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
            problems.append(f"epoch {excerpt(epoch, 60)} is not a whole number")
            epoch = None
    elif isinstance(obj, Mapping) and obj.get("format") == FORMAT and not is_safetensors:
        method = "state_dict"
    try:
        checksum, what = checksum_status(obj)
        state_dict, _ = weights_and_record(inner, file)
    except (CorruptCheckpointError, NotACheckpointError) as exc:  # too deep, not tensors, not weights
        return FileInfo(path=file, method=method, size_bytes=size, parameters=None, tensors=None, build=None,
                        checksum="absent", versions={}, references=[], problems=[*problems, str(exc)])  # fmt: skip
    if checksum == "mismatch":
        problems.append(f"fails its SHA-256 check: {what}")
    elif digest_stripped(obj) or digest_stripped(inner):
        problems.append("its checksum is missing (a cifarkit file of this format always has one: it was stripped)")
    bad = field_problems(inner)
    problems.extend(bad.values())
    fields = inner if isinstance(inner, Mapping) and inner.get("format") == FORMAT else {}
    sound = {key: fields.get(key) for key in ("build", "preprocess", "classes") if key not in bad}
    return FileInfo(
        path=file,
        method=method,
        size_bytes=size,
        parameters=sum(t.numel() for t in state_dict.values()),
        tensors=len(state_dict),
        build=sound.get("build"),
        checksum=checksum,
        versions={} if "versions" in bad else dict(fields.get("versions", {})),
        references=[],
        class_names=sound.get("classes"),
        preprocess=sound.get("preprocess"),
        epoch=epoch,
        problems=problems,
    )
