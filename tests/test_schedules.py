"""Learning-rate schedules: torch's own schedulers, stepped when they should be, checked early."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR

from cifarkit import build_cnn, cosine, one_cycle, synthetic_cifar10, train_loop
from cifarkit.errors import InvalidOptionError
from cifarkit.training.schedules import check_scheduler, interval_of, step_every


def loader(n: int = 128, **kw: Any) -> Any:
    return synthetic_cifar10(n, seed=0).loader(batch_size=32, seed=0, **kw)


def test_one_cycle_is_stepped_after_every_optimizer_step() -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = one_cycle(optimizer, max_lr=0.1, epochs=3, steps_per_epoch=4)
    history = train_loop(model, loader(), epochs=3, optimizer=optimizer, scheduler=schedule, device="cpu",
                         progress=False)  # fmt: skip
    # The same schedule stepped by hand 4 times per epoch gives the learning rate at each epoch's end.
    reference_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    reference = OneCycleLR(reference_opt, max_lr=0.1, total_steps=12)
    expected = []
    for _ in range(3):
        for _ in range(4):
            reference_opt.step()
            reference.step()
        expected.append(reference_opt.param_groups[0]["lr"])
    assert history.column("lr") == [[pytest.approx(lr)] for lr in expected]
    assert schedule.last_epoch == 12


def test_cosine_warms_up_then_decays() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = cosine(optimizer, epochs=4, steps_per_epoch=10, warmup_epochs=1)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(1.0, rel=1e-3)
    assert lrs.index(max(lrs)) == 10 and lrs[-1] < 0.01  # peak after warm-up, near 0 at the end
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(lrs[10:]))  # decays monotonically
    with pytest.raises(InvalidOptionError, match="warmup_epochs"):
        cosine(optimizer, epochs=2, steps_per_epoch=10, warmup_epochs=2)


def test_per_epoch_and_plateau_schedulers() -> None:
    torch.manual_seed(0)
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = train_loop(model, loader(), epochs=3, optimizer=optimizer, scheduler=StepLR(optimizer, 1, gamma=0.5),
                         device="cpu", progress=False)  # fmt: skip
    assert history.column("lr") == [[0.1], [0.05], [0.025]]  # the rate each epoch trained with
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the figure stays flat
    plateau = ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
    optimizer.param_groups[0]["lr"] = 0.0
    history = train_loop(model, loader(), epochs=2, optimizer=optimizer, scheduler=plateau, device="cpu",
                         progress=False)  # fmt: skip
    assert plateau.last_epoch == 2 and plateau.best == history.epochs[0].loss_mean  # no eval_data: the training loss


def test_interval_is_explicit_with_sensible_defaults() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert interval_of(one_cycle(optimizer, max_lr=0.1, epochs=1, steps_per_epoch=1)) == "batch"
    assert interval_of(StepLR(optimizer, 1)) == "epoch"
    assert interval_of(StepLR(optimizer, 1), "batch") == "batch"
    with pytest.raises(InvalidOptionError, match="ReduceLROnPlateau"):
        interval_of(ReduceLROnPlateau(optimizer), "batch")
    with pytest.raises(InvalidOptionError, match="interval='hourly'"):
        interval_of(StepLR(optimizer, 1), "hourly")  # type: ignore[arg-type]


def test_step_every_marks_when_train_loop_steps_a_scheduler() -> None:
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = step_every(StepLR(optimizer, 1, gamma=0.5), "batch")  # halve after every optimizer step
    history = train_loop(model, loader(), epochs=1, optimizer=optimizer, scheduler=schedule, device="cpu",
                         progress=False)  # fmt: skip
    steps = history.epochs[0].images // 32  # batches of 32
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**steps)
    assert interval_of(step_every(one_cycle(optimizer, max_lr=0.1, epochs=1, steps_per_epoch=1), "epoch")) == "epoch"
    with pytest.raises(InvalidOptionError, match="ReduceLROnPlateau"):
        step_every(ReduceLROnPlateau(optimizer), "batch")


def test_a_scheduler_on_another_optimizer_is_refused_before_training() -> None:
    model = build_cnn()
    before = model.sequential[0].weight.detach().clone()
    other = torch.optim.SGD(build_cnn().parameters(), lr=0.1)
    with pytest.raises(InvalidOptionError, match="built on another optimizer"):
        train_loop(model, loader(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                   scheduler=StepLR(other, 1), device="cpu", progress=False)  # fmt: skip
    assert torch.equal(model.sequential[0].weight, before)
    with pytest.raises(InvalidOptionError, match=r"must be a torch\.optim\.lr_scheduler"):
        check_scheduler("cosine", other)  # type: ignore[arg-type]


def test_two_phase_schedule_is_one_cycle_for_the_head_then_one_cycle_for_all_groups() -> None:
    from cifarkit.training.schedules import TwoPhaseSchedule, one_cycle_factor

    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (0.001, 0.01, 0.1)]
    optimizer = torch.optim.SGD(groups)
    schedule = TwoPhaseSchedule(optimizer, frozen_steps=8, unfrozen_steps=20)
    assert interval_of(schedule) == "batch"
    seen = []
    for _ in range(28):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    assert all(row[:2] == [0.0, 0.0] for row in seen[:8])  # phase 1: the features do not move
    assert seen[2][2] == pytest.approx(0.1)  # the head's peak, a quarter into phase 1
    assert seen[8 + 5] == pytest.approx([0.001, 0.01, 0.1])  # every group's peak in phase 2
    assert seen[8] == pytest.approx([lr * one_cycle_factor(0.0) for lr in (0.001, 0.01, 0.1)])
    state = schedule.state_dict()  # a resumed schedule continues where it was
    again = TwoPhaseSchedule(torch.optim.SGD([dict(g) for g in groups]), frozen_steps=8, unfrozen_steps=20)
    again.load_state_dict(state)
    assert again.last_epoch == 28
