"""Training checkpoints: contents, refusal of NaN weights, and a bit-exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cifarkit import build_cnn, inspect, load, load_checkpoint, save, save_checkpoint, synthetic_cifar10, train_loop
from cifarkit.errors import NonFiniteWeightsError, NotACheckpointError


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _run(epochs: int, checkpoint: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    data = synthetic_cifar10(192, seed=0).loader(batch_size=64, seed=3, augment=True)
    return train_loop(
        model, data, epochs=epochs, optimizer=optimizer, checkpoint=checkpoint, device="cpu", progress=False
    )


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(7)
        model = build_cnn(activation="relu", dropout=0.3)
        return model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)

    straight, opt_straight = fresh()
    history = _run(4, None, straight, opt_straight)

    checkpoint = tmp_path / "ck.pt"
    first, opt_first = fresh()
    _run(2, checkpoint, first, opt_first)
    torch.manual_seed(999)  # a new process: different global RNG, restored from the checkpoint
    resumed, opt_resumed = fresh()
    resumed_history = _run(4, checkpoint, resumed, opt_resumed)

    assert same_weights(straight, resumed)
    momentum = [opt_straight.state[p]["momentum_buffer"] for p in straight.parameters()]
    assert all(torch.equal(a, opt_resumed.state[q]["momentum_buffer"]) for a, q in zip(momentum, resumed.parameters()))
    assert resumed_history.column("loss_sum") == history.column("loss_sum")
    assert load_checkpoint(checkpoint, model=build_cnn(activation="relu", dropout=0.3)).epoch == 4


def test_checkpoint_contents_and_errors(tmp_path: Path) -> None:
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(
        tmp_path / "ck.pt", model=model, optimizer=optimizer, epoch=3, extra={"note": "hi", "step": 7}
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "cifarkit.checkpoint" and raw["epoch"] == 3
    restored = load_checkpoint(path, model=build_cnn(), optimizer=torch.optim.SGD(build_cnn().parameters(), lr=0.5))
    assert restored.extra == {"note": "hi", "step": 7} and restored.history is None
    assert inspect(path).method == "checkpoint" and inspect(path).epoch == 3
    assert same_weights(model, load(path))  # a checkpoint is also a model file
    with pytest.raises(NotACheckpointError, match="not a training checkpoint"):
        load_checkpoint(save(model, tmp_path / "m.pt"), model=build_cnn())
    with torch.no_grad():
        model.sequential[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="previous file is kept"):
        save_checkpoint(path, model=model, optimizer=optimizer, epoch=4)
    assert torch.load(path, weights_only=True)["epoch"] == 3
