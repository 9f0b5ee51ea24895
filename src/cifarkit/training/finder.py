"""The learning-rate finder (:func:`lr_find`): Leslie Smith's range test, as fastai's ``lr_find``
and Lightning's ``Tuner.lr_find``, that leaves everything as it found it, and the rate it suggests
(:func:`suggest_lr`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, overload

import torch
from torch import nn

from cifarkit.data.loader import Batch, check_not_empty
from cifarkit.device import Amp, amp_dtype, autocast, grad_scaler, move_batch, place_model, resolve_device, unwrap_model
from cifarkit.display import figure_png, new_figure, save_or_return
from cifarkit.errors import EmptyDataError, InvalidOptionError, MissingExtraError, check_positive_int
from cifarkit.files.checkpoints import random_states, set_random_states
from cifarkit.losses import CrossEntropyLoss, LossFn
from cifarkit.writing import PathLike

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # an optional extra: imported where a plot is drawn

__all__ = ["LRFindResult", "lr_find", "suggest_lr"]


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


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _channels_last(t: torch.Tensor) -> bool:
    return t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class _Snapshot:
    """Everything :func:`lr_find` may change, to put back exactly: taken before the model moves."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, data: object) -> None:
        self.model = copy.deepcopy(model.state_dict())
        self.placement = [(t.device, _channels_last(t)) for t in _tensors(model)]  # device and layout
        self.modes = [m.training for m in model.modules()]
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.random = random_states()
        state = getattr(data, "state_dict", None)
        self.loader = copy.deepcopy(state()) if callable(state) else None

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, data: object) -> None:
        model.load_state_dict(self.model)
        for t, (device, channels_last) in zip(_tensors(model), self.placement, strict=True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            t.data = t.data.to(device, memory_format=fmt)  # the same Parameter, back where it was
        for module, mode in zip(model.modules(), self.modes, strict=True):
            module.training = mode
        optimizer.load_state_dict(self.optimizer)  # after the move: its state follows the parameters
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
    finite. Afterwards the model's weights and buffers, their device and memory format, each
    module's train/eval mode, the optimizer's state and learning rates, the loader's state and
    every random state (torch, CUDA, Python's, NumPy's) are exactly what they were before: the run
    that follows starts as if the finder had never run.

    Args:
        model: The classifier to train (its trainable parameters).
        data: Training batches, cycled through as often as ``steps`` needs.
        start_lr: The sweep's first learning rate.
        end_lr: Its last (unless the loss diverges first).
        steps: Optimizer steps (each one batch).
        optimizer: The optimizer of the run to come (default: plain SGD over the trainable
            parameters, as :func:`~cifarkit.training.loop.train_loop`'s); every group gets the sweep's rate.
        loss_fn: Default: cross-entropy.
        device: ``"auto"`` or a device.
        amp: Mixed precision, as in ``train_loop``; fp16 steps through a gradient scaler, as there.

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
    if optimizer is None:
        optimizer = torch.optim.SGD([p for p in inner.parameters() if p.requires_grad], lr=start_lr)
    loss_fn = loss_fn or CrossEntropyLoss()
    snapshot = _Snapshot(inner, optimizer, data)
    fmt = place_model(inner, dev, None)
    scaler = grad_scaler(dev, dtype)  # fp16's small range needs loss scaling, as in training
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
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)  # skipped when the gradients overflowed fp16
                scaler.update()
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
