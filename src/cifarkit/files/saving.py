"""Saving and loading models: both of the tutorial's methods, safe, diagnosed and crash-proof.

``save(model, path)`` writes the cifarkit format (weights, build record, class names, versions and
a SHA-256; see :mod:`cifarkit.files.reading` for the layout), readable with plain
``torch.load(path, weights_only=True)``. ``method="full"`` is ``torch.save(model)`` (a pickled
module); ``method="safetensors"`` writes the same ``state_dict`` with the other fields as JSON
strings in the safetensors metadata. Every write is atomic: the previous file stays intact until
the new one is complete on disk. ``load`` rebuilds the model from its record with no pickle;
``inspect`` describes a file; ``diagnose`` explains why weights do not fit a model.

May import: cifarkit.device, cifarkit.errors, cifarkit.files, cifarkit.files.checksums,
cifarkit.files.diagnosis, cifarkit.files.inspection, cifarkit.files.reading, cifarkit.files.writing,
cifarkit.models, cifarkit.preprocess.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from cifarkit.device import unwrap_model
from cifarkit.errors import (
    MissingExtraError,
    ModelRecordError,
    NonFiniteWeightsError,
    StateDictMismatchError,
    WeightsOnlyFileError,
    check_choice,
)
from cifarkit.files import PathLike
from cifarkit.files.checksums import payload_digest
from cifarkit.files.diagnosis import Diagnosis, apply_state_dict, diagnose_state_dict
from cifarkit.files.inspection import file_preprocess, metadata_problems
from cifarkit.files.reading import (
    DIGEST_KEY,
    FORMAT,
    FORMAT_VERSION,
    read_payload,
    read_state_dict,
    versions,
    weights_and_record,
)
from cifarkit.files.writing import atomic_write, check_writable
from cifarkit.models import get_build_record, rebuild
from cifarkit.preprocess import preprocessing_of, set_preprocessing

__all__ = ["check_finite_weights", "diagnose", "load", "save", "state_payload"]

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
            previous file is intact and no temporary is left (see :mod:`cifarkit.files.writing`).

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
