"""More accuracy from the same epochs, measured: a short run with and without EMA, MixUp and
CutMix on real pictures (scikit-learn's bundled handwritten digits, which install offline), flip
test-time augmentation on pictures that may be mirrored (the built-in shapes: digits must not
be), several seeds each; and what EMA costs per step and TTA per picture.

    python benchmarks/accuracy.py          # writes results/accuracy.json (a few minutes)

Reported, never asserted: a few seeds of a short run are a noisy measure of a small effect.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import cifarkit
from cifarkit.data.images import resize_pixels

HERE = Path(__file__).resolve().parent


def digits(seed: int) -> tuple[cifarkit.ImageTensors, cifarkit.ImageTensors]:
    """The 1,797 8x8 digits of scikit-learn, resized to 32x32 RGB; 500 held out (by ``seed``)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    pixels = torch.tensor(raw.images * (255 / 16), dtype=torch.float32).round().to(torch.uint8)  # (N, 8, 8)
    images = resize_pixels(pixels[:, None].expand(-1, 3, -1, -1).contiguous(), 32)
    labels = torch.tensor(raw.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    data = cifarkit.ImageTensors(images, labels, [str(d) for d in range(10)])
    return data.subset(order[500:]), data.subset(order[:500])


def run(seed: int, epochs: int, *, ema: float | None = None, mix: str | None = None) -> float:
    train, test = digits(seed)
    torch.manual_seed(seed)
    model = cifarkit.build_cnn(activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = train.loader(batch_size=64, seed=seed, mirror=False, augment=True, mix=mix)  # type: ignore[arg-type]
    callbacks = [cifarkit.EMA(ema)] if ema is not None else []
    cifarkit.train_loop(model, loader, epochs=epochs, optimizer=optimizer, device="cpu", progress=False,
                        callbacks=callbacks)  # fmt: skip
    return cifarkit.evaluate(model, test.loader(batch_size=256, shuffle=False), device="cpu").accuracy


def tta_effect(seed: int, epochs: int) -> tuple[float, float]:
    """A model trained without flips, on shapes that look the same mirrored: what TTA adds."""
    train, test = cifarkit.synthetic_cifar10(3000, seed=seed), cifarkit.synthetic_cifar10(1000, seed=seed + 100)
    torch.manual_seed(seed)
    model = cifarkit.build_cnn(activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    cifarkit.train_loop(model, train.loader(batch_size=64, seed=seed), epochs=max(1, epochs // 2),
                        optimizer=optimizer, device="cpu", progress=False)  # fmt: skip
    loader = test.loader(batch_size=256, shuffle=False)
    return tuple(cifarkit.evaluate(model, loader, device="cpu", tta=t).accuracy for t in (None, "flip"))  # type: ignore[return-value]


def costs(rounds: int = 5) -> dict[str, float]:
    """EMA's share of a training step of the tutorial CNN, and TTA's time per picture."""
    data = cifarkit.synthetic_cifar10(2048, seed=0)
    model = cifarkit.build_cnn(activation="relu")
    times: dict[str, list[float]] = {"plain": [], "ema": []}
    for _ in range(rounds):
        for name in ("plain", "ema"):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            start = time.perf_counter()
            cifarkit.train_loop(model, data.loader(batch_size=64, seed=0), optimizer=optimizer, device="cpu",
                                progress=False, callbacks=[cifarkit.EMA()] if name == "ema" else [])  # fmt: skip
            times[name].append(time.perf_counter() - start)
    loader = data.loader(batch_size=256, shuffle=False)
    tta: dict[str, list[float]] = {"none": [], "flip": []}
    for _ in range(rounds):
        for name in ("none", "flip"):
            start = time.perf_counter()
            cifarkit.evaluate(model, loader, device="cpu", tta=None if name == "none" else "flip")
            tta[name].append(time.perf_counter() - start)
    plain, ema = statistics.median(times["plain"]), statistics.median(times["ema"])
    return {
        "ema_share_of_a_step": ema / plain - 1,
        "tta_ms_per_picture": (statistics.median(tta["flip"]) - statistics.median(tta["none"])) / len(data) * 1000,
        "eval_ms_per_picture": statistics.median(tta["none"]) / len(data) * 1000,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": len(values)}  # fmt: skip


def accuracy(quick: bool) -> dict[str, Any]:
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    epochs = 2 if quick else 6
    variants = {"plain": {}, "EMA(0.9)": {"ema": 0.9}, "MixUp": {"mix": "mixup"}, "CutMix": {"mix": "cutmix"}}
    held_out = {name: summary([run(s, epochs, **options) for s in seeds]) for name, options in variants.items()}  # type: ignore[arg-type]
    pairs = [tta_effect(s, epochs) for s in seeds]
    return {
        "digits_held_out_accuracy": held_out,
        "shapes_tta": {"plain": summary([a for a, _ in pairs]), "flip": summary([b for _, b in pairs])},
        "epochs": epochs,
        "seeds": seeds,
        "costs": costs(2 if quick else 5),
    }


def lines(result: dict[str, Any]) -> list[str]:
    out = ["", f"Accuracy from the same {result['epochs']} epochs (mean ± std over {len(result['seeds'])} seeds):"]
    for name, s in result["digits_held_out_accuracy"].items():
        out.append(f"- digits, {name}: {s['mean']:.2%} ± {s['std']:.2%}")
    t = result["shapes_tta"]
    out.append(f"- shapes, no TTA {t['plain']['mean']:.2%} ± {t['plain']['std']:.2%}; "
               f"flip TTA {t['flip']['mean']:.2%} ± {t['flip']['std']:.2%}")  # fmt: skip
    c = result["costs"]
    out.append(f"- EMA costs {c['ema_share_of_a_step']:+.1%} of a training step; flip TTA "
               f"{c['tta_ms_per_picture']:.3f} ms per picture (evaluation alone "
               f"{c['eval_ms_per_picture']:.3f} ms)")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import bench

    result = accuracy(args.quick)
    result["machine"] = bench.machine()
    if not args.quick:
        (HERE / "results" / "accuracy.json").write_text(json.dumps(result, indent=2))
    print("\n".join(lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
