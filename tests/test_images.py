"""Reading pictures: every input kind becomes the same float tensor in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit.errors import ImageReadError, InvalidOptionError, ShapeError
from cifarkit.images import image_batch, image_tensor


def test_files_pil_images_and_tensors_agree(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 6, 3), dtype=np.uint8)  # (H, W, C)
    truth = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "b.png")  # alpha is dropped
    for item in (tmp_path / "a.png", str(tmp_path / "b.png"), Image.fromarray(pixels), truth, (truth * 255).byte()):
        assert torch.equal(image_tensor(item), truth)
    gray = image_tensor(Image.fromarray(pixels[:, :, 0]))  # a grayscale picture becomes RGB
    assert gray.shape == (3, 8, 6) and torch.equal(gray[0], gray[2])


def test_batches_are_resized_with_antialiasing() -> None:
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2  # finest possible pattern
    image = checker.float().expand(3, 64, 64)
    batch = image_batch([image, torch.zeros(2, 3, 32, 32)], size=32)
    assert batch.shape == (3, 3, 32, 32)
    # averaged to grey (edges within 2%), where plain bilinear sampling would alias to 0 or 1
    assert float((batch[0] - 0.5).abs().max()) < 0.02


def test_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageReadError, match=r"x\.jpg"):
        image_tensor(tmp_path / "x.jpg")
    with pytest.raises(ShapeError, match=r"\(3, H, W\)"):
        image_tensor(torch.zeros(1, 8, 8))
    with pytest.raises(InvalidOptionError, match="got list"):
        image_tensor([1, 2, 3])
