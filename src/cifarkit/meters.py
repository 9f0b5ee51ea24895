"""Running sums of one pass over the data, kept on the device and read once at the end.

Adding a batch launches a few tiny device ops and never waits for the device: the loss is
accumulated *detached* (the tutorial's ``sum_loss = sum_loss + result_loss`` keeps every step's
autograd graph alive) and nothing is converted to a Python number until :meth:`Meter.totals`,
which also sums the figures over ``torch.distributed`` ranks.

May import: cifarkit.distributed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from cifarkit.distributed import DistContext, all_max, all_sum

__all__ = ["Meter", "Totals"]


@dataclass(frozen=True)
class Totals:
    """A pass's figures as Python numbers, summed over ranks (``seconds``: the slowest rank's)."""

    loss_sum: float  # sum of the batch losses, divided by the world size (see Meter.totals)
    weighted_loss: float  # sum of batch loss x batch size
    correct: int
    images: int
    steps: int
    grad_norm_sum: float
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
        self.images = 0
        self.steps = 0
        self.started = time.perf_counter()
        self.first_step_seconds: float | None = None

    def add(
        self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, grad_norm: torch.Tensor | None = None
    ) -> None:
        """Count one batch: its mean ``loss``, ``(B, C)`` ``logits``, ``(B,)`` ``targets``."""
        batch = int(targets.shape[0])
        with torch.no_grad():
            detached = loss.detach().double()
            self.loss_sum += detached
            self.weighted += detached * batch
            self.correct += (logits.argmax(1) == targets).sum()
            if grad_norm is not None:
                self.grad_norm_sum += grad_norm.detach().double()
        if self.steps == 0:
            self.first_step_seconds = time.perf_counter() - self.started
        self.images += batch
        self.steps += 1

    def totals(self, ctx: DistContext) -> Totals:
        """Read the sums (one host sync) and add them up over ranks.

        Under DDP every rank's shard is padded to equal batches, so the mean of the ranks' batch
        losses is the global batch loss: ``loss_sum`` is divided by the world size and then equals
        the single-process figure over the same global batches.
        """
        sums = all_sum(
            ctx,
            [float(self.loss_sum), float(self.weighted), float(self.correct), float(self.images),
             float(self.steps), float(self.grad_norm_sum)],
        )  # fmt: skip
        seconds = all_max(ctx, time.perf_counter() - self.started)
        first_step = None if self.first_step_seconds is None else all_max(ctx, self.first_step_seconds)
        return Totals(
            loss_sum=sums[0] / ctx.world_size,
            weighted_loss=sums[1],
            correct=int(sums[2]),
            images=int(sums[3]),
            steps=int(sums[4]),
            grad_norm_sum=sums[5],
            seconds=seconds,
            first_step_seconds=first_step,
        )
