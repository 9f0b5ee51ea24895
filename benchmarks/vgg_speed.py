"""A VGG16 training step: ``train_loop`` against the better of two hand-written steps, in one process.

The model is ``cifarkit.adapt_vgg16()`` (134.3M parameters, 10 classes) on one batch of 32
pictures of 32x32, float32, SGD. The hand steps are the lesson's forward -> loss -> zero_grad ->
backward -> step on the same batch, once with contiguous tensors and once with the model and the
batch in channels_last (which ``train_loop`` picks for conv nets, and which alone is worth 6-13% of
a VGG16 step on the AVX2 EPYC). The target compares cifarkit with whichever of the two is faster
over the run.

Its own table: a step is 1.1-1.8 s on the AVX2 EPYC, too long for the main table's short rounds.
Its rounds there spread from 0.68 to 1.38, so 15 rounds left a run's median about 4% uncertain
(0.936x and 0.946x in two runs of 2026-12-07); it runs 31 (alone, right after: 0.971x). ``bench.py`` calls
:func:`vgg_speed`; run alone: ``python benchmarks/vgg_speed.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import cifarkit

BARE = "VGG16 step, batch 32: bare"
BEST = "VGG16 step, batch 32: bare + channels_last"
OURS = "VGG16 step, batch 32: cifarkit"
BATCH = 32


def vgg_speed(quick: bool, measure: Any) -> dict[str, Any]:
    """Figures of the three variants, as ``bench.measure`` returns them, and the target's ratio."""
    data = cifarkit.synthetic_cifar10(BATCH, seed=0)
    x, y = data.images.float() / 255, data.labels
    torch.manual_seed(0)
    bare_model, ours_model = cifarkit.adapt_vgg16(), cifarkit.adapt_vgg16()
    cl_model = cifarkit.adapt_vgg16().to(memory_format=torch.channels_last)
    cl_x = x.contiguous(memory_format=torch.channels_last)

    def hand(channels_last: bool) -> Any:
        model, batch = (cl_model, cl_x) if channels_last else (bare_model, x)

        def run(n: int) -> int:
            optim = torch.optim.SGD(model.parameters(), lr=0.001)
            steps = max(1, n // BATCH)
            for _ in range(steps):
                loss = F.cross_entropy(model(batch), y)
                optim.zero_grad()
                loss.backward()
                optim.step()
            return steps * BATCH

        return run

    def ours(n: int) -> int:
        optim = torch.optim.SGD(ours_model.parameters(), lr=0.001)
        steps = max(1, n // BATCH)
        cifarkit.train_loop(ours_model, [(x, y)] * steps, optimizer=optim, device="cpu", progress=False)
        return steps * BATCH

    variants = {BARE: hand(False), BEST: hand(True), OURS: ours}
    rounds, seconds = (2, 0.2) if quick else (31, 3.0)  # 15 left the median ~4% uncertain
    figures = measure(variants, rounds=rounds, seconds=seconds, baselines={BARE: None}, bare=BARE, tutorial=BARE,
                      same_precision={OURS: (BARE, BEST)}, together=[(BARE, BEST, OURS)])  # fmt: skip
    return {"variants": figures, "ratio": figures[OURS]["vs_best_same_precision"]}


def lines(figures: dict[str, Any]) -> list[str]:
    """The Markdown lines ``bench.table`` prints for these figures."""
    ours = figures["variants"][OURS]
    out = ["", "| VGG16 step (batch 32, fp32) | img/s | x contiguous hand step |", "|---|---|---|"]
    for name, r in figures["variants"].items():
        ratio = "1.00" if r["ratio"] is None else f"{r['ratio']:.2f}"
        out.append(f"| {name} | {r['images_per_second']:.1f} | {ratio} |")
    out.append(
        f"cifarkit against the faster hand step over the run ({ours['best_loop']}): {figures['ratio']:.3f}x; "
        f"against the faster one of each round: {ours['vs_max_per_round']:.3f}x"
    )
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench

    bench.run_alone(vgg_speed, lines, __doc__)
