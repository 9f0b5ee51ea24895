"""Tests of cifarkit.steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarkit import build_cnn, synthetic_cifar10, train_loop, train_one_epoch
from cifarkit.distributed import DistContext
from cifarkit.errors import InvalidOptionError, NonFiniteLossError
from cifarkit.evaluation.metrics import FOLD_EVERY, Meter
from cifarkit.training.step import UNSTACKED_UP_TO, OptimizerStep, clip_or_measure


def batches(n: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = synthetic_cifar10(n * size, seed=3)
    x, y = data.images.float() / 255, data.labels
    return [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(n)]


def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_accumulating_four_batches_equals_one_batch_four_times_larger() -> None:
    small = batches(8, 8)
    big = [(torch.cat([x for x, _ in small[i : i + 4]]), torch.cat([y for _, y in small[i : i + 4]])) for i in (0, 4)]
    a, opt_a = fresh()
    b, opt_b = fresh()
    stats = train_one_epoch(a, small, opt_a, accumulate=4, device="cpu", channels_last=False)
    train_one_epoch(b, big, opt_b, device="cpu", channels_last=False)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert stats.images == 64 and opt_a.state[next(a.parameters())]["momentum_buffer"] is not None


def test_a_last_partial_group_is_stepped_as_its_mean() -> None:
    small = batches(5, 8)  # accumulate=2: groups of 2, 2 and a last one of 1
    a, opt_a = fresh()
    b, opt_b = fresh()
    steps = []
    opt_a.register_step_post_hook(lambda *args: steps.append(1))
    train_one_epoch(a, small, opt_a, accumulate=2, device="cpu", channels_last=False)
    groups = [(torch.cat([small[0][0], small[1][0]]), torch.cat([small[0][1], small[1][1]])),
              (torch.cat([small[2][0], small[3][0]]), torch.cat([small[2][1], small[3][1]])), small[4]]  # fmt: skip
    train_one_epoch(b, groups, opt_b, device="cpu", channels_last=False)
    assert len(steps) == 3
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_fp16_on_cpu_uses_a_scaler_whose_skipped_steps_are_not_errors() -> None:
    model, optimizer = fresh()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)  # overflows fp16 gradients at first: skips
    history = train_loop(model, synthetic_cifar10(256, seed=0).loader(batch_size=32, seed=0), epochs=1,
                         optimizer=optimizer, amp="fp16", device="cpu", progress=False)  # fmt: skip
    assert history.epochs[0].images == 256
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_one_epoch(model, batches(16, 16), optimizer, amp="fp16", scaler=scaler, device="cpu")
    assert scaler.get_scale() < 2.0**30  # it backed off: steps were skipped (measured: down to 2**18)...
    assert stats.images == 256  # ...and training went on without a NonFiniteLossError
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))  # later steps applied


def test_a_diverging_fp16_run_still_stops() -> None:
    model, _ = fresh()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e6)
    with pytest.raises(NonFiniteLossError, match="training diverged"):
        train_loop(model, synthetic_cifar10(512, seed=0).loader(batch_size=32, seed=0), epochs=3,
                   optimizer=optimizer, amp="fp16", device="cpu", progress=False)  # fmt: skip


def test_bad_options_are_refused_before_training() -> None:
    model, optimizer = fresh()
    before = model.sequential[0].weight.detach().clone()
    data = synthetic_cifar10(64).loader(seed=0)
    with pytest.raises(InvalidOptionError, match="accumulate must be a positive int"):
        train_loop(model, data, optimizer=optimizer, accumulate=0, device="cpu", progress=False)
    with pytest.raises(InvalidOptionError, match="amp='fp8' is not valid"):
        train_loop(model, data, optimizer=optimizer, amp="fp8", device="cpu", progress=False)  # type: ignore[arg-type]
    assert torch.equal(model.sequential[0].weight, before)


def test_step_object_counts_and_clips() -> None:
    w = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([w], lr=1.0)
    step = OptimizerStep(optimizer, [w], max_grad_norm=1.0)
    step.backward((w * torch.tensor([3.0, 4.0])).sum())
    assert step.ready and float(step.step()) == pytest.approx(5.0)
    assert w.detach().tolist() == pytest.approx([-0.6, -0.8]) and step.optimizer_steps == 1
    w.grad = None
    assert float(clip_or_measure([w], None)) == 0.0


def test_large_gradients_are_measured_by_rows_to_float64_accuracy() -> None:
    from cifarkit.training.step import NORM_ROW, NORM_ROWS_FROM

    torch.manual_seed(0)
    big = nn.Parameter(torch.zeros(NORM_ROWS_FROM + 5))  # rows and a remainder
    conv = nn.Parameter(torch.zeros(64, 64, 16, 16).to(memory_format=torch.channels_last))  # 1,048,576
    wide = nn.Parameter(torch.zeros(2048, 1024))  # its gradient a transpose: by rows too
    gaps = nn.Parameter(torch.zeros(1024, 1024))  # its gradient a slice with gaps: measured whole
    small = nn.Parameter(torch.zeros(7))
    big.grad = torch.randn(big.shape) * 3
    conv.grad = torch.randn(conv.shape).contiguous(memory_format=torch.channels_last)
    wide.grad = torch.randn(1024, 2048).t()
    gaps.grad = torch.randn(1024, 2048)[:, ::2]
    small.grad = torch.randn(7)
    params = [big, conv, wide, small]
    norms = clip_or_measure(params, None)
    grads = [p.grad for p in params if p.grad is not None]
    exact = float(torch.stack([g.double().square().sum() for g in grads]).sum().sqrt())
    assert float(torch.linalg.vector_norm(norms.double())) == pytest.approx(exact, rel=1e-6)
    rows = NORM_ROWS_FROM // NORM_ROW
    assert norms.shape == (4 * rows + 2,)  # by rows (the wide one has twice as many); the rest whole
    assert float(clip_or_measure(params, 1e9)) == pytest.approx(exact, rel=1e-4)  # torch's, when clipping
    with_gaps = clip_or_measure([gaps], None)
    assert with_gaps.shape == (1,) and torch.equal(with_gaps[0], torch.linalg.vector_norm(gaps.grad))  # torch's own


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
    assert (t.images, t.batches, t.correct) == (7, 2, correct)
    assert t.loss_sum == pytest.approx(float(losses[0] + losses[1]))
    assert t.loss_mean == pytest.approx(float(losses[0] * 5 + losses[1] * 2) / 7)
    assert t.accuracy == correct / 7 and t.grad_norm_sum == 4.0 and t.norm_steps == 2 and t.grad_norm == 2.0
    assert t.seconds >= t.first_step_seconds >= 0  # type: ignore[operator]
    assert not any(loss.requires_grad for loss in meter._losses)  # detached: no autograd graph is kept
    floats = Meter(torch.device("cpu"))  # the training step hands over the loss it already read
    for (x, y), loss in zip(batches, losses):
        floats.add(float(loss), x, y)
    same = floats.totals(DistContext.single(torch.device("cpu")))
    assert same.loss_sum == pytest.approx(t.loss_sum) and same.loss_mean == pytest.approx(t.loss_mean)
    per_tensor = Meter(torch.device("cpu"))  # norms per tensor (P,): the global norm is their vector norm
    per_tensor.add_grad_norm(torch.tensor([3.0, 4.0]))
    assert per_tensor.totals(DistContext.single(torch.device("cpu"))).grad_norm == pytest.approx(5.0)


def test_a_long_pass_is_folded_into_running_sums() -> None:
    """Past FOLD_EVERY batches the meter lets its kept batches go (flat memory) and its totals
    stay those of a hand count over every batch."""
    torch.manual_seed(0)
    meter = Meter(torch.device("cpu"))
    n = 2 * FOLD_EVERY + 37
    batches = [(torch.randn(3, 4), torch.randint(0, 4, (3,))) for _ in range(n)]
    losses = [torch.nn.functional.cross_entropy(x, y) for x, y in batches]
    for i, ((x, y), loss) in enumerate(zip(batches, losses)):
        meter.add(loss, x, y)
        meter.add_grad_norm(torch.tensor(float("nan") if i == 5 else 1.0))
        assert len(meter._predicted) < FOLD_EVERY and len(meter._norms) < FOLD_EVERY
    t = meter.totals(DistContext.single(torch.device("cpu")))
    correct = sum(int((x.argmax(1) == y).sum()) for x, y in batches)
    assert (t.images, t.batches, t.correct, t.norm_steps) == (3 * n, n, correct, n - 1)
    assert t.loss_sum == pytest.approx(sum(float(loss) for loss in losses), rel=1e-12) and t.grad_norm_sum == n - 1


def test_a_step_hands_the_meter_its_per_tensor_norms_unstacked_and_the_totals_are_the_same() -> None:
    """A small model's step returns torch's per-tensor norms as a list (no stack per step); the
    meter folds them, and steps of other forms, to the same global norms as a float64 count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    params = list(model.parameters())
    step = OptimizerStep(torch.optim.SGD(params, lr=0.1), params)
    meter, exact = Meter(torch.device("cpu")), []
    for _ in range(FOLD_EVERY + 3):  # a fold, then a rest
        step.backward(model(torch.randn(5, 6)).square().mean())
        exact.append(float(torch.stack([p.grad.double().square().sum() for p in params]).sum().sqrt()))
        norms = step.step()
        assert isinstance(norms, list) and len(norms) == len(params) and all(n.ndim == 0 for n in norms)
        meter.add_grad_norm(norms)
        model.zero_grad(set_to_none=True)
    t = meter.totals(DistContext.single(torch.device("cpu")))
    assert t.norm_steps == len(exact) and t.grad_norm_sum == pytest.approx(sum(exact), rel=1e-6)
    deep = nn.Sequential(*[nn.Linear(2, 2) for _ in range(UNSTACKED_UP_TO // 2 + 1)])  # 34 gradients
    deep_step = OptimizerStep(torch.optim.SGD(deep.parameters(), lr=0.1), list(deep.parameters()))
    deep_step.backward(deep(torch.ones(1, 2)).sum())
    stacked = deep_step.step()  # many gradients: stacked per step, so the meter keeps one tensor
    assert isinstance(stacked, torch.Tensor) and stacked.shape == (UNSTACKED_UP_TO + 2,)
    mixed = Meter(torch.device("cpu"))  # lists of two lengths, a vector, a total, a vector part
    for norms in ([torch.tensor(3.0), torch.tensor(4.0)], [torch.tensor(1.0)], torch.tensor([6.0, 8.0]),
                  torch.tensor(2.0), [torch.tensor([5.0, 12.0]), torch.tensor(0.0)]):  # fmt: skip
        mixed.add_grad_norm(norms)
    assert mixed.totals(DistContext.single(torch.device("cpu"))).grad_norm_sum == pytest.approx(5 + 1 + 10 + 2 + 13)
    graph = torch.tensor(3.0, requires_grad=True) * 1  # norms with a graph are detached when kept
    kept = Meter(torch.device("cpu"))
    kept.add_grad_norm([graph, torch.tensor(4.0)])
    assert (
        not any(n.requires_grad for n in kept._norms[0])
        and kept.totals(DistContext.single(torch.device("cpu"))).grad_norm == 5.0
    )
