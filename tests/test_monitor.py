"""TensorBoard logging and history.json, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarkit import History, build_cnn, one_cycle, synthetic_cifar10, train_loop
from cifarkit.cli import main
from cifarkit.errors import MissingExtraError


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, History]:
    log_dir = tmp_path_factory.mktemp("runs") / "exp1"
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    optimizer = torch.optim.SGD([{"params": model.sequential[:3].parameters(), "lr": 0.02},
                                 {"params": model.sequential[3:].parameters()}], lr=0.01)  # fmt: skip
    history = train_loop(model, synthetic_cifar10(128, seed=0).loader(batch_size=32, seed=0), epochs=3,
                         optimizer=optimizer, eval_data=synthetic_cifar10(64, seed=1).loader(shuffle=False),
                         device="cpu", progress=False, log_dir=log_dir)  # fmt: skip
    return log_dir, history


def test_every_scalar_equals_the_history(run: tuple[Path, History]) -> None:
    log_dir, history = run
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    expected = {"loss/sum": "loss_sum", "loss/mean": "loss_mean", "loss/eval": "eval_loss",
                "accuracy/train": "train_accuracy", "accuracy/eval": "eval_accuracy",
                "speed/images_per_second": "images_per_second", "speed/seconds": "seconds",
                "grad/total_norm": "grad_norm"}  # fmt: skip
    assert set(expected) | {"optim/lr", "optim/lr_group1"} <= set(tags["scalars"])
    for tag, field in expected.items():
        points = events.Scalars(tag)
        assert [p.step for p in points] == [1, 2, 3]
        for point, value in zip(points, history.column(field)):
            assert point.value == pytest.approx(value, rel=1e-6)
    assert [p.value for p in events.Scalars("optim/lr")] == pytest.approx([0.02] * 3)
    assert [p.value for p in events.Scalars("optim/lr_group1")] == pytest.approx([0.01] * 3)
    assert "data/first_batch" in tags["images"]
    assert tags["graph"] is True


def test_history_json_round_trips(run: tuple[Path, History]) -> None:
    log_dir, history = run
    assert History.from_json(log_dir / "history.json") == history
    assert not list(log_dir.glob(".history.json.*"))  # atomic: no temporaries left


def test_plot_command_writes_the_curves(run: tuple[Path, History], tmp_path: Path) -> None:
    log_dir, _ = run
    out = tmp_path / "curves.png"
    assert main(["plot", str(log_dir), "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1000, 400)
    assert main(["plot", str(tmp_path / "nothing")]) == 1


def test_missing_tensorboard_fails_before_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    model = build_cnn()
    before = model.sequential[0].weight.detach().clone()
    with pytest.raises(MissingExtraError, match=r"pip install 'cifarkit\[tensorboard\]'"):
        train_loop(model, synthetic_cifar10(64).loader(), device="cpu", progress=False, log_dir=tmp_path / "r")
    assert torch.equal(model.sequential[0].weight, before)  # not a single step was taken


def test_a_schedule_is_logged_after_every_optimizer_step(tmp_path: Path) -> None:
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = synthetic_cifar10(128, seed=0).loader(batch_size=32, seed=0)
    schedule = one_cycle(optimizer, max_lr=0.1, epochs=2, steps_per_epoch=len(data))
    lrs = []
    optimizer.register_step_post_hook(
        lambda opt, *_: lrs.append(opt.param_groups[0]["lr"])
    )  # before the schedule steps
    train_loop(model, data, epochs=2, optimizer=optimizer, scheduler=schedule, device="cpu", progress=False,
               log_dir=tmp_path / "run")  # fmt: skip
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    events.Reload()
    points = events.Scalars("optim/lr_step")
    assert [p.step for p in points] == list(range(1, 9))
    assert [p.value for p in points] == pytest.approx([*lrs[1:], schedule.get_last_lr()[0]], rel=1e-6)
