"""What a real run does around ``loss.backward()`` and ``optimizer.step()``: gradient accumulation,
fp16 loss scaling, gradient clipping and per-batch learning-rate schedules, in one small object
so that :func:`~cifarkit.train.train_one_epoch` still reads like the lesson.

May import: cifarkit.errors, cifarkit.schedules.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from cifarkit.errors import check_positive_int
from cifarkit.schedules import Scheduler

__all__ = ["OptimizerStep", "check_accumulate", "clip_or_measure"]


def check_accumulate(accumulate: object) -> None:
    """Raise :class:`~cifarkit.errors.InvalidOptionError` unless ``accumulate`` is a positive int.

    Example:
        >>> check_accumulate(4)
    """
    check_positive_int("accumulate", accumulate, unit="batches per optimizer step")


def clip_or_measure(params: Sequence[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """The global L2 norm of the gradients (before clipping), clipped to ``max_norm`` when given.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([3.0, 4.0])
        >>> float(clip_or_measure([w], 1.0)), [round(g, 4) for g in w.grad.tolist()]
        (5.0, [0.6, 0.8])
    """
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


class OptimizerStep:
    """Backward passes and optimizer steps for one epoch.

    ``backward(loss)`` adds ``loss / accumulate`` to the gradients (through the gradient scaler
    for fp16); once ``accumulate`` batches are in, ``step()`` unscales, measures and clips the
    gradient norm, steps the optimizer (the scaler skips a step whose gradients overflowed), and
    steps a per-batch scheduler. A last, partial group is stepped too, its gradients rescaled to
    the mean over the batches it has.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> step = OptimizerStep(opt, list(model.parameters()), accumulate=2)
        >>> step.backward(model(torch.ones(1, 2)).sum()); step.ready
        False
        >>> step.backward(model(torch.ones(1, 2)).sum()); step.ready
        True
        >>> norm = step.step(); step.pending, step.optimizer_steps
        (0, 1)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        *,
        accumulate: int = 1,
        max_grad_norm: float | None = None,
        scaler: torch.amp.GradScaler | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        check_accumulate(accumulate)
        self.optimizer = optimizer
        self.params = list(params)
        self.accumulate = accumulate
        self.max_grad_norm = max_grad_norm
        self.scaler = scaler
        self.scheduler = scheduler
        self.pending = 0  # batches whose gradients are summed but not yet stepped
        self.optimizer_steps = 0

    @property
    def ready(self) -> bool:
        """True once ``accumulate`` batches are in: time to step."""
        return self.pending >= self.accumulate

    def backward(self, loss: torch.Tensor) -> None:
        """Add this batch's gradients: of ``loss / accumulate``, scaled up for fp16."""
        part = loss / self.accumulate if self.accumulate > 1 else loss
        (self.scaler.scale(part) if self.scaler is not None else part).backward()
        self.pending += 1

    def step(self) -> torch.Tensor:
        """Step the optimizer with the gradients summed so far; return their norm (before clipping)."""
        if 0 < self.pending < self.accumulate:  # the last, partial group: the mean over its batches
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(self.accumulate / self.pending)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip and measure the true gradients
        norm = clip_or_measure(self.params, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the gradients overflowed fp16
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            with warnings.catch_warnings():  # a scaler's skipped first step makes torch warn: expected
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                self.scheduler.step()
        self.pending = 0
        self.optimizer_steps += 1
        return norm
