"""Callbacks: EarlyStopping (best weights, stopping), TensorBoard, a user's own objects and functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cifarkit import History, build_cnn, load, one_cycle, synthetic_cifar10, train_loop
from cifarkit.cli import main
from cifarkit.errors import InvalidOptionError, MissingExtraError
from cifarkit.training.callbacks import Callbacks, EarlyStopping, TensorBoard


def data(n: int = 128, seed: int = 0) -> Any:
    return synthetic_cifar10(n, seed=seed).loader(batch_size=32, seed=seed)


def frozen_run(**options: Any) -> tuple[nn.Module, Any]:
    """lr 0 and the same batches in the same order every epoch: every figure is flat to the last
    bit, so nothing ever improves after the first epoch. (Shuffled batches would sum the same
    losses in another order, which moves the mean by a rounding error that depends on the CPU.)"""
    torch.manual_seed(0)
    model = build_cnn()
    flat = synthetic_cifar10(128, seed=0).loader(batch_size=32, shuffle=False)
    history = train_loop(model, flat, epochs=10, lr=0.0, device="cpu", progress=False, **options)
    return model, history


def test_patience_two_on_a_flat_figure_runs_three_epochs() -> None:
    _, history = frozen_run(callbacks=[EarlyStopping("loss_mean", patience=2)])
    assert len(history) == 3 and history.best_epoch == 1
    assert history.stop_reason == "early stopping: loss_mean did not improve for 2 epochs"
    _, history = frozen_run(callbacks=[EarlyStopping("loss_mean")])
    assert len(history) == 10 and history.stop_reason == "completed"


def test_the_model_ends_with_the_best_weights_whether_or_not_it_stopped(tmp_path: Path) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)  # large: eval accuracy jumps around
    history = train_loop(model, data(256), epochs=5, optimizer=optimizer, eval_data=data(128, seed=1),
                         device="cpu", progress=False,
                         callbacks=[lambda e, h: snapshots.append({k: v.clone() for k, v in model.state_dict().items()}),
                                    EarlyStopping("eval_accuracy", save_to=tmp_path / "best.pt")])  # fmt: skip
    accuracies = history.column("eval_accuracy")
    best = max(range(5), key=lambda i: (accuracies[i], -i))  # strictly better: the first maximum
    assert history.best_epoch == best + 1 and history.stop_reason == "completed"
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[best][key]), key
    saved = load(tmp_path / "best.pt").state_dict()
    assert all(torch.equal(saved[k], snapshots[best][k]) for k in saved)
    assert "best epoch" in repr(history).splitlines()[0]


def test_restore_best_false_keeps_the_last_weights() -> None:
    last: dict[str, torch.Tensor] = {}
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    train_loop(model, data(), epochs=3, lr=0.05, device="cpu", progress=False,
               callbacks=[EarlyStopping("loss_mean", mode="max", restore_best=False),
                          lambda e, h: last.update(model.state_dict())])  # fmt: skip
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())


def test_bad_options_are_named_before_training() -> None:
    model = build_cnn()
    before = model.sequential[0].weight.detach().clone()
    with pytest.raises(InvalidOptionError, match="does not record: pass eval_data="):
        train_loop(model, data(), callbacks=[EarlyStopping("eval_loss")], device="cpu", progress=False)
    assert torch.equal(model.sequential[0].weight, before)  # refused before the first step
    with pytest.raises(InvalidOptionError, match="monitor='val_loss' is not valid"):
        EarlyStopping("val_loss")
    for patience in (0, -1, True):
        with pytest.raises(InvalidOptionError, match="patience must be a positive int"):
            EarlyStopping("loss_mean", patience=patience)
    with pytest.raises(InvalidOptionError, match="mode='up'"):
        EarlyStopping("loss_mean", mode="up")  # type: ignore[arg-type]
    assert EarlyStopping("eval_accuracy").mode == "max"
    assert EarlyStopping("eval_loss").mode == "min"
    with pytest.raises(InvalidOptionError, match=r"lr=0\.1 would be ignored"):
        train_loop(model, data(), lr=0.1, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), progress=False)
    with pytest.raises(InvalidOptionError, match="callbacks must be objects with any of"):
        Callbacks([object()])


def test_state_round_trips_and_refuses_another_monitor() -> None:
    tracker = EarlyStopping("loss_mean", patience=3)
    state = tracker.state_dict()
    other = EarlyStopping("loss_mean", patience=3)
    other.load_state_dict(state)
    assert other.state_dict() == state
    with pytest.raises(InvalidOptionError, match="Resume with the same EarlyStopping"):
        EarlyStopping("train_accuracy").load_state_dict(state)


class Counter:
    """A user's callback with state: it counts epochs, and stops the run at `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.seen: list[int] = []
        self.stop_at = stop_at
        self.started = self.ended = 0

    def on_train_start(self, history: Any) -> None:
        self.started += 1

    def on_epoch_end(self, epoch: int, history: Any) -> bool:
        self.seen.append(epoch)
        return self.stop_at is not None and len(self.seen) >= self.stop_at

    def on_train_end(self, history: Any) -> None:
        self.ended += 1

    def state_dict(self) -> dict[str, Any]:
        return {"seen": list(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = list(state["seen"])


def test_a_users_callback_object_gets_every_hook_stops_and_resumes_with_its_state(tmp_path: Path) -> None:
    counter = Counter(stop_at=2)
    history = train_loop(build_cnn(), data(), epochs=5, device="cpu", progress=False, callbacks=[counter])
    assert counter.seen == [0, 1] and (counter.started, counter.ended) == (1, 1)
    assert len(history) == 2 and history.stop_reason == "stopped by a callback"

    first = Counter()
    train_loop(build_cnn(), data(), epochs=2, device="cpu", progress=False, callbacks=[first],
               checkpoint=tmp_path / "run.pt")  # fmt: skip
    resumed = Counter()
    train_loop(build_cnn(), data(), epochs=4, device="cpu", progress=False, callbacks=[resumed],
               checkpoint=tmp_path / "run.pt")  # fmt: skip
    assert first.seen == [0, 1] and resumed.seen == [0, 1, 2, 3]  # its state came back from the checkpoint


def test_early_stopping_resumes_bit_identical_and_a_stopped_run_stays_stopped(tmp_path: Path) -> None:
    def run(epochs: int, checkpoint: Path | None) -> tuple[nn.Module, Any, EarlyStopping]:
        torch.manual_seed(0)
        model = build_cnn(activation="relu")
        stopper = EarlyStopping("eval_loss", patience=2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # large: eval loss gets worse
        history = train_loop(model, data(256), epochs=epochs, optimizer=optimizer, eval_data=data(64, seed=1),
                             device="cpu", progress=False, callbacks=[stopper], checkpoint=checkpoint)  # fmt: skip
        return model, history, stopper

    whole_model, whole, whole_stopper = run(8, None)
    run(2, tmp_path / "ck.pt")  # interrupted after 2 epochs ...
    model, history, stopper = run(8, tmp_path / "ck.pt")  # ... and resumed
    assert history.column("eval_loss") == whole.column("eval_loss")
    assert history.stop_reason == whole.stop_reason and stopper.best_epoch == whole_stopper.best_epoch
    assert all(torch.equal(v, whole_model.state_dict()[k]) for k, v in model.state_dict().items())
    if whole.stop_reason.startswith("early stopping"):  # resuming a stopped run trains no further
        _, again, _ = run(8, tmp_path / "ck.pt")
        assert len(again) == len(whole) and again.stop_reason == whole.stop_reason


def test_a_plain_function_is_an_epoch_end_callback() -> None:
    seen: list[int] = []
    history = train_loop(build_cnn(), data(), epochs=3, device="cpu", progress=False,
                         callbacks=[lambda epoch, h: seen.append(epoch) or epoch == 1])  # fmt: skip
    assert seen == [0, 1] and len(history) == 2


# --------------------------------------------------------------------------- the protocol


class Recorder:
    """Every hook, recorded with its arguments; ``fail_at`` raises inside one of them."""

    def __init__(self, name: str, log: list[tuple[str, ...]], fail_at: str | None = None) -> None:
        self.name, self.log, self.fail_at = name, log, fail_at
        self.stop_reason_at_end: str | None = None

    def _hear(self, hook: str, *detail: Any) -> None:
        self.log.append((self.name, hook, *map(str, detail)))
        if hook == self.fail_at:
            raise RuntimeError(f"{self.name} fails in {hook}")

    def set_model(self, model: nn.Module) -> None:
        self._hear("set_model")

    def on_train_start(self, history: History) -> None:
        self._hear("on_train_start")

    def on_epoch_start(self, epoch: int, history: History) -> None:
        self._hear("on_epoch_start", epoch)

    def on_step_end(self, step: Any) -> None:
        assert step.loss.requires_grad is False and step.loss.ndim == 0  # detached, not read
        self._hear("on_step_end", step.epoch, step.batch, step.step)

    def on_epoch_end(self, epoch: int, history: History) -> None:
        self._hear("on_epoch_end", epoch)

    def on_train_end(self, history: History) -> None:
        self.stop_reason_at_end = history.stop_reason
        self._hear("on_train_end")


def _hooks(log: list[tuple[str, ...]], name: str) -> list[str]:
    return [entry[1] for entry in log if entry[0] == name]


def test_hooks_come_in_order_and_every_optimizer_step_is_heard_with_accumulation() -> None:
    log: list[tuple[str, ...]] = []
    train_loop(build_cnn(), data(160), epochs=2, accumulate=2, device="cpu", progress=False,
               callbacks=[Recorder("a", log)])  # fmt: skip
    # 160 pictures in batches of 32: 5 batches, steps after batches 2 and 4, and the last partial group
    steps = [entry[2:] for entry in log if entry[1] == "on_step_end"]
    assert steps == [(e, b, s) for e in ("0", "1") for b, s in (("1", "1"), ("3", "2"), ("4", "3"))]
    hooks = _hooks(log, "a")
    assert hooks[:3] == ["set_model", "on_train_start", "on_epoch_start"] and hooks[-1] == "on_train_end"
    assert hooks.count("on_epoch_start") == hooks.count("on_epoch_end") == 2


@pytest.mark.parametrize("ending", ["completed", "stopped", "raised", "interrupted"])
def test_every_callback_hears_the_end_last_first_however_training_ends(ending: str) -> None:
    log: list[tuple[str, ...]] = []
    first, second = Recorder("first", log), Recorder("second", log, fail_at="on_train_end")
    hooks: list[object] = [first, second]
    if ending == "stopped":
        hooks.append(lambda epoch, history: True)
    elif ending == "raised":
        hooks.append(lambda epoch, history: 1 / 0)
    elif ending == "interrupted":

        class Interrupt:
            def on_step_end(self, step: Any) -> None:
                raise KeyboardInterrupt

        hooks.append(Interrupt())
    # training's own error wins; without one, the callback's error in on_train_end is the error
    expected = {"completed": RuntimeError, "stopped": RuntimeError, "raised": ZeroDivisionError,
                "interrupted": KeyboardInterrupt}[ending]  # fmt: skip
    model = build_cnn().eval()
    model.sequential[0].train()  # a mixed set of modes, given back module by module
    with pytest.raises(expected):
        train_loop(model, data(), epochs=3, device="cpu", progress=False, callbacks=hooks)
    ends = [entry[0] for entry in log if entry[1] == "on_train_end"]
    assert ends == ["second", "first"]  # reverse order, and the first still ran after the second raised
    reason = first.stop_reason_at_end or ""
    assert {"completed": reason == "completed", "stopped": reason == "stopped by a callback",
            "raised": reason.startswith("raised ZeroDivisionError"),
            "interrupted": reason == "interrupted"}[ending], reason  # fmt: skip
    assert not model.training and model.sequential[0].training and not model.sequential[1].training


def test_a_users_callback_can_log_every_step_without_the_loop_reading_the_device() -> None:
    losses: list[float] = []

    class EveryStep:
        def on_step_end(self, step: Any) -> None:
            losses.append(float(step.loss))  # the callback's choice to read
            assert step.lr == pytest.approx(0.01) and step.outputs.shape == (len(step.targets), 10)

    history = train_loop(build_cnn(), data(128), epochs=1, device="cpu", progress=False, callbacks=[EveryStep()])
    assert len(losses) == 4 and history.epochs[0].loss_sum == pytest.approx(sum(losses), rel=1e-6)


# --------------------------------------------------------------------------- TensorBoard


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, History]:
    log_dir = tmp_path_factory.mktemp("runs") / "exp1"
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    optimizer = torch.optim.SGD([{"params": model.sequential[:3].parameters(), "lr": 0.02},
                                 {"params": model.sequential[3:].parameters()}], lr=0.01)  # fmt: skip
    history = train_loop(model, synthetic_cifar10(128, seed=0).loader(batch_size=32, seed=0), epochs=3,
                         optimizer=optimizer, eval_data=synthetic_cifar10(64, seed=1).loader(shuffle=False),
                         device="cpu", progress=False, callbacks=[TensorBoard(log_dir)])  # fmt: skip
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
        train_loop(
            model, synthetic_cifar10(64).loader(), device="cpu", progress=False, callbacks=[TensorBoard(tmp_path / "r")]
        )
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
               callbacks=[TensorBoard(tmp_path / "run")])  # fmt: skip
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    events.Reload()
    points = events.Scalars("optim/lr_step")
    assert [p.step for p in points] == list(range(1, 9))
    assert [p.value for p in points] == pytest.approx([*lrs[1:], schedule.get_last_lr()[0]], rel=1e-6)
