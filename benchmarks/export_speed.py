"""An exported program against eager PyTorch: the tutorial CNN (ReLU) with a normalizing record,
uint8 pixels ``(N, 32, 32, 3)`` in, probabilities out, in one process.

- eager: ``inference_mode``, the model in channels_last, the pixels taken as they come (an NHWC
  array seen as NCHW is already channels_last), /255, mean/std, softmax;
- onnxruntime: the file ``cifarkit.export`` writes, ``session.run(["probabilities"], ...)``.

Batch 256 throughput and batch 1 latency (one call per image), interleaved in shuffled rounds by
``bench.measure``; ratios are onnxruntime over eager, per round. ``bench.py`` calls
:func:`export_speed`; run alone: ``python benchmarks/export_speed.py [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cifarkit
from cifarkit.preprocess import make_record, set_preprocessing

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
EAGER_256, ORT_256 = "eager PyTorch, batch 256", "onnxruntime, batch 256"
EAGER_1, ORT_1 = "eager PyTorch, batch 1 (latency)", "onnxruntime, batch 1 (latency)"


def _eager(model: torch.nn.Module) -> Any:
    mean = torch.tensor(MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(STD).reshape(1, 3, 1, 1)

    def run(pixels: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()  # (N, 3, H, W), channels_last strides
            return torch.softmax(model((x / 255 - mean) / std), dim=1)

    return run


def export_speed(quick: bool, measure: Any) -> dict[str, Any]:
    """Figures of the four variants, as ``bench.measure`` returns them, plus the export report."""
    import onnxruntime

    torch.manual_seed(0)
    model = cifarkit.build_cnn(activation="relu").eval().to(memory_format=torch.channels_last)
    set_preprocessing(model, make_record(input_size=(32, 32), mean=MEAN, std=STD))
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    one = [rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8) for _ in range(64)]
    with tempfile.TemporaryDirectory() as tmp:
        report = cifarkit.export(model, Path(tmp) / "cnn.onnx")
        session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
        eager = _eager(model)

        def batches(fn: Any) -> Any:
            def run(n: int) -> int:
                for _ in range(max(1, n // 256)):
                    fn(big)
                return max(1, n // 256) * 256

            return run

        def singles(fn: Any) -> Any:
            def run(n: int) -> int:
                for i in range(n):
                    fn(one[i % len(one)])
                return n

            return run

        def ort(pixels: np.ndarray) -> Any:
            return session.run(["probabilities"], {"pixels": pixels})[0]

        assert np.allclose(ort(big), eager(big).numpy(), atol=1e-4)  # the same answers, or no race
        variants = {EAGER_256: batches(eager), ORT_256: batches(ort), EAGER_1: singles(eager), ORT_1: singles(ort)}
        rounds, seconds = (2, 0.2) if quick else (5, 2.0)
        figures = measure(variants, rounds=rounds, seconds=seconds, bare=EAGER_256, tutorial=EAGER_256,
                          baselines={ORT_1: EAGER_1, EAGER_1: None}, same_precision={},
                          together=[(EAGER_256, ORT_256), (EAGER_1, ORT_1)])  # fmt: skip
    return {
        "variants": figures,
        "throughput_ratio": figures[ORT_256]["ratio"],
        "latency_ratio": figures[ORT_1]["ratio"],  # calls per second: eager latency / onnxruntime latency
        "latency_ms": {
            EAGER_1: 1000 / figures[EAGER_1]["images_per_second"],
            ORT_1: 1000 / figures[ORT_1]["images_per_second"],
        },
        "file_bytes": report.file_bytes,
        "onnxruntime": onnxruntime.__version__,
    }


def lines(figures: dict[str, Any]) -> list[str]:
    """The Markdown lines ``bench.table`` prints for these figures."""
    out = [
        "",
        "| exported program (tutorial CNN, uint8 pixels in, probabilities out) | img/s | x eager |",
        "|---|---|---|",
    ]
    for name, r in figures["variants"].items():
        ratio = "1.00" if r["ratio"] is None else f"{r['ratio']:.2f}"
        out.append(f"| {name} | {r['images_per_second']:.0f} | {ratio} |")
    ms = figures["latency_ms"]
    out.append(f"Batch-1 latency: eager {ms[EAGER_1]:.3f} ms, onnxruntime {ms[ORT_1]:.3f} ms "
               f"(onnxruntime {figures['onnxruntime']})")  # fmt: skip
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench

    bench.run_alone(export_speed, lines, __doc__)
