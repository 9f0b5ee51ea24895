"""Training checkpoints: everything needed to resume a run after an epoch, written atomically.

A checkpoint embeds the model file's payload (see :mod:`cifarkit.files`), the optimizer state, the
epoch, the :class:`~cifarkit.history.History`, the scheduler's and gradient scaler's states, the
best-so-far figure and weights, the loader's seed and epoch, and every random state (torch's CPU
and CUDA generators, Python's ``random``, numpy's when it is imported), as tensors and plain
values only: it loads with ``torch.load(weights_only=True)``.

Format versions: 1 (cifarkit 0.1: model, optimizer, epoch, history, CPU random state) and 2
(everything above). Both resume; a newer version is refused with its number.

May import: cifarkit.errors, cifarkit.files, cifarkit.diagnosis, cifarkit.persist, cifarkit.history.
"""

from __future__ import annotations

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

from cifarkit.diagnosis import apply_state_dict
from cifarkit.errors import CorruptCheckpointError, NotACheckpointError
from cifarkit.files import CHECKPOINT_FORMAT, atomic_write, read_payload, weights_and_record
from cifarkit.history import History
from cifarkit.persist import check_finite_weights, state_payload

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "load_checkpoint",
    "random_states",
    "save_checkpoint",
    "set_random_states",
]

PathLike = str | os.PathLike[str]
CHECKPOINT_VERSION = 2


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` hands back besides what it restored in place."""

    epoch: int
    history: History | None
    extra: dict[str, Any] | None
    #: ``BestWeights.state_dict()`` of the run, if it tracked a figure.
    best: dict[str, Any] | None = None
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
    best: Mapping[str, Any] | None = None,
    loader: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically save everything needed to resume training after ``epoch`` epochs.

    The file holds the model payload (as :func:`~cifarkit.persist.save`), the optimizer state,
    the epoch, the :class:`~cifarkit.history.History`, the ``scheduler``'s and ``scaler``'s
    states, ``best`` (a ``BestWeights.state_dict()``), ``loader`` (the loader's seed and epoch),
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
        "best": dict(best) if best is not None else None,
        "loader": dict(loader) if loader is not None else None,
        "rng": random_states(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # serialise first: a failure here leaves no file behind
    data = buffer.getvalue()
    return atomic_write(path, lambda f: f.write(data))


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

    The random states are restored too, so training resumes exactly where it stopped.

    Raises:
        NotACheckpointError: the file is a model file, not a training checkpoint.
        CorruptCheckpointError: a checkpoint format newer than this cifarkit reads.
        StateDictMismatchError: the weights don't fit ``model``.
    """
    obj = read_payload(path)
    if not (isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT):
        msg = (
            f"{path} is not a training checkpoint (it has no optimizer state or epoch); "
            "write one with save_checkpoint, or load a model file with cifarkit.load"
        )
        raise NotACheckpointError(msg)
    version = obj.get("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        msg = (
            f"{path} is a checkpoint of format version {version!r}; this cifarkit resumes versions 1 to "
            f"{CHECKPOINT_VERSION}. Upgrade cifarkit (pip install -U cifarkit) to resume it"
        )
        raise CorruptCheckpointError(msg)
    state_dict, _ = weights_and_record(obj["model"], path)
    apply_state_dict(model, state_dict, strict=True, source=os.fspath(path))
    if optimizer is not None:
        optimizer.load_state_dict(obj["optimizer"])
    if scheduler is not None and obj.get("scheduler") is not None:
        scheduler.load_state_dict(obj["scheduler"])
    if scaler is not None and obj.get("scaler") is not None:
        scaler.load_state_dict(obj["scaler"])
    set_random_states(obj.get("rng") or {})
    history = History.from_dict(obj["history"]) if obj.get("history") else None
    return Checkpoint(
        epoch=int(obj["epoch"]),
        history=history,
        extra=obj.get("extra"),
        best=obj.get("best"),
        loader=obj.get("loader"),
        format_version=version,
    )
