"""``fine_tune`` and ``lr_find`` against hand-written loops doing the same work, in one process.

The model is ResNet-18 adapted to 10 classes, on 32x32 pictures, batch 64, float32.

- **phase 2** (every layer trains): ``cifarkit.fine_tune(freeze_epochs=0)`` against a loop with
  the same ``AdamW`` parameter groups (``layer_groups``: 7 groups, log-spaced peaks) and the same
  two-phase schedule stepped after every step, the model and batches in channels_last;
- **phase 1** (the head alone): ``fine_tune(epochs=0)`` against the same loop with the features'
  ``requires_grad`` off;
- **lr_find**: ``cifarkit.lr_find(steps=20)`` (a sweep that ends below divergence, so all 20
  steps run; 10 with ``--quick``) against 20 steps of the loop whose learning rate grows the
  same way, with SGD. 20, not the default 100: a round runs each variant twice, and 100 steps
  are 35 s a sweep on the AVX2 EPYC; fewer steps only weigh the finder's per-call work (the
  snapshot of the model and its restore) more.

Short calls and 11 rounds, because one round's ratio spreads by several percent on a noisy VM
(``round_ratios`` in the figures): the median of many short paired rounds resolves a 3% bar
where five long ones cannot.

Each variant runs whole epochs of 4 batches (``fine_tune``'s per-epoch work is part of its cost),
interleaved in shuffled rounds by ``bench.measure``; ratios are cifarkit over the hand loop, per
round. ``bench.py`` calls :func:`finetune_speed`; run alone: ``python benchmarks/finetune_speed.py
[--quick]``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import cifarkit
from cifarkit.models.zoo import freeze_features, layer_groups
from cifarkit.training.schedules import TwoPhaseSchedule

BATCH, BATCHES = 64, 4
HAND_2, OURS_2 = "hand loop, phase 2 (7 AdamW groups)", "cifarkit fine_tune, phase 2"
HAND_1, OURS_1 = "hand loop, phase 1 (head alone)", "cifarkit fine_tune, phase 1"
HAND_LR, OURS_LR = "hand loop, a sweep of growing lr", "cifarkit lr_find, the same sweep"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return cifarkit.adapt("resnet18").to(memory_format=torch.channels_last)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = layer_groups(model, "fc", 1)
    peaks = [1e-3 * 10.0 ** (i / (len(groups) - 1) - 1) for i in range(len(groups))]
    return torch.optim.AdamW([{"params": p, "lr": lr} for (_, p), lr in zip(groups, peaks, strict=True)],
                             weight_decay=0.01)  # fmt: skip


def _hand_steps(model: torch.nn.Module, batches: list[Any], optimizer: torch.optim.Optimizer,
                steps: int, after_step: Any) -> None:  # fmt: skip
    model.train()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        after_step(i)


def finetune_speed(quick: bool, measure: Any) -> dict[str, Any]:
    """Figures of the six variants, as ``bench.measure`` returns them, and the three ratios."""
    size, count = (16, 2) if quick else (BATCH, BATCHES)  # --quick: a smoke test, in seconds
    loader = cifarkit.synthetic_cifar10(size * count, seed=0).loader(batch_size=size, seed=0)
    batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in loader]
    images = size * count
    model = _model()

    def ours(frozen: bool) -> Any:
        def run(n: int) -> int:
            epochs = max(1, n // images)
            cifarkit.fine_tune(model, loader, epochs=0 if frozen else epochs, freeze_epochs=epochs if frozen else 0,
                               device="cpu", progress=False)  # fmt: skip
            return epochs * images

        return run

    def hand(frozen: bool) -> Any:
        def run(n: int) -> int:
            epochs = max(1, n // images)
            optimizer = _optimizer(model)
            steps = epochs * count
            schedule = TwoPhaseSchedule(optimizer, frozen_steps=steps if frozen else 0,
                                        unfrozen_steps=0 if frozen else steps)  # fmt: skip
            freeze_features(model, "fc", frozen=frozen)
            try:
                _hand_steps(model, batches, optimizer, steps, lambda i: schedule.step())
            finally:
                freeze_features(model, "fc", frozen=False)
            return epochs * images

        return run

    steps = 10 if quick else 20  # a sweep of 20 steps is 7 s on the AVX2 EPYC: too long for a smoke test
    sweeper = _model()  # every sweep starts from the same weights: a trained model's tiny loss is
    untrained = copy.deepcopy(sweeper.state_dict())  # noise, and the sweep would stop early on it

    def finder(n: int) -> int:
        sweeps = max(1, n // (steps * size))
        for _ in range(sweeps):
            sweeper.load_state_dict(untrained)
            found = cifarkit.lr_find(sweeper, loader, steps=steps, end_lr=1e-3, device="cpu",
                                     optimizer=torch.optim.SGD(sweeper.parameters(), lr=1e-7))  # fmt: skip
            assert len(found.lrs) == steps, found.stop_reason
        return sweeps * steps * size

    def hand_sweep(n: int) -> int:
        sweeps = max(1, n // (steps * size))
        for _ in range(sweeps):
            sweeper.load_state_dict(untrained)
            optimizer = torch.optim.SGD(sweeper.parameters(), lr=1e-7)

            def grow(i: int, optimizer: torch.optim.Optimizer = optimizer) -> None:
                for group in optimizer.param_groups:
                    group["lr"] = 1e-7 * (1e-3 / 1e-7) ** ((i + 1) / (steps - 1))

            _hand_steps(sweeper, batches, optimizer, steps, grow)
        return sweeps * steps * size

    variants = {HAND_2: hand(False), OURS_2: ours(False), HAND_1: hand(True), OURS_1: ours(True),
                HAND_LR: hand_sweep, OURS_LR: finder}  # fmt: skip
    rounds, seconds = (2, 0.2) if quick else (11, 3.0)
    figures = measure(variants, rounds=rounds, seconds=seconds, bare=HAND_2, tutorial=HAND_2,
                      baselines={OURS_1: HAND_1, HAND_1: None, OURS_LR: HAND_LR, HAND_LR: None},
                      same_precision={}, together=[(HAND_2, OURS_2), (HAND_1, OURS_1), (HAND_LR, OURS_LR)])  # fmt: skip
    return {
        "variants": figures,
        "phase2_ratio": figures[OURS_2]["ratio"],
        "phase1_ratio": figures[OURS_1]["ratio"],
        "lr_find_ratio": figures[OURS_LR]["ratio"],
    }


def lines(figures: dict[str, Any]) -> list[str]:
    """The Markdown lines ``bench.table`` prints for these figures."""
    out = ["", "| fine-tuning (ResNet-18, 32x32, batch 64, fp32) | img/s | x hand loop |", "|---|---|---|"]
    for name, r in figures["variants"].items():
        ratio = "1.00" if r["ratio"] is None else f"{r['ratio']:.2f}"
        out.append(f"| {name} | {r['images_per_second']:.0f} | {ratio} |")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench

    bench.run_alone(finetune_speed, lines, __doc__)
