"""Training checkpoints: everything needed to resume a run after an epoch, written atomically.

A checkpoint embeds the model file's payload (see :mod:`cifarkit.files.format`), the optimizer state, the
epoch, the :class:`~cifarkit.history.History`, the scheduler's and gradient scaler's states, the
best-so-far figure and weights, the loader's seed and epoch, and every random state (torch's CPU
and CUDA generators, Python's ``random``, numpy's when it is imported), as tensors and plain
values only: it loads with ``torch.load(weights_only=True)``.

One format version, :data:`~cifarkit.files.format.CHECKPOINT_VERSION` (4: every field above, the
callbacks' states included, under one SHA-256, ``payload_sha256``); a checkpoint of another
version is refused with its number (the run is started again; nothing was released before it).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarkit.device import unwrap_model
from cifarkit.errors import CorruptCheckpointError, HistoryFormatError, NotACheckpointError, StateDictMismatchError
from cifarkit.files.format import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    DIGEST_KEY,
    metadata_problems,
    payload_digest,
    read_payload,
    weights_and_record,
)
from cifarkit.files.modelfiles import check_finite_weights, state_payload
from cifarkit.history import History
from cifarkit.models.fitting import diagnose_state_dict
from cifarkit.untrusted import excerpt
from cifarkit.writing import PathLike, atomic_write, check_writable

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "load_checkpoint",
    "random_states",
    "save_checkpoint",
    "set_random_states",
]


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` hands back besides what it restored in place."""

    epoch: int
    history: History | None
    extra: dict[str, Any] | None
    #: The ``state_dict()`` of each stateful callback, by ``"<position>:<class name>"``.
    callbacks: dict[str, Any] | None = None
    #: The loader's ``state_dict()`` (seed and epoch), if it had one.
    loader: dict[str, Any] | None = None
    format_version: int = CHECKPOINT_VERSION


def random_states() -> dict[str, Any]:
    """Every random state a run draws from, as tensors and plain values.

    Example:
        >>> sorted(random_states())
        ['cuda', 'numpy', 'python', 'torch']
    """
    numpy = sys.modules.get("numpy")
    np_state = None
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        np_state = [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np_state,
    }


def set_random_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`random_states` returned (entries that are absent are left alone)."""
    if isinstance(states.get("torch"), torch.Tensor):
        torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if states.get("python") is not None:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    numpy = sys.modules.get("numpy")
    if states.get("numpy") is not None and numpy is not None:
        name, keys, pos, has_gauss, cached = states["numpy"]
        numpy.random.set_state((name, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, cached))


def save_checkpoint(
    path: PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: History | None = None,
    extra: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    callbacks: Mapping[str, Any] | None = None,
    loader: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically save everything needed to resume training after ``epoch`` epochs.

    The file holds the model payload (as :func:`~cifarkit.files.modelfiles.save`), the optimizer state,
    the epoch, the :class:`~cifarkit.history.History`, the ``scheduler``'s and ``scaler``'s
    states, ``callbacks`` (each stateful callback's ``state_dict()``), ``loader`` (the loader's seed and epoch),
    ``extra`` (plain containers, numbers, strings, tensors) and every random state, and loads
    with ``torch.load(weights_only=True)``.

    Raises:
        NonFiniteWeightsError: the model has NaN/inf weights (the previous file is kept).

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit.models import build_cnn
        >>> model = build_cnn()
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> path = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "ck.pt", model=model, optimizer=opt, epoch=3)
        >>> load_checkpoint(path, model=build_cnn()).epoch
        3
    """
    check_writable(path)
    check_finite_weights(model, path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model": state_payload(model),
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "history": history.to_dict() if history is not None else None,
        "extra": dict(extra) if extra is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "callbacks": dict(callbacks) if callbacks is not None else None,
        "loader": dict(loader) if loader is not None else None,
        "rng": random_states(),
    }
    payload[DIGEST_KEY] = payload_digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # serialise first: a failure here leaves no file behind
    data = buffer.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def _bad(path: PathLike, why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{os.fspath(path)} is damaged: {why}. Nothing was restored; use another checkpoint")


def _checked_rng(states: object, path: PathLike) -> Mapping[str, Any]:
    """The random states, each tried on a scratch generator first (the process's are not touched)."""
    if states is None:
        return {}
    if not isinstance(states, Mapping):
        raise _bad(path, f"its random states are {excerpt(states, 60)}, not a dict")
    try:
        if states.get("torch") is not None:
            torch.Generator().set_state(states["torch"])
        if states.get("python") is not None:
            version, internal, gauss = states["python"]
            random.Random().setstate((version, tuple(internal), gauss))
        numpy = sys.modules.get("numpy")
        if states.get("numpy") is not None and numpy is not None:
            name, keys, pos, has_gauss, cached = states["numpy"]
            numpy.random.RandomState().set_state(
                (name, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, cached)
            )
        cuda = states.get("cuda") or []
        if not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
            raise TypeError("cuda states must be uint8 tensors")
    except Exception as exc:
        raise _bad(path, f"its random states do not fit ({type(exc).__name__}: {excerpt(str(exc))})") from exc
    return states


def _check_optimizer(saved: object, optimizer: torch.optim.Optimizer, path: PathLike) -> None:
    """The saved optimizer state fits ``optimizer``: groups, parameter counts, state shapes, value types."""
    if not (isinstance(saved, Mapping) and isinstance(saved.get("state"), Mapping)):
        raise _bad(path, "its optimizer state is not a {'state': ..., 'param_groups': ...} dict")
    groups = saved.get("param_groups")
    if not (isinstance(groups, list) and len(groups) == len(optimizer.param_groups)):
        raise _bad(path, f"its optimizer has {excerpt(groups, 40)} parameter groups, not {len(optimizer.param_groups)}")
    params: dict[object, torch.Tensor] = {}
    for group, mine in zip(groups, optimizer.param_groups):
        ids = group.get("params") if isinstance(group, Mapping) else None
        if not (isinstance(ids, list) and len(ids) == len(mine["params"])):
            raise _bad(path, "an optimizer parameter group does not match this optimizer's")
        params.update(zip(ids, mine["params"]))
        for key, value in group.items():
            ours = mine.get(key)
            if key != "params" and ours is not None and not _same_kind(value, ours):
                raise _bad(path, f"optimizer setting {excerpt(key, 40)} is {excerpt(value, 60)}")
    for key, entry in saved["state"].items():
        if key not in params or not isinstance(entry, Mapping):
            raise _bad(path, f"optimizer state {excerpt(key, 40)} belongs to no parameter")
        for name, value in entry.items():
            shaped = isinstance(value, torch.Tensor) and value.numel() in (1, params[key].numel())
            if not (shaped or value is None or (not isinstance(value, torch.Tensor) and _same_kind(value, 0.0))):
                raise _bad(path, f"optimizer state {excerpt(name, 40)} does not fit its parameter")


def _same_kind(value: object, ours: object) -> bool:
    """A saved setting has the kind of this optimizer's (number, flag, tuple of numbers, text)."""
    if isinstance(ours, bool) or ours is None:
        return isinstance(value, bool) or value is None
    if isinstance(ours, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(ours, (tuple, list)):
        return isinstance(value, (tuple, list)) and len(value) == len(ours) and all(map(_same_kind, value, ours))
    return isinstance(value, (type(ours), torch.Tensor))


def _state_dicts(*parts: Any) -> list[Any]:
    """Copies of the ``state_dict()`` of each part (``None`` stays ``None``) to roll back to."""
    return [None if part is None else copy.deepcopy(part.state_dict()) for part in parts]


def load_checkpoint(
    path: PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Checkpoint:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``,
    ``scheduler``, ``scaler`` when given and saved).

    The random states are restored too, so training resumes exactly where it stopped. Every field
    is checked before anything is restored, and a failure while restoring rolls back what was
    restored: on any error, the model, optimizer, scheduler, scaler and random states are as they
    were.

    Raises:
        NotACheckpointError: the file is a model file, not a training checkpoint.
        CorruptCheckpointError: damaged (a field of the wrong type or shape, a failed checksum),
            or a format newer than this cifarkit reads.
        StateDictMismatchError: the weights don't fit ``model``.
    """
    obj = read_payload(path)
    if not (isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT):
        msg = (
            f"{path} is not a training checkpoint (it has no optimizer state or epoch); "
            "write one with save_checkpoint, or load a model file with cifarkit.load"
        )
        raise NotACheckpointError(msg)
    state_dict, _ = weights_and_record(obj.get("model"), path)
    problems = metadata_problems(obj)
    epoch = obj.get("epoch")
    if problems or not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
        raise _bad(path, problems[0] if problems else f"its epoch is {excerpt(epoch, 40)}, not a whole number")
    for key in ("extra", "callbacks", "loader", "scheduler", "scaler"):
        if obj.get(key) is not None and not isinstance(obj[key], Mapping):
            raise _bad(path, f"its {key!r} entry is {excerpt(obj[key], 60)}, not a dict")
    try:
        history = History.from_dict(obj["history"]) if obj.get("history") else None
    except HistoryFormatError as exc:
        raise _bad(path, str(exc)) from exc
    rng = _checked_rng(obj.get("rng"), path)
    if optimizer is not None:
        _check_optimizer(obj.get("optimizer"), optimizer, path)
    diag = diagnose_state_dict(model, state_dict)
    if not diag.ok:
        msg = f"cannot load {path} into {type(unwrap_model(model)).__name__}: {diag}"
        raise StateDictMismatchError(msg)
    parts = (unwrap_model(model), optimizer, scheduler, scaler)
    saved = (diag.state_dict, obj.get("optimizer"), obj.get("scheduler"), obj.get("scaler"))
    before, states = _state_dicts(*parts), random_states()
    touched: list[tuple[Any, Any]] = []
    try:
        for part, state, old in zip(parts, saved, before):
            if part is not None and state is not None:
                touched.append((part, old))  # before loading: a part that fails half-way is rolled back too
                part.load_state_dict(state)
        set_random_states(rng)
    except Exception as exc:
        for part, old in reversed(touched):
            with contextlib.suppress(Exception):  # the error worth reporting is the first one
                part.load_state_dict(old)
        set_random_states(states)
        raise _bad(path, f"restoring it failed ({type(exc).__name__}: {excerpt(str(exc))})") from exc
    return Checkpoint(
        epoch=epoch,
        history=history,
        extra=obj.get("extra"),
        callbacks=obj.get("callbacks"),
        loader=obj.get("loader"),
        format_version=CHECKPOINT_VERSION,  # read_payload refused any other version
    )
