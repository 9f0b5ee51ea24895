"""Training checkpoints: everything needed to resume a run after an epoch, written atomically.

A checkpoint embeds the model file's payload (see :mod:`cifarkit.files`), the optimizer state,
the epoch, the :class:`~cifarkit.history.History` and the CPU random state, and loads with
``torch.load(weights_only=True)``.

May import: cifarkit.errors, cifarkit.files, cifarkit.diagnosis, cifarkit.persist, cifarkit.history.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarkit.diagnosis import apply_state_dict
from cifarkit.errors import NotACheckpointError
from cifarkit.files import CHECKPOINT_FORMAT, FORMAT_VERSION, atomic_write, read_payload, weights_and_record
from cifarkit.history import History
from cifarkit.persist import check_finite_weights, state_payload

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

PathLike = str | os.PathLike[str]


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

    The file holds the model payload (as :func:`~cifarkit.persist.save`), the optimizer state,
    the epoch, the :class:`~cifarkit.history.History`, ``extra`` (plain containers, numbers,
    strings, tensors) and the CPU random state, and loads with ``torch.load(weights_only=True)``.

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
        "format_version": FORMAT_VERSION,
        "model": state_payload(model),
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
    obj = read_payload(path)
    if not (isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT):
        msg = (
            f"{path} is not a training checkpoint (it has no optimizer state or epoch); "
            "write one with save_checkpoint, or load a model file with cifarkit.load"
        )
        raise NotACheckpointError(msg)
    state_dict, _ = weights_and_record(obj["model"], path)
    apply_state_dict(model, state_dict, strict=True, source=os.fspath(path))
    if optimizer is not None:
        optimizer.load_state_dict(obj["optimizer"])
    rng = (obj.get("rng") or {}).get("torch")
    if isinstance(rng, torch.Tensor):
        torch.set_rng_state(rng)
    history = History.from_dict(obj["history"]) if obj.get("history") else None
    return Checkpoint(epoch=int(obj["epoch"]), history=history, extra=obj.get("extra"))
