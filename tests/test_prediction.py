"""predict: files, PIL images and tensors give exactly the model's own softmax answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit import build_cnn, predict, synthetic_cifar10
from cifarkit.errors import ImageReadError, InvalidOptionError, ShapeError


def expected(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[int], list[float]]:
    """The answer computed by hand: eval mode, softmax over the logits of a (N, 3, 32, 32) batch."""
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    model.train()
    top_p, top_i = probs.max(1)
    return top_i.tolist(), top_p.tolist()


def test_predict_agrees_with_the_model_for_files_pil_images_and_tensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    data = synthetic_cifar10(3, seed=0)
    picture = Image.fromarray(data.images[0].permute(1, 2, 0).numpy())
    big = picture.resize((64, 48))
    path = tmp_path / "cat.png"
    big.save(path)  # PNG: lossless, so the file holds exactly `big`
    classes = [f"c{i}" for i in range(10)]
    preds = predict(
        model, [path, picture, data.images[1], data.images[1:3].float() / 255], classes=classes, device="cpu"
    )
    assert model.training  # the caller's mode is back

    big_t = torch.from_numpy(np.array(big)).permute(2, 0, 1).float()[None] / 255
    resized = torch.nn.functional.interpolate(
        big_t * 255, size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )
    resized = resized.round().clamp(0, 255) / 255  # the one picture path rounds to uint8 pixels
    x = torch.cat(
        [resized, data.images[0:1].float() / 255, data.images[1:2].float() / 255, data.images[1:3].float() / 255]
    )
    indices, probs = expected(model, x)
    assert [p.index for p in preds] == indices
    assert [p.probability for p in preds] == pytest.approx(probs, rel=1e-5)
    assert [p.label for p in preds] == [classes[i] for i in indices]
    assert predict(model, data.images[0], device="cpu")[0].label is None  # no class names given


def test_predict_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match=r"notes\.png"):
        predict(build_cnn(), bad, device="cpu")
    with pytest.raises(ImageReadError, match=r"missing\.jpg"):
        predict(build_cnn(), tmp_path / "missing.jpg", device="cpu")
    with pytest.raises(ShapeError):
        predict(build_cnn(), torch.zeros(4, 32, 32), device="cpu")
    with pytest.raises(InvalidOptionError):
        predict(build_cnn(), 3.5, device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predict_on_cuda_agrees_with_the_cpu() -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    images = synthetic_cifar10(8, seed=0).images
    on_cpu = predict(model, images, device="cpu")
    on_gpu = predict(model, images, device="cuda")
    assert next(model.parameters()).is_cuda
    assert [p.probability for p in on_gpu] == pytest.approx([p.probability for p in on_cpu], rel=1e-3)
