"""Fine-tuning a pretrained network in two phases with discriminative learning rates
(:func:`fine_tune`, as fastai's ``fine_tune``).

:func:`fine_tune` is :func:`~cifarkit.training.loop.train_loop` with three objects: an ``AdamW``
whose parameter groups run from the earliest layers to the head, a schedule that is one cycle per
phase (:class:`~cifarkit.training.schedules.TwoPhaseSchedule`), and the :class:`FineTune`
callback, which freezes the features for the first phase and unfreezes them for the second.
Checkpoints, DDP, callbacks and mixed precision are ``train_loop``'s own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from cifarkit.data.loader import Batch, check_not_empty
from cifarkit.device import Amp, resolve_device, unwrap_model
from cifarkit.display import Progress
from cifarkit.distributed import context, shard_data
from cifarkit.errors import InvalidOptionError, check_positive_int
from cifarkit.history import History
from cifarkit.losses import LossFn
from cifarkit.models.pretrained import head_of
from cifarkit.models.zoo import feature_norms, freeze_features, layer_groups
from cifarkit.training.loop import train_loop
from cifarkit.training.schedules import TwoPhaseSchedule
from cifarkit.writing import PathLike

__all__ = ["FROZEN", "UNFROZEN", "FineTune", "fine_tune"]

#: The phase names :class:`FineTune` writes into ``EpochStats.phase``.
FROZEN, UNFROZEN = "frozen", "unfrozen"


class FineTune:
    """The callback of :func:`fine_tune`: the features frozen for ``freeze_epochs`` epochs, then
    every layer trainable. Frozen means ``requires_grad=False`` *and* batch-norm layers kept in
    eval mode (a forward pre-hook each), so that every feature weight and running statistic stays
    bit-identical. It labels each epoch's ``phase`` (``"frozen"`` / ``"unfrozen"``) and, when
    training ends however it ends, removes its hooks and gives every parameter back the
    ``requires_grad`` it had.

    Args:
        freeze_epochs: Epochs of the first phase.
        head: The classifier block's name (:func:`head_of`).
    """

    def __init__(self, freeze_epochs: int, head: str) -> None:
        self.freeze_epochs = check_positive_int("freeze_epochs", freeze_epochs, minimum=0)
        self.head = head
        self._model: nn.Module | None = None
        self._flags: list[bool] = []
        self._hooks: list[Any] = []

    def set_model(self, model: nn.Module) -> None:
        """Remember the model and the ``requires_grad`` of its parameters."""
        self._model = model
        self._flags = [p.requires_grad for p in model.parameters()]

    def on_epoch_start(self, epoch: int, history: History) -> None:
        """Put the model in the phase of this epoch (after a resume: the checkpoint's)."""
        self._enter(epoch)

    def on_epoch_end(self, epoch: int, history: History) -> None:
        """Label the epoch's phase."""
        history.epochs[-1].phase = FROZEN if epoch < self.freeze_epochs else UNFROZEN

    def on_train_end(self, history: History) -> None:
        """Give back what the phases took, however training ended (completed, stopped, raised,
        interrupted): every parameter's ``requires_grad`` from before, and no hook left behind."""
        self._release()
        if self._model is not None:
            for p, flag in zip(self._model.parameters(), self._flags, strict=True):
                p.requires_grad_(flag)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the phase boundary, checked on resume."""
        return {"freeze_epochs": self.freeze_epochs, "head": self.head}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint written with other phases."""
        if state != self.state_dict():
            msg = (
                f"the checkpoint was written by fine_tune with {state}, not {self.state_dict()}: "
                "resume with the same freeze_epochs (and head), or start a new checkpoint file"
            )
            raise InvalidOptionError(msg)

    def _enter(self, epoch: int) -> None:
        if self._model is None:
            return
        self._release()
        frozen = epoch < self.freeze_epochs
        freeze_features(self._model, self.head, frozen=frozen)
        norms = feature_norms(self._model, self.head) if frozen else []
        self._hooks = [norm.register_forward_pre_hook(_keep_in_eval) for norm in norms]

    def _release(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _keep_in_eval(module: nn.Module, args: object) -> None:
    module.train(False)  # a frozen batch norm normalizes with its running statistics, and keeps them


def _steps_per_epoch(data: Iterable[Batch], device: torch.device, accumulate: int) -> int:
    shard = shard_data(data, context(None, device), pad=True)
    if not hasattr(shard, "__len__"):
        msg = (
            f"fine_tune plans its schedule from the number of batches, and a {type(data).__name__} "
            "has no len(): pass a TensorLoader, a DataLoader or a list of batches"
        )
        raise InvalidOptionError(msg)
    return max(1, math.ceil(len(shard) / accumulate))  # type: ignore[arg-type]


def fine_tune(
    model: nn.Module,
    data: Iterable[Batch],
    *,
    epochs: int,
    freeze_epochs: int = 1,
    lr: float = 1e-3,
    lr_mult: float = 10.0,
    eval_data: Iterable[Batch] | None = None,
    callbacks: Sequence[object] = (),
    checkpoint: PathLike | None = None,
    head: str | None = None,
    weight_decay: float = 0.01,
    loss_fn: LossFn | None = None,
    device: str | torch.device = "auto",
    amp: Amp = False,
    accumulate: int = 1,
    max_grad_norm: float | None = None,
    progress: Progress = True,
) -> History:
    """Fine-tune a pretrained classifier in two phases, as fastai's ``fine_tune``.

    Phase 1, ``freeze_epochs`` epochs: only the head (the classifier block) learns, on a one-cycle
    schedule peaking at ``lr``; every feature weight and batch-norm statistic stays bit-identical.
    Phase 2, ``epochs`` epochs: everything learns, on a new cycle, with discriminative learning
    rates: the head peaks at ``lr``, the earliest layers at ``lr / lr_mult``, the groups between
    them spaced evenly on a log scale (:func:`~cifarkit.models.zoo.layer_groups` of the
    :func:`~cifarkit.models.head_of`).
    The optimizer is ``AdamW`` over those groups. One :class:`~cifarkit.history.History` covers
    both phases; each epoch's ``phase`` says which it was.

    Args:
        model: From :func:`cifarkit.adapt` / :func:`cifarkit.adapt_vgg16`, or any classifier
            with ``head=`` naming its classifier module.
        data: Training batches (a ``TensorLoader``, a ``DataLoader``: something with ``len()``).
        epochs: Epochs of phase 2 (all layers).
        freeze_epochs: Epochs of phase 1 (the head only); 0 skips it.
        lr: Peak learning rate of the head (see :func:`lr_find`).
        lr_mult: How many times lower the earliest layers' peak is in phase 2.
        eval_data: Evaluated after every epoch, as in :func:`~cifarkit.training.loop.train_loop`.
        callbacks: More callbacks, after the :class:`FineTune` one.
        checkpoint: As in ``train_loop``: a checkpoint written in either phase resumes in that
            phase, bit-identical on the CPU.
        head: The classifier module's name, for models :func:`cifarkit.adapt` did not build.
        weight_decay: ``AdamW``'s decoupled weight decay.
        loss_fn: As in ``train_loop`` (default: cross-entropy).
        device: As in ``train_loop``; under ``torchrun`` the model is wrapped in DDP again when
            the features unfreeze, so what trains is what is kept in sync.
        amp: Mixed precision, as in ``train_loop``.
        accumulate: Batches per optimizer step, as in ``train_loop`` (the schedule counts steps).
        max_grad_norm: Gradient clipping, as in ``train_loop``.
        progress: As in ``train_loop``.

    Raises:
        InvalidOptionError: an unknown head, ``lr``/``lr_mult`` not positive, data without
            ``len()``, or a checkpoint written with other phases.

    Example:
        >>> from cifarkit import adapt, synthetic_cifar10
        >>> model = adapt("mobilenet_v3_small")
        >>> data = synthetic_cifar10(64).loader(batch_size=32, seed=0)
        >>> history = fine_tune(model, data, epochs=1, device="cpu", progress=False)
        >>> [e.phase for e in history.epochs]
        ['frozen', 'unfrozen']
    """
    check_positive_int("epochs", epochs, minimum=0)
    check_positive_int("freeze_epochs", freeze_epochs, minimum=0)
    check_positive_int("accumulate", accumulate)
    for name, value in (("lr", lr), ("lr_mult", lr_mult)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            msg = f"{name} must be a positive number, got {value!r}"
            raise InvalidOptionError(msg)
    check_not_empty(data, "training data")
    inner = unwrap_model(model)
    head_name, depth = head_of(inner, head)
    groups = layer_groups(inner, head_name, depth)
    last = len(groups) - 1
    peaks = [lr * lr_mult ** (i / last - 1) for i in range(last + 1)]
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": peak, "name": name} for (name, params), peak in zip(groups, peaks, strict=True)],
        lr=lr, weight_decay=weight_decay,
    )  # fmt: skip
    steps = _steps_per_epoch(data, resolve_device(device), accumulate)
    schedule = TwoPhaseSchedule(optimizer, frozen_steps=freeze_epochs * steps, unfrozen_steps=epochs * steps)
    return train_loop(
        model, data, epochs=freeze_epochs + epochs, optimizer=optimizer, scheduler=schedule, loss_fn=loss_fn,
        device=device, eval_data=eval_data, amp=amp, accumulate=accumulate, max_grad_norm=max_grad_norm,
        checkpoint=checkpoint, progress=progress, callbacks=[FineTune(freeze_epochs, head_name), *callbacks],
    )  # fmt: skip
