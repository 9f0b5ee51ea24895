"""What cifarkit adds to every step and every batch: a one-layer model, where the step itself is
almost free, trained by ``train_loop`` and by a hand loop doing the same work, and evaluated by
``evaluate`` and by a hand ``inference_mode`` loop computing the same figures.

The same work means: uint8 batches gathered and converted to float per step (as ``TensorLoader``
does), the loss and the correct answers summed on the device and read once per pass; for
evaluation, every figure ``evaluate`` returns (mean loss, accuracy, top-5, the confusion matrix,
the calibration error and the NLL). Reported as ratios (hand / cifarkit time: 1.0 is parity) and
as microseconds of overhead per step or batch. On a slow CPU the overhead is the same share of a
step as a fast CPU shows on a real model: this benchmark sees on any machine what a fast one does.

    python benchmarks/fixed_cost.py            # alone; also part of benchmarks/bench.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import cifarkit

HERE = Path(__file__).resolve().parent
TRAIN_BATCH, EVAL_BATCH = 64, 256
PICTURES, QUICK_PICTURES = 10_000, 2_048  # the synthetic set each variant passes over
Measure = Callable[..., dict[str, Any]]


def one_layer() -> nn.Module:
    """Flatten + Linear on 32x32x3 pictures: a step that is almost free."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


def passes(n: int, size: int) -> int:
    """Whole passes over ``size`` pictures that make about ``n`` pictures (at least one)."""
    return max(1, round(n / size))


def make_variants(quick: bool) -> tuple[dict[str, Callable[[int], int]], int]:
    """The four variants. Each is asked for about ``n`` pictures and runs whole passes over the
    set: ``train_loop`` one call of that many epochs, ``evaluate`` that many calls, each timed
    with everything a user's call costs, its setup and its final read included."""
    data = cifarkit.synthetic_cifar10(QUICK_PICTURES if quick else PICTURES, seed=0)
    images, labels = data.images, data.labels
    size = len(labels)
    train_model, eval_model = one_layer(), one_layer()

    def hand_train(n: int) -> int:
        epochs = passes(n, size)
        optimizer = torch.optim.SGD(train_model.parameters(), lr=0.01)
        train_model.train()
        for epoch in range(epochs):
            order = torch.randperm(size, generator=torch.Generator().manual_seed(epoch))
            hand_epoch(train_model, optimizer, images, labels, order)
        return epochs * size

    def ours_train(n: int) -> int:
        epochs = passes(n, size)
        loader = cifarkit.TensorLoader(images, labels, batch_size=TRAIN_BATCH, seed=0)
        optimizer = torch.optim.SGD(train_model.parameters(), lr=0.01)
        cifarkit.train_loop(train_model, loader, epochs=epochs, optimizer=optimizer, device="cpu", progress=False)
        return epochs * size

    def hand_evaluate(n: int) -> int:
        calls = passes(n, size)
        for _ in range(calls):
            hand_figures(eval_model, images, labels)
        return calls * size

    def ours_evaluate(n: int) -> int:
        calls = passes(n, size)
        for _ in range(calls):
            loader = cifarkit.TensorLoader(images, labels, batch_size=EVAL_BATCH, shuffle=False)
            cifarkit.evaluate(eval_model, loader, device="cpu")
        return calls * size

    variants = {
        TRAIN_HAND: hand_train,
        TRAIN_OURS: ours_train,
        EVAL_HAND: hand_evaluate,
        EVAL_OURS: ours_evaluate,
    }
    return variants, size


def hand_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               order: torch.Tensor) -> None:  # fmt: skip
    """One hand-written training pass over ``order``, the same work as ``train_loop``'s: uint8
    batches gathered and converted to float per step (as ``TensorLoader`` does), the loss and
    the correct answers summed on the device and read once at the end."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, len(order), TRAIN_BATCH):
        idx = order[start : start + TRAIN_BATCH]  # gathered as TensorLoader does: by whole rows
        x, y = images.index_select(0, idx).to(torch.float32).mul_(1 / 255), labels.index_select(0, idx)
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        correct += (out.argmax(1) == y).sum()
    float(loss_sum), int(correct)


def hand_figures(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[Any]:
    """Every figure ``evaluate`` returns, by a hand ``inference_mode`` loop: one whole call."""
    n = len(labels)
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    logits, targets = [], []
    model.eval()
    with torch.inference_mode():
        for start in range(0, n, EVAL_BATCH):
            x = images[start : start + EVAL_BATCH].to(torch.float32).mul_(1 / 255)
            y = labels[start : start + EVAL_BATCH]
            out = model(x)
            loss_sum += F.cross_entropy(out, y) * len(y)
            logits.append(out)
            targets.append(y)
        out, y = torch.cat(logits), torch.cat(targets)
        probs = out.softmax(1)
        confidence, predicted = probs.max(1)
        top5 = (out.topk(5, 1).indices == y[:, None]).any(1).sum()
        confusion = torch.bincount(y * 10 + predicted, minlength=100)
        which = (confidence * 15).long().clamp_(max=14)
        bins = torch.zeros(3, 15, dtype=torch.float64, device=images.device)
        for row, values in enumerate((torch.ones_like(confidence), confidence, (predicted == y).float())):
            bins[row].index_add_(0, which, values.double())
        nll = -probs.gather(1, y[:, None]).log().sum()
        return [float(loss_sum) / n, int((predicted == y).sum()) / n, int(top5) / n, confusion.tolist(),
                float((bins[1] - bins[2]).abs().sum()) / n, float(nll) / n]  # fmt: skip


TRAIN_HAND = "one layer: hand training loop, same work"
TRAIN_OURS = "one layer: cifarkit train_loop"
EVAL_HAND = "one layer: hand inference_mode loop, same figures"
EVAL_OURS = "one layer: cifarkit evaluate"
BASELINES = {TRAIN_HAND: None, TRAIN_OURS: TRAIN_HAND, EVAL_HAND: None, EVAL_OURS: EVAL_HAND}


def overhead_us(figures: dict[str, Any], ours: str, hand: str, batch: int) -> float:
    """Microseconds cifarkit adds per step (or batch): the difference of the time per batch."""
    per_batch = [batch / figures[name]["images_per_second"] for name in (ours, hand)]
    return (per_batch[0] - per_batch[1]) * 1e6


def fixed_cost(quick: bool, measure: Measure) -> dict[str, Any]:
    """The four variants measured side by side; ratios and overheads."""
    variants, _ = make_variants(quick)
    rounds, seconds = (2, 0.3) if quick else (31, 0.6)  # short runs (0.3 s each): the pairs stay close in time
    figures = measure(variants, rounds=rounds, seconds=seconds, baselines=BASELINES, bare=TRAIN_HAND,
                      tutorial=TRAIN_HAND, same_precision={}, most=10**9,
                      together=[(TRAIN_HAND, TRAIN_OURS), (EVAL_HAND, EVAL_OURS)])  # fmt: skip
    return {
        "variants": figures,
        "train_ratio": figures[TRAIN_OURS]["ratio"],
        "evaluate_ratio": figures[EVAL_OURS]["ratio"],
        "train_overhead_us_per_step": overhead_us(figures, TRAIN_OURS, TRAIN_HAND, TRAIN_BATCH),
        "evaluate_overhead_us_per_batch": overhead_us(figures, EVAL_OURS, EVAL_HAND, EVAL_BATCH),
        "hand_step_us": TRAIN_BATCH / figures[TRAIN_HAND]["images_per_second"] * 1e6,
        "hand_eval_batch_us": EVAL_BATCH / figures[EVAL_HAND]["images_per_second"] * 1e6,
    }


def lines(result: dict[str, Any]) -> list[str]:
    return [
        "",
        "Fixed costs, one-layer model (flatten + linear), median of interleaved rounds:",
        f"- train_loop {result['train_ratio']:.2f}x the hand loop doing the same work "
        f"({result['train_overhead_us_per_step']:+.0f} us per step of {result['hand_step_us']:.0f} us)",
        f"- evaluate {result['evaluate_ratio']:.2f}x the hand inference loop computing the same figures "
        f"({result['evaluate_overhead_us_per_batch']:+.0f} us per batch of {result['hand_eval_batch_us']:.0f} us)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import bench  # the shared measuring code: calibrated repeats in shuffled rounds

    result = fixed_cost(args.quick, bench.measure)
    result["machine"] = bench.machine()
    if not args.quick:
        (HERE / "results" / "fixed_cost.json").write_text(json.dumps(result, indent=2))
    print("\n".join(lines(result)))
    return 0 if all(math.isfinite(result[k]) for k in ("train_ratio", "evaluate_ratio")) else 1


if __name__ == "__main__":
    sys.exit(main())
