"""The on-device meter against figures computed by hand."""

from __future__ import annotations

import pytest
import torch

from cifarkit.distributed import DistContext
from cifarkit.meters import Meter


def test_sums_match_a_hand_count() -> None:
    torch.manual_seed(0)
    meter = Meter(torch.device("cpu"))
    batches = [(torch.randn(5, 3), torch.randint(0, 3, (5,))), (torch.randn(2, 3), torch.randint(0, 3, (2,)))]
    losses = [torch.nn.functional.cross_entropy(x, y) for x, y in batches]
    for (x, y), loss in zip(batches, losses):
        meter.add(loss.clone().requires_grad_(), x, y)
        meter.add_grad_norm(torch.tensor(2.0))
    meter.add_grad_norm(torch.tensor(float("inf")))  # a step a gradient scaler skipped: not counted
    t = meter.totals(DistContext.single(torch.device("cpu")))
    correct = sum(int((x.argmax(1) == y).sum()) for x, y in batches)
    assert (t.images, t.steps, t.correct) == (7, 2, correct)
    assert t.loss_sum == pytest.approx(float(losses[0] + losses[1]))
    assert t.loss_mean == pytest.approx(float(losses[0] * 5 + losses[1] * 2) / 7)
    assert t.accuracy == correct / 7 and t.grad_norm_sum == 4.0 and t.norm_steps == 2 and t.grad_norm == 2.0
    assert t.seconds >= t.first_step_seconds >= 0  # type: ignore[operator]
    assert not meter.loss_sum.requires_grad  # detached: no autograd graph is kept
