"""Gradient inspection: grad_report and watch_step."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cifarkit import adapt_vgg16, build_cnn, cross_entropy, grad_report, watch_step


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


def test_grads_go_from_none_to_finite_values() -> None:
    model = build_cnn()
    before = grad_report(model)
    assert all(r.grad_is_none and r.grad_norm is None for r in before.rows)
    assert before.total_norm == 0.0
    x, y = batch()
    cross_entropy(model(x), y).backward()
    after = grad_report(model)
    assert len(after.rows) == 10
    for row in after.rows:
        assert not row.grad_is_none and row.requires_grad
        assert row.grad_norm is not None and math.isfinite(row.grad_norm) and row.grad_norm > 0
        assert row.grad_max_abs is not None and row.grad_mean_abs is not None
        assert row.grad_max_abs >= row.grad_mean_abs
    conv = after.row("sequential.0.weight")
    assert conv.shape == (32, 3, 5, 5)
    grad = model.sequential[0].weight.grad
    assert conv.grad_norm == pytest.approx(float(grad.norm()), rel=1e-6)


def test_total_norm_equals_clip_grad_norm() -> None:
    model = build_cnn(activation="relu")
    x, y = batch()
    cross_entropy(model(x), y).backward()
    report = grad_report(model)
    copies = []
    for p in model.parameters():
        q = p.detach().clone().requires_grad_(True)
        q.grad = p.grad.clone()  # type: ignore[union-attr]
        copies.append(q)
    expected = torch.nn.utils.clip_grad_norm_(copies, max_norm=1e9)
    assert float(expected) > 0
    assert report.total_norm == float(expected)


def test_frozen_parameters_stay_none() -> None:
    model = adapt_vgg16(freeze_features=True)
    x, y = batch()
    cross_entropy(model(x[:2]), y[:2]).backward()
    report = grad_report(model)
    for row in report.rows:
        assert row.grad_is_none == row.name.startswith("features.")
        assert row.requires_grad == (not row.name.startswith("features."))


def test_report_prints_an_aligned_table() -> None:
    model = build_cnn()
    text = str(grad_report(model))
    lines = text.splitlines()
    assert lines[0].startswith("parameter") and "grad L2" in lines[0]
    assert "None" in lines[2] and lines[-1].startswith("total grad norm")
    assert len({len(line) for line in lines[:-1]}) == 1  # aligned: every row the same width
    with pytest.raises(KeyError, match="no parameter named"):
        grad_report(model).row("nope")


@pytest.mark.parametrize("lr", [0.0, 0.05])
def test_watch_step_moves_weights_by_lr_times_grad(lr: float) -> None:
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = batch()
    report = watch_step(model, optimizer, cross_entropy(model(x), y))
    assert report.loss > 0 and report.total_grad_norm > 0
    for row in report.rows:
        assert row.grad_norm is not None
        if lr == 0:
            assert row.update_norm == 0.0
        else:
            assert row.update_norm == pytest.approx(lr * row.grad_norm, rel=1e-4)
            assert row.relative_update > 0
    text = str(report)
    assert text.startswith("loss:") and "||w1 - w0||" in text


def test_watch_step_clears_old_gradients_first() -> None:
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch()
    cross_entropy(model(x), y).backward()  # stale gradients that must not leak into the step
    clean = copy.deepcopy(model)
    clean_opt = torch.optim.SGD(clean.parameters(), lr=0.1)
    clean_opt.zero_grad()
    a = watch_step(model, optimizer, cross_entropy(model(x), y))
    b = watch_step(clean, clean_opt, cross_entropy(clean(x), y))
    assert [r.grad_norm for r in a.rows] == [r.grad_norm for r in b.rows]
