"""The audit's speed: files, duplicates and near duplicates for 10,000 pictures of 32x32 (written
as PNG files, 10 classes), and the label errors' folds on 2,000 of them, whole calls timed.

    python benchmarks/audit_speed.py        # also part of benchmarks/bench.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from cifarkit.auditing import audit


def _folder(root: Path, n: int) -> None:
    """``n`` distinct pictures, as varied as photographs at 32x32: smooth random colour fields with
    detail (the built-in shapes would do for timing, but they are near copies of one another)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 255
    smooth = F.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)
    images = (smooth + torch.randn(n, 3, 32, 32, generator=g) * 12).round().clamp(0, 255).to(torch.uint8)
    for i, image in enumerate(images):
        folder = root / f"class{i % 10}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")


def audit_speed(quick: bool) -> dict[str, Any]:
    n, labelled = (1_000, 400) if quick else (10_000, 2_000)
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        big.mkdir()
        small.mkdir()
        _folder(big, n)
        _folder(small, labelled)
        start = time.perf_counter()
        report = audit(big, label_errors=False)
        cheap = time.perf_counter() - start
        start = time.perf_counter()
        audit(small, folds=5, epochs=2 if quick else 8, device="cpu")
        folds = time.perf_counter() - start
    return {"pictures": n, "cheap_checks_seconds": cheap, "findings": len(report.findings),
            "label_error_pictures": labelled, "label_errors_seconds": folds}  # fmt: skip


def lines(result: dict[str, Any]) -> list[str]:
    return [
        "",
        f"audit: files, duplicates and near duplicates of {result['pictures']:,} pictures of 32x32 in "
        f"{result['cheap_checks_seconds']:.1f} s ({result['findings']} findings); label errors (5 folds) of "
        f"{result['label_error_pictures']:,} pictures in {result['label_errors_seconds']:.0f} s",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print("\n".join(lines(audit_speed(args.quick))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
