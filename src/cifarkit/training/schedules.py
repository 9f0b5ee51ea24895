"""Learning-rate schedules: the two every CIFAR recipe uses, built on torch's own schedulers, the
two-phase one of fine-tuning, and when a scheduler is stepped (after every optimizer step, or
once per epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CyclicLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
)

from cifarkit.errors import InvalidOptionError, check_choice, check_positive_int

__all__ = [
    "Interval",
    "Scheduler",
    "TwoPhaseSchedule",
    "check_scheduler",
    "cosine",
    "interval_of",
    "one_cycle",
    "one_cycle_factor",
    "step_every",
]

Scheduler = LRScheduler | ReduceLROnPlateau
#: ``"batch"``: ``scheduler.step()`` after every optimizer step; ``"epoch"``: once per epoch.
Interval = Literal["auto", "batch", "epoch"]
_MARK = "_cifarkit_interval"  # set by the builders below on the schedulers they make


def _positive(name: str, value: object) -> int:
    return check_positive_int(name, value)


def one_cycle(
    optimizer: torch.optim.Optimizer, *, max_lr: float, epochs: int, steps_per_epoch: int, **options: object
) -> OneCycleLR:
    """``torch.optim.lr_scheduler.OneCycleLR`` over ``epochs * steps_per_epoch`` optimizer steps.

    Stepped after every optimizer step (``train_loop`` does that by itself). ``options`` go to
    ``OneCycleLR`` (``pct_start``, ``div_factor``, ...).

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
        >>> schedule = one_cycle(opt, max_lr=0.1, epochs=2, steps_per_epoch=5)
        >>> schedule.total_steps, round(opt.param_groups[0]["lr"], 4)
        (10, 0.004)
    """
    total = _positive("epochs", epochs) * _positive("steps_per_epoch", steps_per_epoch)
    scheduler = OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, **options)  # type: ignore[arg-type]
    setattr(scheduler, _MARK, "batch")
    return scheduler


def cosine(
    optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0
) -> LRScheduler:
    """Cosine decay to 0 over the run, after a linear warm-up from 1% of the learning rate.

    Built from torch's ``LinearLR``, ``CosineAnnealingLR`` and ``SequentialLR``; stepped after every
    optimizer step.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> schedule = cosine(opt, epochs=3, steps_per_epoch=10, warmup_epochs=1)
        >>> round(opt.param_groups[0]["lr"], 4)
        0.001
    """
    steps = _positive("epochs", epochs) * _positive("steps_per_epoch", steps_per_epoch)
    if not isinstance(warmup_epochs, int) or not 0 <= warmup_epochs < epochs:
        msg = f"warmup_epochs must be an int in [0, epochs={epochs}), got {warmup_epochs!r}"
        raise InvalidOptionError(msg)
    warmup = warmup_epochs * steps_per_epoch
    decay = CosineAnnealingLR(optimizer, T_max=steps - warmup)
    scheduler: LRScheduler = decay
    if warmup:
        ramp = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
        scheduler = SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
    setattr(scheduler, _MARK, "batch")
    return scheduler


def step_every(scheduler: Scheduler, interval: Literal["batch", "epoch"]) -> Scheduler:
    """Mark when ``train_loop`` steps ``scheduler``: after every optimizer step (``"batch"``) or
    once per epoch; returns it. Without a mark, :func:`interval_of` decides.

    Raises:
        InvalidOptionError: an unknown interval, or ``"batch"`` for ``ReduceLROnPlateau``.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> interval_of(step_every(torch.optim.lr_scheduler.ExponentialLR(opt, 0.99), "batch"))
        'batch'
    """
    check_choice("interval", interval, ("batch", "epoch"))
    interval_of(scheduler, interval)  # refuses "batch" for ReduceLROnPlateau
    setattr(scheduler, _MARK, interval)
    return scheduler


def interval_of(scheduler: Scheduler, interval: Interval = "auto") -> Literal["batch", "epoch"]:
    """When ``scheduler`` is stepped: ``interval`` itself, or for ``"auto"``: per batch for
    ``OneCycleLR``, ``CyclicLR`` and the builders here (as torch documents them), per epoch for
    every other scheduler and always for ``ReduceLROnPlateau`` (it steps on a figure).

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> interval_of(torch.optim.lr_scheduler.StepLR(opt, 10)), interval_of(ReduceLROnPlateau(opt))
        ('epoch', 'epoch')
    """
    check_choice("interval", interval, ("auto", "batch", "epoch"))
    if isinstance(scheduler, ReduceLROnPlateau):
        if interval == "batch":
            msg = "ReduceLROnPlateau steps on a per-epoch figure: step it every 'epoch'"
            raise InvalidOptionError(msg)
        return "epoch"
    if interval != "auto":
        return interval
    marked = getattr(scheduler, _MARK, None)
    if marked in ("batch", "epoch"):
        return "batch" if marked == "batch" else "epoch"
    return "batch" if isinstance(scheduler, (OneCycleLR, CyclicLR)) else "epoch"


def check_scheduler(scheduler: Scheduler, optimizer: torch.optim.Optimizer) -> None:
    """Raise :class:`~cifarkit.errors.InvalidOptionError` unless ``scheduler`` drives ``optimizer``.

    Example:
        >>> a = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> b = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> check_scheduler(torch.optim.lr_scheduler.StepLR(a, 1), b)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cifarkit.errors.InvalidOptionError: the scheduler was built on another optimizer ...
    """
    if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
        msg = f"scheduler must be a torch.optim.lr_scheduler scheduler, got {type(scheduler).__name__}"
        raise InvalidOptionError(msg)
    if scheduler.optimizer is not optimizer:
        msg = (
            "the scheduler was built on another optimizer than the one training the model, so it "
            "would change nothing: build it on the optimizer you pass (scheduler = "
            "cifarkit.one_cycle(optimizer, ...))"
        )
        raise InvalidOptionError(msg)


def _cos(start: float, end: float, t: float) -> float:
    return end + (start - end) / 2 * (1 + math.cos(math.pi * t))


def one_cycle_factor(t: float, *, pct_start: float = 0.25, div: float = 25.0, final_div: float = 1e4) -> float:
    """The one-cycle curve at ``t`` in [0, 1] as a multiple of the peak (``OneCycleLR``'s shape):
    cosine up from ``1/div`` to 1 over ``pct_start``, then cosine down to ``1/(div*final_div)``.

    Example:
        >>> round(one_cycle_factor(0.0), 7), one_cycle_factor(0.25), round(one_cycle_factor(1.0), 7)
        (0.04, 1.0, 4e-06)
    """
    t = min(max(t, 0.0), 1.0)
    if t < pct_start:
        return _cos(1 / div, 1.0, t / pct_start)
    return _cos(1.0, 1 / (div * final_div), (t - pct_start) / (1 - pct_start))


@dataclass
class _GroupCurve:
    """One parameter group's factor over both phases (a callable object: ``LambdaLR`` saves it)."""

    first: int  # optimizer steps of phase 1
    second: int  # optimizer steps of phase 2
    head: bool  # trains in phase 1

    def __call__(self, step: int) -> float:
        if step < self.first:
            return one_cycle_factor(step / self.first) if self.head else 0.0
        return one_cycle_factor((step - self.first) / max(self.second, 1))


class TwoPhaseSchedule(LambdaLR):
    """One cycle over the frozen phase (the head alone at its peak), then one cycle over the
    unfrozen phase (every group at its own peak, its ``lr``); stepped after every optimizer step.

    Args:
        optimizer: Its groups' ``lr`` are their peaks; the last group is the head.
        frozen_steps: Optimizer steps of phase 1.
        unfrozen_steps: Optimizer steps of phase 2.

    Used by :func:`cifarkit.fine_tune`.

    Example:
        >>> groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (0.01, 0.1)]
        >>> schedule = TwoPhaseSchedule(torch.optim.SGD(groups), frozen_steps=4, unfrozen_steps=8)
        >>> [round(g["lr"], 4) for g in schedule.optimizer.param_groups]  # phase 1 starts: head only
        [0.0, 0.004]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, frozen_steps: int, unfrozen_steps: int) -> None:
        last = len(optimizer.param_groups) - 1
        curves = [_GroupCurve(frozen_steps, unfrozen_steps, i == last) for i in range(last + 1)]
        super().__init__(optimizer, lr_lambda=curves)  # type: ignore[arg-type]
        step_every(self, "batch")
