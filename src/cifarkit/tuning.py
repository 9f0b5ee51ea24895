"""Fine-tuning a pretrained network: the learning-rate finder (:func:`lr_find`) and two-phase
training with discriminative learning rates (:func:`fine_tune`, as fastai's ``fine_tune``).

:func:`fine_tune` is :func:`~cifarkit.train.train_loop` with three objects: an ``AdamW`` whose
parameter groups run from the earliest layers to the head, a schedule that is one cycle per
phase (:class:`~cifarkit.schedules.TwoPhaseSchedule`), and the :class:`FineTune` callback, which
freezes the features for the first phase and unfreezes them for the second. Checkpoints, DDP, callbacks and
mixed precision are ``train_loop``'s own.

May import: cifarkit.device, cifarkit.display, cifarkit.distributed, cifarkit.errors,
cifarkit.files, cifarkit.files.checkpoints, cifarkit.history, cifarkit.loader, cifarkit.losses,
cifarkit.models, cifarkit.models.zoo, cifarkit.schedules, cifarkit.train.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import torch
from torch import nn

from cifarkit.device import Amp, amp_dtype, autocast, move_batch, place_model, resolve_device, unwrap_model
from cifarkit.display import Progress, figure_png, new_figure, save_or_return
from cifarkit.distributed import context, shard_data
from cifarkit.errors import EmptyDataError, InvalidOptionError, MissingExtraError, check_positive_int
from cifarkit.files import PathLike
from cifarkit.files.checkpoints import random_states, set_random_states
from cifarkit.history import History
from cifarkit.loader import Batch, check_not_empty
from cifarkit.losses import CrossEntropyLoss, LossFn
from cifarkit.models import head_of
from cifarkit.models.zoo import feature_norms, freeze_features, layer_groups
from cifarkit.schedules import TwoPhaseSchedule
from cifarkit.train import train_loop

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # an optional extra: imported where a plot is drawn

__all__ = ["FineTune", "LRFindResult", "fine_tune", "lr_find", "suggest_lr"]

#: The phase names :class:`FineTune` writes into ``EpochStats.phase``.
FROZEN, UNFROZEN = "frozen", "unfrozen"


# --------------------------------------------------------------------------- the two phases


class FineTune:
    """The callback of :func:`fine_tune`: the features frozen for ``freeze_epochs`` epochs, then
    every layer trainable. Frozen means ``requires_grad=False`` *and* batch-norm layers kept in
    eval mode, so that every feature weight and running statistic stays bit-identical. It labels
    each epoch's ``phase`` (``"frozen"`` / ``"unfrozen"``) and, after training, gives every
    parameter back the ``requires_grad`` it had.

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

    def on_train_start(self, history: History) -> None:
        """Put the model in the phase of the next epoch (after a resume: the checkpoint's)."""
        self._enter(len(history.epochs))

    def on_epoch_end(self, epoch: int, history: History) -> None:
        """Label the epoch's phase; freeze or unfreeze for the next one."""
        history.epochs[-1].phase = FROZEN if epoch < self.freeze_epochs else UNFROZEN
        self._enter(epoch + 1)

    def on_train_end(self, history: History) -> None:
        """Unfreeze, and give each parameter its ``requires_grad`` from before."""
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
        eval_data: Evaluated after every epoch, as in :func:`~cifarkit.train.train_loop`.
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


# --------------------------------------------------------------------------- the learning-rate finder


def suggest_lr(lrs: Sequence[float], smoothed: Sequence[float]) -> float:
    """The learning rate :func:`lr_find` suggests: the middle of the longest valley.

    The valley is the longest run of steps over which the smoothed loss keeps falling (the
    longest strictly decreasing subsequence, so that a bump inside the fall does not cut it);
    the suggestion is the learning rate of its median point. A spike in the first steps adds at
    most one point to the valley, so it moves the suggestion by at most one step, where a
    steepest-slope rule would jump to the spike.

    Raises:
        InvalidOptionError: fewer than 2 points, or lists of different lengths.

    Example:
        >>> lrs = [10 ** (i / 4 - 6) for i in range(21)]
        >>> losses = [9, 2.3] + [2.3 - 0.1 * i for i in range(12)] + [1.3 + i for i in range(7)]
        >>> f"{suggest_lr(lrs, losses):.1e}"
        '5.6e-05'
    """
    n = len(smoothed)
    if n < 2 or len(lrs) != n:
        msg = f"suggest_lr needs at least 2 points and as many rates as losses, got {len(lrs)} and {n}"
        raise InvalidOptionError(msg)
    length, before = [1] * n, [-1] * n  # longest falling run ending at i, and its previous point
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and length[j] + 1 > length[i]:
                length[i], before[i] = length[j] + 1, j
    point, valley = max(range(n), key=lambda i: (length[i], -i)), []
    while point >= 0:
        valley.append(point)
        point = before[point]
    return float(lrs[sorted(valley)[len(valley) // 2]])


@dataclass
class LRFindResult:
    """What :func:`lr_find` measured: one loss per learning rate, and the suggestion.

    Attributes:
        lrs: The learning rate of each step.
        losses: The raw loss of each step.
        smoothed: The exponentially smoothed, bias-corrected loss (``beta`` 0.98, as fastai's).
        suggestion: :func:`suggest_lr` over ``lrs`` and ``smoothed``.
        stop_reason: Why the sweep ended: ``"completed"``, ``"diverged"`` (the smoothed loss
            passed four times its best) or ``"non-finite"``.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    stop_reason: str

    def __repr__(self) -> str:
        return (
            f"LRFindResult(suggestion={self.suggestion:.2e}, steps={len(self.lrs)}, "
            f"lr {self.lrs[0]:.1e} to {self.lrs[-1]:.1e}, {self.stop_reason})"
        )

    @overload
    def plot(self, path: None = None) -> Figure: ...

    @overload
    def plot(self, path: PathLike) -> Path: ...

    def plot(self, path: PathLike | None = None) -> Path | Figure:
        """The smoothed loss against the learning rate (log scale), the suggestion marked.

        Without ``path``: the figure (a notebook shows it as a picture); with: a PNG written
        there. Needs matplotlib (``pip install 'cifarkit[plot]'``).
        """
        fig = new_figure("LRFindResult.plot", figsize=(6, 4), dpi=100)
        ax = fig.subplots()
        ax.plot(self.lrs, self.losses, color="0.8", label="loss")
        ax.plot(self.lrs, self.smoothed, label="smoothed")
        ax.axvline(self.suggestion, color="C3", linestyle="--", label=f"suggestion {self.suggestion:.1e}")
        low, top = min(self.losses + self.smoothed), min(max(self.smoothed), 4 * min(self.smoothed))
        ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="learning-rate finder")
        ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))  # the sweep, not its blow-up
        ax.grid(alpha=0.3)
        ax.legend()
        return save_or_return(fig, path)

    def _repr_png_(self) -> bytes | None:
        try:
            fig = self.plot()
        except MissingExtraError:  # without matplotlib a notebook shows the text
            return None
        return figure_png(fig)


def _batches(data: Iterable[Batch]) -> Iterator[Batch]:
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            msg = "lr_find got data that yields no batches (a one-shot iterator is used up after one pass)"
            raise EmptyDataError(msg)


class _Snapshot:
    """Everything :func:`lr_find` may change, to put back exactly."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, data: object) -> None:
        self.model = copy.deepcopy(model.state_dict())
        self.modes = [m.training for m in model.modules()]
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.random = random_states()
        state = getattr(data, "state_dict", None)
        self.loader = copy.deepcopy(state()) if callable(state) else None

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, data: object) -> None:
        model.load_state_dict(self.model)
        for module, mode in zip(model.modules(), self.modes, strict=True):
            module.training = mode
        optimizer.load_state_dict(self.optimizer)
        set_random_states(self.random)
        if self.loader is not None:
            data.load_state_dict(self.loader)  # type: ignore[attr-defined]


def lr_find(
    model: nn.Module,
    data: Iterable[Batch],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn | None = None,
    device: str | torch.device = "auto",
    amp: Amp = False,
) -> LRFindResult:
    """Find a learning rate: train ``steps`` steps with the rate growing exponentially from
    ``start_lr`` to ``end_lr``, and record the loss of each (Leslie Smith's range test, as
    fastai's ``lr_find`` and Lightning's ``Tuner.lr_find``).

    The sweep stops early once the smoothed loss exceeds four times its best, or the loss is not
    finite. Afterwards the model's weights and buffers, each module's train/eval mode, the
    optimizer's state and learning rates, the loader's state and every random state (torch, CUDA,
    Python's, NumPy's) are exactly what they were before: the run that follows starts as if the
    finder had never run.

    Args:
        model: The classifier to train (its trainable parameters).
        data: Training batches, cycled through as often as ``steps`` needs.
        start_lr: The sweep's first learning rate.
        end_lr: Its last (unless the loss diverges first).
        steps: Optimizer steps (each one batch).
        optimizer: The optimizer of the run to come (default: plain SGD over the trainable
            parameters, as :func:`~cifarkit.train.train_loop`'s); every group gets the sweep's rate.
        loss_fn: Default: cross-entropy.
        device: ``"auto"`` or a device.
        amp: Mixed precision, as in ``train_loop``.

    Returns:
        An :class:`LRFindResult`: ``suggestion`` is the rate to train with, ``plot()`` the curve.

    Raises:
        InvalidOptionError: ``start_lr`` not below ``end_lr``, either not positive; ``steps < 2``.

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> data = synthetic_cifar10(256).loader(seed=0)
        >>> result = lr_find(build_cnn(activation="relu"), data, steps=20, device="cpu")
        >>> len(result.lrs) <= 20 and result.lrs[0] == 1e-7
        True
    """
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        msg = f"lr_find sweeps from start_lr up to end_lr, both positive: got {start_lr!r} and {end_lr!r}"
        raise InvalidOptionError(msg)
    check_positive_int("steps", steps, minimum=2)
    check_not_empty(data, "training data")
    dev = resolve_device(device)
    dtype = amp_dtype(amp, dev)
    inner = unwrap_model(model)
    fmt = place_model(inner, dev, None)
    if optimizer is None:
        optimizer = torch.optim.SGD([p for p in inner.parameters() if p.requires_grad], lr=start_lr)
    loss_fn = loss_fn or CrossEntropyLoss()
    snapshot = _Snapshot(inner, optimizer, data)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, reason = 0.0, math.inf, "completed"
    try:
        inner.train()
        batches = _batches(data)
        for i in range(steps):
            rate = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = rate
            x, y = move_batch(*next(batches), dev, fmt)
            optimizer.zero_grad(set_to_none=True)
            with autocast(dev, dtype):
                loss = loss_fn(inner(x), y)
            value = float(loss.detach())  # one read per step: the sweep decides on it
            if not math.isfinite(value):
                reason = "non-finite"
                break
            loss.backward()
            optimizer.step()
            average = 0.98 * average + 0.02 * value
            smooth = average / (1 - 0.98 ** (i + 1))
            lrs.append(rate)
            losses.append(value)
            smoothed.append(smooth)
            best = min(best, smooth)
            if smooth > 4 * best:
                reason = "diverged"
                break
    finally:
        optimizer.zero_grad(set_to_none=True)
        snapshot.restore(inner, optimizer, data)
    if len(lrs) < 2:
        msg = f"lr_find stopped after {len(lrs)} step(s) ({reason}): lower start_lr, or check the data"
        raise InvalidOptionError(msg)
    return LRFindResult(lrs, losses, smoothed, suggest_lr(lrs, smoothed), reason)
