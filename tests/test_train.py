"""The training step and loop, held against a hand-written zero_grad/forward/loss/backward/step loop."""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cifarkit import History, build_cnn, evaluate, synthetic_cifar10, train_loop, train_one_epoch
from cifarkit.device import cpu_supports_bf16
from cifarkit.errors import EmptyDataError, InvalidOptionError, NonFiniteLossError


@pytest.fixture(scope="module")
def train_set() -> Any:
    return synthetic_cifar10(10_000, seed=0)


@pytest.fixture(scope="module")
def test_set() -> Any:
    return synthetic_cifar10(2_000, seed=1)


# --------------------------------------------------------------------------- the bar of the issue


@pytest.mark.slow
def test_relu_cnn_learns_the_synthetic_dataset(train_set: Any, test_set: Any) -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = train_loop(model, train_set.loader(batch_size=64, seed=0), epochs=5, optimizer=optimizer,
                         eval_data=test_set.loader(batch_size=256, shuffle=False), device="cpu", progress=False)  # fmt: skip
    assert history.epochs[-1].eval_accuracy >= 0.80, history.column("eval_accuracy")  # measured 1.00


@pytest.mark.slow
def test_tutorial_settings_loss_sum_falls_every_epoch(train_set: Any) -> None:
    torch.manual_seed(0)
    history = train_loop(build_cnn(), train_set.loader(batch_size=64, seed=0), epochs=5, lr=0.01, device="cpu",
                         progress=False)  # fmt: skip
    sums = history.column("loss_sum")
    assert all(b < a for a, b in itertools.pairwise(sums)), sums
    assert isinstance(sums[0], float) and len(sums) == 5


# --------------------------------------------------------------------------- loop mechanics


def small_loader(n: int = 256, seed: int = 0, **kwargs: Any) -> Any:
    return synthetic_cifar10(n, seed=seed).loader(seed=seed, **kwargs)


def test_history_figures_are_consistent() -> None:
    torch.manual_seed(0)
    data = small_loader(200, batch_size=64)
    history = train_loop(build_cnn(), data, epochs=2, device="cpu", progress=False, eval_data=small_loader(100, seed=1))
    e = history.epochs[0]
    assert (e.epoch, e.images) == (1, 200)
    assert 0 <= e.train_accuracy <= 1 and e.seconds > 0 and e.images_per_second > 0
    assert e.loss_sum > e.loss_mean > 0  # 4 batch losses summed vs mean per image
    assert e.lr == [0.01] and e.eval_loss is not None and e.eval_accuracy is not None
    assert History.from_dict(history.to_dict()) == history


def test_cpu_training_is_deterministic() -> None:
    def run() -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(42)
        model = build_cnn(activation="relu", dropout=0.2)
        history = train_loop(
            model, small_loader(192, batch_size=64, augment=True), epochs=2, device="cpu", progress=False
        )
        return history.column("loss_sum"), model.sequential[0].weight.detach().clone()

    (a, wa), (b, wb) = run(), run()
    assert a == b and torch.equal(wa, wb)


_MEMORY_SCRIPT = """
import ctypes, json, torch
from cifarkit import build_cnn, train_loop
torch.set_num_threads(1)
torch.manual_seed(0)

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def in_use():  # bytes malloc has handed out and not had back: unlike RSS, blind to trims and arenas
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd

FROM, TO = 300, 2300  # measured between two steps of one loop: warm caches, no loader or History
batches = [(torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))) for _ in range(TO)]
model = build_cnn()
optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
train_loop(model, batches[:200], optimizer=optimizer, device="cpu", progress=False)  # warm-up

class Sample:  # a callback with one hook
    def __init__(self):
        self.steps, self.at = 0, {}
    def on_step_end(self, step):
        self.steps += 1
        if self.steps in (FROM, TO):
            self.at[self.steps] = in_use()

sample = Sample()
history = train_loop(model, batches, optimizer=optimizer, device="cpu", progress=False, callbacks=[sample])
at, sum_loss = {}, 0
for i, (x, y) in enumerate(batches, 1):  # the tutorial's loop
    result_loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    result_loss.backward()
    optimizer.step()
    sum_loss = sum_loss + result_loss
    if i in (FROM, TO):
        at[i] = in_use()
print(json.dumps({"ours": sample.at[TO] - sample.at[FROM], "tutorial": at[TO] - at[FROM],
                  "loss_sum": history.epochs[0].loss_sum, "tutorial_requires_grad": sum_loss.requires_grad}))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="needs glibc's mallinfo2",
)
def test_loss_is_accumulated_detached_and_memory_stays_flat() -> None:
    """In a fresh process, 2000 steps at batch 2, counting the bytes malloc has handed out (RSS
    moves with the allocator's trims and arenas, and made this test flaky): the tutorial's
    ``sum_loss + result_loss`` keeps every step's graph alive; train_loop keeps nothing per step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, check=True, env=env)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["tutorial_requires_grad"] and isinstance(figures["loss_sum"], float)
    assert figures["tutorial"] > 10e6, figures  # measured 12 KB per step kept alive: 24 MB
    # Measured under 0.1 MB; 2.6 MB when the meter kept every batch of the epoch until its end.
    assert figures["ours"] < 1e6, figures


def test_accepts_a_plain_dataloader_like_the_tutorial() -> None:
    data = synthetic_cifar10(64, seed=0)
    dataset = TensorDataset(data.images.float() / 255, data.labels)  # what ToTensor() gives
    history = train_loop(build_cnn(), DataLoader(dataset, batch_size=16, shuffle=True), device="cpu", progress=False)
    assert history.epochs[0].images == 64
    result = evaluate(build_cnn(), DataLoader(dataset, batch_size=1), device="cpu")
    assert result.count == 64


def test_empty_data_raises_before_training() -> None:
    with pytest.raises(EmptyDataError, match="empty"):
        train_loop(build_cnn(), [], device="cpu", progress=False)
    with pytest.raises(EmptyDataError, match="no batches"):
        train_loop(build_cnn(), iter([]), device="cpu", progress=False)
    with pytest.raises(InvalidOptionError):
        train_loop(build_cnn(), small_loader(10), epochs=-1)


def test_non_finite_loss_stops_before_it_touches_the_weights(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, y)
        return loss * float("nan") if calls["n"] == 7 else loss

    model = build_cnn()
    snapshots: list[torch.Tensor] = []
    checkpoint = tmp_path / "ck.pt"
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 3"):
        train_loop(model, small_loader(256, batch_size=64), epochs=3, loss_fn=flaky_loss, device="cpu", progress=False,
                   checkpoint=checkpoint, callbacks=[lambda e, h: snapshots.append(model.sequential[0].weight.detach().clone())])  # fmt: skip
    assert all(torch.isfinite(p).all() for p in model.parameters())
    from cifarkit import load_checkpoint

    assert load_checkpoint(checkpoint, model=build_cnn()).epoch == 1  # the good epoch's file is intact


def test_keyboard_interrupt_restores_mode_and_keeps_checkpoint(tmp_path: Path) -> None:
    model = build_cnn().eval()
    checkpoint = tmp_path / "ck.pt"

    def interrupted(epoch: int, history: History) -> bool:
        if epoch == 2:  # during the third epoch's callbacks, which run before its checkpoint
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        train_loop(
            model,
            small_loader(64),
            epochs=4,
            device="cpu",
            progress=False,
            checkpoint=checkpoint,
            callbacks=[interrupted],
        )
    assert not model.training  # the caller's mode is back
    from cifarkit import load_checkpoint

    assert load_checkpoint(checkpoint, model=build_cnn()).epoch == 2


def test_an_epoch_end_function_is_called_every_epoch_and_can_stop_training() -> None:
    calls: list[int] = []

    def stop_after_two(epoch: int, history: History) -> bool:
        calls.append(epoch)
        return epoch == 1

    history = train_loop(build_cnn(), small_loader(64), epochs=5, device="cpu", progress=False,
                         callbacks=[stop_after_two])  # fmt: skip
    assert len(history) == 2 and calls == [0, 1] and history.stop_reason == "stopped by a callback"
    calls.clear()
    history = train_loop(build_cnn(), small_loader(64), epochs=2, device="cpu", progress=False,
                         callbacks=[lambda e, h: calls.append(e)])  # fmt: skip
    assert calls == [0, 1] and history.stop_reason == "completed"


def test_max_grad_norm_bounds_each_step() -> None:
    torch.manual_seed(0)
    model = build_cnn()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = next(iter(small_loader(32, batch_size=32)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    history = train_loop(model, [(x, y)], optimizer=optimizer, max_grad_norm=0.01, device="cpu", progress=False)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))  # type: ignore[arg-type]
    assert float(moved) == pytest.approx(0.01, rel=1e-3)  # clipped to exactly max_grad_norm (lr = 1)
    assert history.epochs[0].grad_norm is not None and history.epochs[0].grad_norm > 0.01


def test_channels_last_is_used_for_conv_models_and_matches_fp32() -> None:
    torch.manual_seed(0)
    a, b = build_cnn(), build_cnn()
    b.load_state_dict(a.state_dict())
    train_loop(a, small_loader(128), epochs=1, device="cpu", progress=False)
    train_one_epoch(b, small_loader(128), torch.optim.SGD(b.parameters(), lr=0.01), device="cpu", channels_last=False)
    assert a.sequential[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert b.sequential[0].weight.is_contiguous()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)  # equal up to float rounding


def test_amp_trains_close_to_fp32_and_warns_only_where_bf16_is_emulated() -> None:
    def run(amp: bool) -> tuple[History, list[Any]]:
        torch.manual_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = train_loop(build_cnn(activation="relu"), small_loader(256, batch_size=64), amp=amp,
                                 device="cpu", progress=False)  # fmt: skip
        return history, caught

    fp32, _ = run(False)
    bf16, caught = run(True)
    # bf16 keeps 8 mantissa bits: the same four steps from the same weights give nearly the
    # same losses (measured 0.1% apart), while a broken autocast (wrong dtype for the loss,
    # a skipped step) would not.
    assert bf16.epochs[0].loss_sum == pytest.approx(fp32.epochs[0].loss_sum, rel=0.02)
    assert bf16.epochs[0].loss_sum != fp32.epochs[0].loss_sum  # autocast really ran in bf16
    assert any("bf16" in str(w.message) for w in caught) != cpu_supports_bf16()


def test_compile_records_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.compile

    def eager_compile(model: Any, **kwargs: Any) -> Any:  # the eager backend: same code path, no C++ build
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    history = train_loop(build_cnn(), small_loader(64), compile=True, device="cpu", progress=False)
    assert history.compile_seconds is not None and history.compile_seconds > 0
    assert history.compile_seconds == history.epochs[0].first_step_seconds
    assert train_loop(build_cnn(), small_loader(64), device="cpu", progress=False).compile_seconds is None


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@CUDA
def test_cuda_training_with_amp_and_device_data() -> None:
    data = synthetic_cifar10(512, seed=0)
    loader = data.loader(batch_size=64, seed=0, device="cuda")
    model = build_cnn(activation="relu")
    history = train_loop(model, loader, epochs=2, amp=True, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda and history.epochs[-1].images == 512
    assert evaluate(model, loader, device="cuda").count == 512


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_trains_close_to_fp32(amp: str) -> None:
    loader = synthetic_cifar10(1024, seed=0).loader(batch_size=64, seed=0, device="cuda")

    def run(precision: Any) -> float:
        torch.manual_seed(0)
        model = build_cnn(activation="relu")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        history = train_loop(model, loader, epochs=1, optimizer=optimizer, amp=precision, device="cuda", progress=False)
        assert next(model.parameters()).is_cuda
        return float(history.epochs[0].loss_sum)

    assert run(amp) == pytest.approx(run(False), rel=0.03)  # fp16 steps through a GradScaler


# --------------------------------------------------------------------------- the oracle


def oracle_epoch(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], optimizer: torch.optim.Optimizer
) -> dict[str, float]:
    """The tutorial's loop written out by hand: the reference every cifarkit loop must match.

    It runs in the memory format cifarkit gives a conv net (channels-last), so that the only
    difference left is the loop itself: in another layout the convolutions round differently, by
    an amount that depends on the CPU (1.5e-4 after 18 steps on an AVX2-only CPU).
    """
    loss_sum, correct, norms = 0.0, 0, []
    model.to(memory_format=torch.channels_last).train()
    for x, y in batches:
        x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad()
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        norms.append(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))))
        optimizer.step()
        loss_sum += float(loss.detach())
        correct += int((out.argmax(1) == y).sum())
    images = sum(len(y) for _, y in batches)
    return {"loss_sum": loss_sum, "train_accuracy": correct / images, "grad_norm": sum(norms) / len(norms)}


def fresh(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = build_cnn(activation="relu")
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


BATCHES = [(x.clone(), y.clone()) for x, y in small_loader(192, batch_size=32, shuffle=False)]  # 6 batches


def assert_matches_oracle(run: Callable[[nn.Module, torch.optim.Optimizer], list[float]], epochs: int = 1) -> None:
    """``run(model, optimizer)`` trains on BATCHES for ``epochs`` epochs and returns the loss sums."""
    model, optimizer = fresh()
    reference, ref_optimizer = fresh()
    got = run(model, optimizer)
    expected = [oracle_epoch(reference, BATCHES, ref_optimizer)["loss_sum"] for _ in range(epochs)]
    assert got == pytest.approx(expected, rel=1e-4)  # loss_sum is the sum of the batch losses
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{name} differs from the hand-written loop")


def test_train_one_epoch_matches_the_hand_written_loop() -> None:
    model, optimizer = fresh()
    reference, ref_optimizer = fresh()
    stats = train_one_epoch(model, BATCHES, optimizer, device="cpu")
    expected = oracle_epoch(reference, BATCHES, ref_optimizer)
    assert stats.loss_sum == pytest.approx(expected["loss_sum"], rel=1e-5)
    assert stats.train_accuracy == expected["train_accuracy"]
    assert stats.grad_norm == pytest.approx(expected["grad_norm"], rel=1e-4)  # always measured
    assert (stats.epoch, stats.images, stats.lr) == (1, 192, [0.05])
    assert_matches_oracle(lambda m, o: [train_one_epoch(m, BATCHES, o, device="cpu").loss_sum])


def test_train_loop_matches_the_hand_written_loop_over_epochs() -> None:
    def run(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[float]:
        history = train_loop(model, BATCHES, epochs=3, optimizer=optimizer, device="cpu", progress=False)
        return history.column("loss_sum")

    assert_matches_oracle(run, epochs=3)


class Sabotaged(torch.optim.SGD):
    """SGD with one of the two classic loop bugs built in."""

    def __init__(self, params: Any, fault: str) -> None:
        super().__init__(params, lr=0.05, momentum=0.9)
        self.fault = fault

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.fault != "no zero_grad":
            super().zero_grad(set_to_none)

    def step(self, closure: Any = None) -> Any:
        super().step()
        if self.fault == "steps twice":
            super().step()


@pytest.mark.parametrize("fault", ["no zero_grad", "steps twice"])
def test_the_oracle_bites_a_loop_with_a_classic_bug(fault: str) -> None:
    def run(model: nn.Module, _: torch.optim.Optimizer) -> list[float]:
        return [train_one_epoch(model, BATCHES, Sabotaged(model.parameters(), fault), device="cpu").loss_sum]

    with pytest.raises(AssertionError):
        assert_matches_oracle(run)
