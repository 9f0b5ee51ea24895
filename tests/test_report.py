"""The HTML report: self-contained, rendered by a real headless Chromium, nothing written on failure."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

import cifarkit
from cifarkit import build_cnn, calibrate, load_image_folder, synthetic_cifar10, write_report
from cifarkit.errors import ClassIndexError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs chromium (apt-get install -y chromium; .ci/run does)"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report") / "pictures"
    data = synthetic_cifar10(60, seed=4)
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        path = root / data.classes[int(label)] / f"pic-{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return root


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_cnn(activation="relu")
    cifarkit.train_loop(net, synthetic_cifar10(1000, seed=0).loader(batch_size=50, seed=0), epochs=1, device="cpu",
                        progress=False, optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9))  # fmt: skip
    return net


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@needs_chromium
def test_the_report_renders_in_chromium_with_every_picture_loaded(
    model: torch.nn.Module, folder: Path, tmp_path: Path
) -> None:
    pytest.importorskip("captum")
    data = load_image_folder(folder, size=32, progress=False)
    out = write_report(model, data, tmp_path / "report.html", k=6, device="cpu", title="check")
    text = out.read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing from elsewhere
    for heading in ("Accuracy", "Per class", "Confusion matrix", "Most confused", "worst pictures", "Calibration"):
        assert heading in text
    worst = interpret_sources(model, data)
    assert all(Path(source).name in text for source in worst)  # the worst files, by name
    dom = _chromium("--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None
    images = re.search(r'data-images="(\d+)"', body.group(0))
    loaded = re.search(r'data-loaded="(\d+)"', body.group(0))
    assert images is not None and loaded is not None
    assert int(images.group(1)) == int(loaded.group(1)) == text.count("<img")  # every picture decoded
    shot = tmp_path / "page.png"
    assert _chromium(f"--screenshot={shot}", "--window-size=1100,3000", out.as_uri()).returncode == 0
    with Image.open(shot) as page:
        colours = page.convert("RGB").resize((110, 300)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50  # text, tables and pictures drawn, not a blank page


def interpret_sources(model: torch.nn.Module, data: cifarkit.ImageTensors) -> list[str]:
    return [r.source for r in cifarkit.interpret(model, data, device="cpu").top_losses(6) if r.source]


def test_calibration_section_uses_the_models_temperature(model: torch.nn.Module, tmp_path: Path) -> None:
    data = synthetic_cifar10(80, seed=7)
    plain = write_report(model, data, tmp_path / "a.html", k=2, heatmap=False, device="cpu").read_text()
    assert "fitted on these pictures (not stored in the model" in plain
    calibrated = build_cnn(activation="relu")
    calibrated.load_state_dict(model.state_dict())
    report = calibrate(calibrated, synthetic_cifar10(300, seed=8).loader(batch_size=100), device="cpu")
    text = write_report(calibrated, data, tmp_path / "b.html", k=2, heatmap=False, device="cpu").read_text()
    assert f"the model&#x27;s temperature {report.temperature:.3f}" in text


def test_nothing_is_written_when_the_report_fails(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    with pytest.raises(ClassIndexError):
        write_report(build_cnn(3), synthetic_cifar10(30), out, heatmap=False, device="cpu")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_pages_figures_are_evaluates_from_one_pass(model: torch.nn.Module) -> None:
    from cifarkit.evaluation.report import _figures

    data = synthetic_cifar10(300, seed=9)
    page = _figures(cifarkit.interpret(model, data, device="cpu"))
    expected = cifarkit.evaluate(model, data.loader(batch_size=64, shuffle=False), device="cpu")
    assert page.count == expected.count and page.accuracy == pytest.approx(expected.accuracy)
    assert page.loss == pytest.approx(expected.loss, rel=1e-5)
    assert page.topk == pytest.approx(expected.topk)
    assert torch.equal(page.confusion, expected.confusion)  # type: ignore[arg-type]
    assert page.per_class_accuracy == pytest.approx(expected.per_class_accuracy, nan_ok=True)
