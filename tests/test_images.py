"""Reading pictures: every input kind becomes the same float tensor in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit import build_cnn, load_image_folder
from cifarkit.data.images import image_batch, image_tensor, read_pixels, resize_pixels
from cifarkit.errors import ImageReadError, InvalidOptionError, ShapeError
from cifarkit.evaluation.inference import class_probabilities


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


def test_one_picture_path_gives_the_same_pixels_in_training_and_prediction(tmp_path: Path) -> None:
    """A photo (JPEG) and a PNG of other sizes: load_image_folder, read_pixels and predict agree."""
    rng = np.random.default_rng(1)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8) * 255, size=(150, 200), mode="bicubic")
    photo = (smooth[0].permute(1, 2, 0) + torch.from_numpy(rng.normal(0, 20, (150, 200, 3)))).clamp(0, 255)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    Image.fromarray(photo.numpy().astype(np.uint8)).save(tmp_path / "cat" / "photo.jpg", quality=85)
    Image.fromarray(rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)).save(tmp_path / "dog" / "small.png")
    data = load_image_folder(tmp_path, size=32)
    model = build_cnn(activation="relu")
    for index, file in enumerate([tmp_path / "cat" / "photo.jpg", tmp_path / "dog" / "small.png"]):
        pixels = read_pixels(file, 32)
        assert pixels.dtype == torch.uint8 and torch.equal(data.images[index], pixels)  # the same uint8 tensor
        # what predict feeds the model is exactly those pixels / 255
        assert torch.equal(image_batch([file], size=32), pixels[None].float() / 255)
        assert torch.equal(class_probabilities(model, file), class_probabilities(model, data.images[index]))


def test_resize_is_exact_at_the_size_and_rounds_elsewhere() -> None:
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    assert resize_pixels(pixels, 32) is pixels
    out = resize_pixels(pixels, (20, 45))
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 20, 45)
    want = torch.nn.functional.interpolate(pixels.float(), size=(20, 45), mode="bilinear", antialias=True)
    assert torch.equal(out, want.round().clamp(0, 255).to(torch.uint8))
    with pytest.raises(InvalidOptionError, match=r"\(height, width\)"):
        resize_pixels(pixels, (0, 3))
    with pytest.raises(ShapeError, match="uint8"):
        resize_pixels(pixels.float(), 16)
    assert torch.equal(image_tensor(pixels.long()), pixels.float() / 255)  # integer pixels of any dtype
    with pytest.raises(InvalidOptionError, match=r"0\.\.255"):
        image_tensor(pixels.long() * 2)
