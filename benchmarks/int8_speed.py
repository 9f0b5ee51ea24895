"""int8 against fp32: the program ``cifarkit.export`` writes and its int8 quantization
(``quantize="int8"``: ONNX Runtime's static QDQ, per-channel weights), both run by onnxruntime
in one process, on the tutorial CNN (32x32) and a ResNet-18 (224x224, ten classes; not in ``--quick``).

Batch 256 throughput and batch 1 latency, interleaved in shuffled rounds by ``bench.measure``;
ratios are int8 over fp32 of the same network and batch, per round. The weights are random
(speed does not depend on them), so the int8 programs are made with
:func:`cifarkit.exporting.quantizing.quantize_int8` directly, calibrated on 64 pictures, without
the agreement check that ``export`` makes (a random network's answers are near-ties). The CPU's
int8 instructions are recorded with the figures: without VNNI or AMX int8 is expected to lose.

    python benchmarks/int8_speed.py [--quick]   # writes results/int8.json; also part of benchmarks/bench.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

import cifarkit
from cifarkit.device import cpu_has_int8_instructions
from cifarkit.exporting.quantizing import quantize_int8
from cifarkit.preprocess import IMAGENET_MEAN, IMAGENET_STD, make_record, set_preprocessing

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def _networks(quick: bool) -> dict[str, tuple[torch.nn.Module, int]]:
    torch.manual_seed(0)
    cnn = cifarkit.build_cnn(activation="relu")
    set_preprocessing(cnn, make_record(input_size=(32, 32), mean=MEAN, std=STD))
    if quick:  # a smoke run (the test suite's): the small network only
        return {"tutorial CNN": (cnn, 32)}
    resnet = torchvision.models.resnet18(num_classes=10)
    set_preprocessing(resnet, make_record(input_size=(224, 224), mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)))
    return {"tutorial CNN": (cnn, 32), "ResNet-18 224px": (resnet, 224)}


def _kernels(path: Path) -> dict[str, int]:
    """The operators onnxruntime runs after its own graph optimisations (what QDQ became)."""
    import onnx
    import onnxruntime

    optimized = path.with_name(path.stem + ".optimized.onnx")
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = Counter(node.op_type for node in onnx.load(optimized).graph.node)
    return dict(sorted(counts.items()))


def int8_speed(quick: bool, measure: Any) -> dict[str, Any]:
    """Figures of fp32 and int8 at batch 256 and batch 1 for each network, plus the sizes."""
    import onnxruntime

    rng = np.random.default_rng(0)
    variants: dict[str, Any] = {}
    baselines: dict[str, str | None] = {}
    facts: dict[str, Any] = {}
    batch = 32 if quick else 256
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, side) in _networks(quick).items():
            fp32, int8 = Path(tmp) / f"{side}.onnx", Path(tmp) / f"{side}-int8.onnx"
            cifarkit.export(model, fp32)
            quantize_int8(fp32, int8, rng.integers(0, 256, (64, side, side, 3), dtype=np.uint8))
            big = rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
            one = rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8)
            facts[name] = {"fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
                           "int8_kernels": _kernels(int8)}  # fmt: skip
            for precision, path in (("fp32", fp32), ("int8", int8)):
                session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                variants[f"{name}, {precision}, batch {batch}"] = _runner(session, big)
                variants[f"{name}, {precision}, batch 1 (latency)"] = _runner(session, one)
            for shape in (f"batch {batch}", "batch 1 (latency)"):
                baselines[f"{name}, fp32, {shape}"] = None
                baselines[f"{name}, int8, {shape}"] = f"{name}, fp32, {shape}"
        first = next(iter(variants))
        rounds, seconds = (2, 0.2) if quick else (5, 2.0)
        figures = measure(variants, rounds=rounds, seconds=seconds, bare=first, tutorial=first,
                          baselines=baselines, same_precision={})  # fmt: skip
    return {
        "variants": figures,
        "networks": facts,
        "batch": batch,
        "int8_instructions": cpu_has_int8_instructions(),
        "onnxruntime": onnxruntime.__version__,
    }


def _runner(session: Any, pixels: np.ndarray) -> Any:
    def run(n: int) -> int:
        calls = max(1, n // len(pixels))
        for _ in range(calls):
            session.run(["probabilities"], {"pixels": pixels})
        return calls * len(pixels)

    return run


def lines(figures: dict[str, Any]) -> list[str]:
    """The Markdown lines ``bench.table`` prints for these figures."""
    out = [
        "",
        f"| int8 against fp32 (onnxruntime {figures['onnxruntime']}; int8 instructions (VNNI/AMX): "
        f"{figures['int8_instructions']}) | img/s | int8 / fp32 |",
        "|---|---|---|",
    ]
    for name, r in figures["variants"].items():
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        out.append(f"| {name} | {r['images_per_second']:.1f} | {ratio} |")
    for name, f in figures["networks"].items():
        out.append(f"{name}: {f['fp32_bytes']:,} bytes fp32, {f['int8_bytes']:,} int8 "
                   f"({f['fp32_bytes'] / f['int8_bytes']:.1f}x smaller)")  # fmt: skip
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    result = {"machine": bench.machine(), **int8_speed(quick, bench.measure)}
    if not quick:
        out = Path(__file__).resolve().parent / "results" / "int8.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    print("\n".join(lines(result)))
