"""interpret: top losses with their files, most confused pairs, Grad-CAM heatmaps (Captum)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

import cifarkit
from cifarkit import build_cnn, evaluate, load_image_folder, synthetic_cifar10
from cifarkit.errors import ClassIndexError, EmptyDataError, InvalidOptionError, MissingExtraError, ShapeError
from cifarkit.evaluation.interpretation import cam_layer, heatmaps, interpret
from cifarkit.models.zoo import BACKBONES

CLASSES = ("disc", "square", "ring")


def _write(folder: Path, data: Any, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        label = int(data.labels[i])
        if label >= len(CLASSES):
            continue
        path = folder / CLASSES[label] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, list[str]]:
    """A CNN trained on three shapes, and a folder of new pictures with three files in the wrong class."""
    root = tmp_path_factory.mktemp("interpret")
    everything = synthetic_cifar10(10_000, seed=0)
    train = everything.subset((everything.labels < len(CLASSES)).nonzero().squeeze(1))
    train = cifarkit.ImageTensors(train.images, train.labels, list(CLASSES))
    torch.manual_seed(0)
    model = build_cnn(3, activation="relu")
    cifarkit.train_loop(model, train.loader(batch_size=32, seed=0), epochs=3, device="cpu", progress=False,
                        optimizer=torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9))  # fmt: skip
    paths = _write(root / "check", synthetic_cifar10(300, seed=1), 300)
    wrong = []
    for path, into in zip(paths[:3], ("square", "ring", "disc"), strict=True):
        into = into if path.parent.name != into else "disc" if into != "disc" else "square"
        target = path.parent.parent / into / f"planted-{path.name}"
        shutil.move(path, target)
        wrong.append(str(target))
    return model, root / "check", wrong


def test_mislabelled_files_come_out_first_with_their_paths(planted: tuple[nn.Module, Path, list[str]]) -> None:
    model, folder, wrong = planted
    data = load_image_folder(folder, size=32, classes=list(CLASSES), progress=False)
    found = interpret(model, data, device="cpu")
    assert len(found) == len(data)
    top = found.top_losses(3)
    assert sorted(r.source for r in top) == sorted(wrong)  # type: ignore[type-var]
    assert all(r.predicted != r.true and r.probability < 0.5 for r in top)
    assert [r.loss for r in top] == sorted((r.loss for r in top), reverse=True)
    assert top[0].loss == pytest.approx(float(found.losses.max()))
    # the split keeps the sources: the worst of the held-out part are still named
    _, held_out = load_image_folder(folder, size=32, classes=list(CLASSES), val_fraction=0.5, seed=0, progress=False)
    assert all(r.source in (held_out.sources or []) for r in interpret(model, held_out, device="cpu").top_losses(5))


def test_most_confused_agrees_with_the_confusion_matrix(planted: tuple[nn.Module, Path, list[str]]) -> None:
    model, folder, _ = planted
    data = load_image_folder(folder, size=32, classes=list(CLASSES), progress=False)
    found = interpret(model, data, device="cpu")
    confusion = evaluate(model, data.loader(batch_size=64, shuffle=False), device="cpu").confusion
    assert confusion is not None
    expected = sorted(((CLASSES[t], CLASSES[p], int(confusion[t, p])) for t in range(3) for p in range(3)
                       if t != p and int(confusion[t, p]) > 0), key=lambda r: (-r[2], CLASSES.index(r[0])))  # fmt: skip
    assert found.most_confused() == expected
    assert all(count >= 2 for *_, count in found.most_confused(min_count=2))


def test_one_forward_per_batch_and_the_same_figures_from_a_loader() -> None:
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = build_cnn(), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out: torch.Tensor = self.inner(x)
            return out

    model = Counting()
    data = synthetic_cifar10(600, seed=3)
    found = interpret(model, data, device="cpu")
    assert model.calls == 3 and found.sources is None  # 256-picture batches: the cost of one evaluate
    loss = evaluate(model, data.loader(batch_size=256, shuffle=False), device="cpu").loss
    assert float(found.losses.mean()) == pytest.approx(loss, rel=1e-5)
    from_loader = interpret(model, data.loader(batch_size=100, shuffle=False), device="cpu")
    torch.testing.assert_close(from_loader.losses, found.losses)
    batches = list(data.loader(batch_size=100, shuffle=False))  # float pixels in [0, 1]
    plain = interpret(model, batches, device="cpu")
    assert torch.equal(plain.pictures, found.pictures) and plain.classes == [str(i) for i in range(10)]


def _grad_cam_by_hand(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    saved: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: saved.__setitem__("a", o))
    model.eval()
    out = model(x)
    handle.remove()
    activation = saved["a"]
    grads = torch.autograd.grad(out.gather(1, target.reshape(-1, 1)).sum(), activation)[0]
    cam = (grads.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True)
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear").clamp_min(0)[:, 0].detach()
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12).reshape(-1, 1, 1)


def test_heatmaps_are_grad_cam_on_the_chosen_layer(planted: tuple[nn.Module, Path, list[str]]) -> None:
    pytest.importorskip("captum")
    model = planted[0]
    x = synthetic_cifar10(6, seed=5).images.float() / 255
    target = model(x).argmax(1)
    maps = heatmaps(model, x, target)
    assert maps.shape == (6, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    layer = model.get_submodule(cam_layer(model))
    torch.testing.assert_close(maps, _grad_cam_by_hand(model, layer, x, target), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_every_adapted_network_has_a_heatmap_layer(arch: str) -> None:
    pytest.importorskip("captum")
    model = cifarkit.adapt(arch, num_classes=3)
    assert cam_layer(model) == BACKBONES[arch].cam_layer
    maps = heatmaps(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 2]))
    assert maps.shape == (2, 32, 32) and bool(torch.isfinite(maps).all())


def test_plot_top_losses_and_the_html_gallery(planted: tuple[nn.Module, Path, list[str]]) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("captum")
    model, folder, wrong = planted
    found = interpret(model, load_image_folder(folder, size=32, classes=list(CLASSES), progress=False), device="cpu")
    fig = found.plot_top_losses(4)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 4 and len(axes[0].get_images()) == 2  # the picture and its heatmap
    titles = " ".join(ax.get_title() for ax in axes)
    assert all(Path(w).name in titles for w in wrong)
    assert len(found.plot_top_losses(2, heatmap=False).axes[0].get_images()) == 1
    gallery = found._repr_html_()
    assert gallery.count("<img") == 9 and gallery.count("data:image/png;base64,") == 9
    assert all(Path(w).name in gallery for w in wrong)


def test_clear_errors() -> None:
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(InvalidOptionError, match="no convolutional layer"):
        cam_layer(flat)
    data = synthetic_cifar10(20)
    with pytest.raises(ShapeError, match="labelled pictures"):
        interpret(build_cnn(), [data.images.float() / 255], device="cpu")
    with pytest.raises(ShapeError, match="labelled pictures"):
        interpret(build_cnn(), data.images, device="cpu")
    with pytest.raises(ClassIndexError, match="labels run from 0 to 9 but the model has 3 classes"):
        interpret(build_cnn(3), data, device="cpu")
    with pytest.raises(EmptyDataError):
        interpret(build_cnn(), [], device="cpu")
    with pytest.raises(InvalidOptionError, match="has no layer 'nope'"):
        heatmaps(build_cnn(), torch.rand(1, 3, 32, 32), torch.tensor([0]), layer="nope")
    with pytest.raises(InvalidOptionError, match="k must be"):
        interpret(build_cnn(), data, device="cpu").top_losses(0)


def test_a_missing_captum_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(MissingExtraError, match=r"cifarkit\[gradcam\]"):
        heatmaps(build_cnn(), torch.rand(1, 3, 32, 32), torch.tensor([0]))
