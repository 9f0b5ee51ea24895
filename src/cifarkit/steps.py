"""What a training step does besides the lesson's five lines, in two small objects so that
:func:`~cifarkit.train.train_one_epoch` still reads like the lesson.

- :class:`OptimizerStep`, around ``loss.backward()`` and ``optimizer.step()``: gradient
  accumulation, fp16 loss scaling, gradient clipping and per-batch learning-rate schedules.
- :class:`Meter` and :class:`ClassMeter`: running sums of one pass over the data, kept on the
  device and read once at the end. Adding a batch launches a few tiny device ops and never waits
  for the device: the loss is accumulated *detached* (the tutorial's
  ``sum_loss = sum_loss + result_loss`` keeps every step's autograd graph alive) and nothing is
  converted to a Python number until :meth:`Meter.totals`, which also sums the figures over
  ``torch.distributed`` ranks.

May import: cifarkit.distributed, cifarkit.errors, cifarkit.schedules.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cifarkit.distributed import DistContext, all_max, all_sum, all_sum_tensor
from cifarkit.errors import InvalidOptionError, check_positive_int
from cifarkit.schedules import Scheduler

__all__ = ["ClassCounts", "ClassMeter", "Meter", "OptimizerStep", "Totals", "check_accumulate", "clip_or_measure"]


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


@dataclass(frozen=True)
class Totals:
    """A pass's figures as Python numbers, summed over ranks (``seconds``: the slowest rank's)."""

    loss_sum: float  # sum of the batch losses, divided by the world size (see Meter.totals)
    weighted_loss: float  # sum of batch loss x batch size
    correct: int
    images: int
    batches: int  # batches counted (optimizer steps are counted by norm_steps)
    grad_norm_sum: float
    norm_steps: int  # optimizer steps whose gradient norm was finite
    seconds: float
    first_step_seconds: float | None

    @property
    def loss_mean(self) -> float:
        """Mean loss per image."""
        return self.weighted_loss / self.images

    @property
    def accuracy(self) -> float:
        """Share of images whose top class was right."""
        return self.correct / self.images

    @property
    def grad_norm(self) -> float | None:
        """Mean gradient norm over the optimizer steps (``None`` when none was counted)."""
        return self.grad_norm_sum / self.norm_steps if self.norm_steps else None


class Meter:
    """Accumulate loss, accuracy and gradient norms of batches on ``device``.

    Example:
        >>> meter = Meter(torch.device("cpu"))
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> meter.add(torch.tensor(0.5), logits, torch.tensor([0, 0]))
        >>> t = meter.totals(DistContext.single(torch.device("cpu")))
        >>> t.loss_sum, t.loss_mean, t.accuracy, t.images
        (0.5, 0.5, 0.5, 2)
    """

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.weighted = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.grad_norm_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.norm_steps = torch.zeros((), dtype=torch.int64, device=device)  # optimizer steps with a finite norm
        self.images = 0
        self.batches = 0
        self.started = time.perf_counter()
        self.first_step_seconds: float | None = None

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one batch: its mean ``loss``, ``(B, C)`` ``logits``, ``(B,)`` ``targets``."""
        batch = int(targets.shape[0])
        with torch.no_grad():
            detached = loss.detach().double()
            self.loss_sum += detached
            self.weighted += detached * batch
            self.correct += (logits.argmax(1) == targets).sum()
        if self.batches == 0:
            self.first_step_seconds = time.perf_counter() - self.started
        self.images += batch
        self.batches += 1

    def add_grad_norm(self, norm: torch.Tensor) -> None:
        """Count one optimizer step's gradient norm; a step a gradient scaler skipped (inf/nan
        norm) is left out, on the device, without a sync."""
        with torch.no_grad():
            finite = torch.isfinite(norm)
            self.grad_norm_sum += torch.where(finite, norm.detach().double(), 0.0)
            self.norm_steps += finite

    def totals(self, ctx: DistContext) -> Totals:
        """Read the sums (one host sync) and add them up over ranks.

        Under DDP every rank's shard is padded to equal batches, so the mean of the ranks' batch
        losses is the global batch loss: ``loss_sum`` is divided by the world size and then equals
        the single-process figure over the same global batches.
        """
        sums = all_sum(
            ctx,
            [float(self.loss_sum), float(self.weighted), float(self.correct), float(self.images),
             float(self.batches), float(self.grad_norm_sum), float(self.norm_steps)],
        )  # fmt: skip
        seconds = all_max(ctx, time.perf_counter() - self.started)
        first_step = None if self.first_step_seconds is None else all_max(ctx, self.first_step_seconds)
        return Totals(
            loss_sum=sums[0] / ctx.world_size,
            weighted_loss=sums[1],
            correct=int(sums[2]),
            images=int(sums[3]),
            batches=int(sums[4]),
            grad_norm_sum=sums[5],
            norm_steps=int(sums[6]),
            seconds=seconds,
            first_step_seconds=first_step,
        )


@dataclass(frozen=True)
class ClassCounts:
    """Per-class figures of a pass, summed over ranks: the confusion matrix and top-k hits."""

    confusion: torch.Tensor  # (C, C) int64 on the CPU: rows = true class, columns = predicted
    topk_hits: dict[int, int]

    @property
    def per_class_accuracy(self) -> list[float]:
        """Share of each class's images predicted as that class (``nan`` for a class never seen)."""
        totals = self.confusion.sum(1)
        return [float(self.confusion[c, c]) / int(n) if int(n) else float("nan") for c, n in enumerate(totals)]


class ClassMeter:
    """Accumulate a confusion matrix and top-k hits on the device (no host sync per batch).

    Example:
        >>> meter = ClassMeter(3, topk=(1, 2), device=torch.device("cpu"))
        >>> meter.add(torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]), torch.tensor([0, 1]))
        >>> counts = meter.totals(DistContext.single(torch.device("cpu")))
        >>> counts.confusion.tolist(), counts.topk_hits, counts.per_class_accuracy[:2]
        ([[1, 0, 0], [1, 0, 0], [0, 0, 0]], {1: 1, 2: 2}, [1.0, 0.0])
    """

    def __init__(self, num_classes: int, *, topk: tuple[int, ...], device: torch.device) -> None:
        bad = [k for k in topk if not isinstance(k, int) or not 1 <= k <= num_classes]
        if bad:
            msg = (
                f"topk={topk!r} asks for top-{bad[0]} accuracy, but the model has {num_classes} classes: "
                f"use values from 1 to {num_classes}"
            )
            raise InvalidOptionError(msg)
        self.num_classes = num_classes
        self.topk = tuple(sorted(set(topk)))
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        self.hits = torch.zeros(len(self.topk), dtype=torch.int64, device=device)

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one batch of ``(B, C)`` logits against ``(B,)`` class indices."""
        c = self.num_classes
        with torch.no_grad():
            valid = (targets >= 0) & (targets < c)  # ignore_index-style labels are not counted
            y, out = targets[valid], logits[valid]
            self.confusion += torch.bincount(y * c + out.argmax(1), minlength=c * c)
            ranked = out.topk(self.topk[-1], dim=1).indices == y[:, None]  # (B, kmax) bool
            found = ranked.cumsum(1).clamp_(max=1)  # 1 from the rank where the true class appears
            self.hits += found[:, [k - 1 for k in self.topk]].sum(0)

    def totals(self, ctx: DistContext) -> ClassCounts:
        """Read the counts once (summed over ranks under DDP)."""
        confusion = all_sum_tensor(ctx, self.confusion).view(self.num_classes, self.num_classes)
        hits = all_sum_tensor(ctx, self.hits)
        return ClassCounts(confusion, {k: int(h) for k, h in zip(self.topk, hits)})
