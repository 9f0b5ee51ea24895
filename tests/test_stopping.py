"""Best weights and early stopping, as train_loop options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cifarkit import build_cnn, load, synthetic_cifar10, train_loop
from cifarkit.errors import InvalidOptionError
from cifarkit.stopping import BestWeights


def data(n: int = 128, seed: int = 0) -> Any:
    return synthetic_cifar10(n, seed=seed).loader(batch_size=32, seed=seed)


def frozen_run(**options: Any) -> tuple[nn.Module, Any]:
    """lr 0: every figure is flat, so nothing ever improves after the first epoch."""
    torch.manual_seed(0)
    model = build_cnn()
    history = train_loop(model, data(), epochs=10, lr=0.0, device="cpu", progress=False, **options)
    return model, history


def test_patience_two_on_a_flat_figure_runs_three_epochs() -> None:
    _, history = frozen_run(monitor="loss_mean", patience=2)
    assert len(history) == 3 and history.best_epoch == 1
    assert history.stop_reason == "early stopping: loss_mean did not improve for 2 epochs"
    _, history = frozen_run(monitor="loss_mean")
    assert len(history) == 10 and history.stop_reason == "completed"


def test_the_model_ends_with_the_best_weights_whether_or_not_it_stopped(tmp_path: Path) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)  # large: eval accuracy jumps around
    history = train_loop(model, data(256), epochs=5, optimizer=optimizer, eval_data=data(128, seed=1),
                         monitor="eval_accuracy", best_checkpoint=tmp_path / "best.pt", device="cpu", progress=False,
                         on_epoch_end=lambda e, h: snapshots.append({k: v.clone() for k, v in model.state_dict().items()}))  # fmt: skip
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
    train_loop(model, data(), epochs=3, lr=0.05, monitor="loss_mean", mode="max", restore_best=False, device="cpu",
               progress=False, on_epoch_end=lambda e, h: last.update(model.state_dict()))  # fmt: skip
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())


def test_bad_options_are_named_before_training() -> None:
    with pytest.raises(InvalidOptionError, match="no eval_data was given"):
        train_loop(build_cnn(), data(), monitor="eval_loss", device="cpu", progress=False)
    with pytest.raises(InvalidOptionError, match="monitor='val_loss' is not valid"):
        train_loop(build_cnn(), data(), monitor="val_loss", device="cpu", progress=False)
    with pytest.raises(InvalidOptionError, match="patience must be a positive int"):
        train_loop(build_cnn(), data(), monitor="loss_mean", patience=0, device="cpu", progress=False)
    with pytest.raises(InvalidOptionError, match="mode='up'"):
        BestWeights("loss_mean", mode="up", has_eval=False)  # type: ignore[arg-type]
    assert BestWeights("eval_accuracy", has_eval=True).mode == "max"
    assert BestWeights("eval_loss", has_eval=True).mode == "min"


def test_state_round_trips_and_refuses_another_monitor() -> None:
    tracker = BestWeights("loss_mean", patience=3, has_eval=False)
    state = tracker.state_dict()
    other = BestWeights("loss_mean", patience=3, has_eval=False)
    other.load_state_dict(state)
    assert other.state_dict() == state
    with pytest.raises(InvalidOptionError, match="Resume with the same monitor"):
        BestWeights("train_accuracy", has_eval=False).load_state_dict(state)
