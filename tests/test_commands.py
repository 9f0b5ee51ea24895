"""The commands for trusting a model: cifarkit calibrate, cifarkit report, predict --reject-below."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

import cifarkit
from cifarkit import build_cnn, synthetic_cifar10
from cifarkit.cli import main
from cifarkit.preprocess import preprocessing_of


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A trained, over-confident CNN in a file, and a folder of labelled pictures."""
    root = tmp_path_factory.mktemp("commands")
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    data = synthetic_cifar10(1000, seed=0)
    cifarkit.train_loop(model, data.loader(batch_size=50, seed=0), epochs=2, device="cpu", progress=False,
                        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))  # fmt: skip
    with torch.no_grad():
        model.sequential[-1].weight.mul_(4)
    path = cifarkit.save(model, root / "model.pt")
    pictures = synthetic_cifar10(120, seed=1)
    for i, (image, label) in enumerate(zip(pictures.images, pictures.labels, strict=True)):
        file = root / "pictures" / pictures.classes[int(label)] / f"{i:03d}.png"
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(file)
    return path, root / "pictures"


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue()


def test_calibrate_writes_the_calibrated_model_only(saved: tuple[Path, Path], tmp_path: Path) -> None:
    path, folder = saved
    out = tmp_path / "calibrated.pt"
    status, printed = _run(["calibrate", str(path), "--data", str(folder), "-o", str(out), "--device", "cpu"])
    assert status == 0 and "temperature" in printed and "expected calibration error" in printed
    temperature = preprocessing_of(cifarkit.load(out))["temperature"]  # type: ignore[index]
    assert temperature > 0 and f"{temperature:.3f}" in printed
    assert "temperature" not in (preprocessing_of(cifarkit.load(path)) or {})  # the original is untouched
    assert cifarkit.inspect(out).class_names == cifarkit.inspect(path).class_names


def test_predict_reject_below_prints_unknown(saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, folder = saved
    pictures = sorted(str(p) for p in (folder / "disc").iterdir())
    best = [p.probability for p in cifarkit.predict(cifarkit.load(path), pictures, device="cpu")]
    picture = pictures[min(range(len(best)), key=best.__getitem__)]  # the least sure answer
    above = (min(best) + 1) / 2
    status, printed = _run(["predict", str(path), picture, "--reject-below", f"{above}", "--device", "cpu"])
    assert status == 0 and printed.startswith(f"{picture}: unknown (best guess ")
    status, printed = _run(["predict", str(path), picture, "--reject-below", "0", "--device", "cpu"])
    assert status == 0 and "unknown" not in printed
    with pytest.raises(SystemExit) as info:
        main(["predict", str(path), picture, "--reject-below", "2"])
    assert info.value.code == 2 and "--reject-below must be a probability" in capsys.readouterr().err


def test_report_command_writes_one_page(saved: tuple[Path, Path], tmp_path: Path) -> None:
    path, folder = saved
    out = tmp_path / "report.html"
    status, printed = _run(["report", str(path), "--data", str(folder), "-o", str(out), "--top", "4",
                            "--no-heatmaps", "--device", "cpu"])  # fmt: skip
    assert status == 0 and f"wrote {out}" in printed
    text = out.read_text()
    model_part, _, pictures_part = text.partition("<h2>The pictures themselves</h2>")  # the audit's section
    assert "model.pt on" in text and model_part.count("<h2>") == 6 and ".png</code>" not in model_part
    assert "Class balance" in pictures_part
    assert any(f"/{name}/" in text for name in synthetic_cifar10(1).classes)  # files named by folder


def test_a_failing_calibration_writes_nothing(saved: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = saved
    folder = tmp_path / "three"
    for name in ("a", "b", "c"):
        (folder / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / name / "x.png")
    out = tmp_path / "never.pt"
    assert main(["calibrate", str(path), "--data", str(folder), "-o", str(out), "--device", "cpu"]) == 1
    assert not out.exists()
