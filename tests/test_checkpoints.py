"""Training checkpoints: contents, refusal of NaN weights, and a bit-exact resume."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cifarkit import build_cnn, inspect, load, load_checkpoint, save, save_checkpoint, synthetic_cifar10, train_loop
from cifarkit.errors import CorruptCheckpointError, NonFiniteWeightsError, NotACheckpointError
from cifarkit.files.checkpoints import CHECKPOINT_VERSION, random_states, set_random_states
from cifarkit.files.format import payload_digest


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


_RESUME_SCRIPT = """
import json, random, sys
import numpy as np
import torch
import cifarkit
torch.set_num_threads(1)
mode, out, device = sys.argv[1], sys.argv[2], sys.argv[3]
if device == "cuda":
    torch.use_deterministic_algorithms(True)  # with CUBLAS_WORKSPACE_CONFIG set by the test
torch.manual_seed(1234 if mode == "resume" else 7)  # a restarted script seeds differently
random.seed(5); np.random.seed(5)
model = cifarkit.build_cnn(activation="relu", dropout=0.3)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
train = cifarkit.synthetic_cifar10(192, seed=0).loader(batch_size=32, augment=True, device=device)  # no seed=
schedule = cifarkit.one_cycle(optimizer, max_lr=0.05, epochs=4, steps_per_epoch=len(train))
eval_data = cifarkit.synthetic_cifar10(64, seed=1).loader(shuffle=False)
history = cifarkit.train_loop(model, train, epochs=2 if mode == "first" else 4, optimizer=optimizer,
                              scheduler=schedule, eval_data=eval_data, callbacks=[cifarkit.EarlyStopping("eval_loss", patience=3)],
                              checkpoint=None if mode == "straight" else out + "/ck.pt",
                              device=device, progress=False)
torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out + f"/{mode}.pt")
print(json.dumps({"history": history.to_dict(), "random": random.random(), "numpy": float(np.random.rand()),
                  "torch": float(torch.rand(()))}))
"""


def _run_script(mode: str, out: Path, device: str = "cpu") -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    done = subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, mode, str(out), device], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                         reason="needs a CUDA GPU")])],
)  # fmt: skip
def test_a_resumed_run_in_a_new_process_is_bit_identical_to_an_uninterrupted_one(tmp_path: Path, device: str) -> None:
    straight = _run_script("straight", tmp_path, device)
    _run_script("first", tmp_path, device)
    resumed = _run_script("resume", tmp_path, device)
    a, b = (torch.load(tmp_path / f"{m}.pt", weights_only=True) for m in ("straight", "resume"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # best weights, restored
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert all(torch.equal(m, s["momentum_buffer"]) for m, s in zip(momentum, b["optimizer"]["state"].values()))
    strip = ("seconds", "images_per_second", "first_step_seconds")
    for x, y in zip(straight["history"]["epochs"], resumed["history"]["epochs"], strict=True):
        assert {k: v for k, v in x.items() if k not in strip} == {k: v for k, v in y.items() if k not in strip}
    assert straight["history"]["best_epoch"] == resumed["history"]["best_epoch"]
    for source in ("random", "numpy", "torch"):  # every random state continued where it was
        assert straight[source] == resumed[source], source


def test_checkpoints_of_another_format_version_are_refused_with_their_number(tmp_path: Path) -> None:
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=optimizer, epoch=2)
    raw = torch.load(path, weights_only=True)
    assert load_checkpoint(path, model=build_cnn()).format_version == CHECKPOINT_VERSION == 4
    for version in (1, 3, 99):  # older ones (never released) and newer ones alike
        other = {k: v for k, v in raw.items() if k != "payload_sha256"} | {"format_version": version}
        other["payload_sha256"] = payload_digest(other)
        torch.save(other, tmp_path / f"v{version}.pt")
        with pytest.raises(
            CorruptCheckpointError,
            match=f"format version {version}; this cifarkit resumes checkpoints of version 4 only",
        ):
            load_checkpoint(tmp_path / f"v{version}.pt", model=build_cnn())


def test_random_states_round_trip() -> None:
    states = random_states()
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_random_states(states)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first


def test_scheduler_and_scaler_states_travel_with_the_checkpoint(tmp_path: Path) -> None:
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(3):
        optimizer.step()
        schedule.step()
    scaler.scale(torch.ones(()))  # the scaler starts when it first scales a loss
    scaler.update(new_scale=256.0)
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=optimizer, epoch=3, scheduler=schedule,
                           scaler=scaler, loader={"seed": 5, "epoch": 3})  # fmt: skip
    optimizer2 = torch.optim.SGD(build_cnn().parameters(), lr=0.1)
    schedule2 = torch.optim.lr_scheduler.StepLR(optimizer2, 1, gamma=0.5)
    scaler2 = torch.amp.GradScaler("cpu")
    restored = load_checkpoint(path, model=build_cnn(), optimizer=optimizer2, scheduler=schedule2, scaler=scaler2)
    assert schedule2.last_epoch == 3 and optimizer2.param_groups[0]["lr"] == pytest.approx(0.0125)
    assert scaler2.get_scale() == 256.0 and restored.loader == {"seed": 5, "epoch": 3}
