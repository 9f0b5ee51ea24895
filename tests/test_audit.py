"""The audit on planted faults: real pictures (tiles of scikit-learn's two sample photographs,
labelled by the photograph they come from) with known duplicates, leaks, near copies, broken and
misnamed files, blank, small and stretched pictures, an undersized class and relabelled files;
each kind found by path, and a clean folder gives nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

import cifarkit
from cifarkit.auditing import KINDS, audit
from cifarkit.errors import InvalidOptionError

pytest.importorskip("sklearn")


def _tiles() -> dict[str, list[Image.Image]]:
    """Textured 64x64 tiles of the two photographs: two classes of real pictures."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    out: dict[str, list[Image.Image]] = {}
    for name, photo in zip(("china", "flower"), photos.images, strict=True):
        tiles = [photo[r : r + 64, c : c + 64] for r in range(0, 384, 64) for c in range(0, 640, 64)]
        out[name] = [Image.fromarray(t) for t in tiles if t.std() > 25][:24]
    return out


def _write(root: Path, pictures: dict[str, list[Image.Image]]) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for name, images in pictures.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        files[name] = []
        for i, image in enumerate(images):
            path = root / name / f"{i:03d}.png"
            image.save(path)
            files[name].append(path)
    return files


@pytest.fixture(scope="module")
def tiles() -> dict[str, list[Image.Image]]:
    return _tiles()


def test_a_clean_folder_gives_no_finding(tmp_path: Path, tiles: dict[str, list[Image.Image]]) -> None:
    _write(tmp_path / "train", {k: v[:16] for k, v in tiles.items()})
    _write(tmp_path / "test", {k: v[16:] for k, v in tiles.items()})
    report = audit(tmp_path / "train", against=tmp_path / "test", label_errors=False)
    assert report.ok, str(report)
    assert report.counts() == dict.fromkeys(KINDS, 0) and report.pictures == {"data": 32, "against 1": 16}
    assert "nothing found" in str(report)


@pytest.fixture(scope="module")
def planted(
    tmp_path_factory: pytest.TempPathFactory, tiles: dict[str, list[Image.Image]]
) -> tuple[Any, dict[str, Any]]:
    root = tmp_path_factory.mktemp("planted")
    train, test = root / "train", root / "test"
    files = _write(train, {k: v[:12] for k, v in tiles.items()})
    _write(test, {k: v[12:18] for k, v in tiles.items()})  # tiles 18 and up: the planted extras
    china, flower = files["china"], files["flower"]
    plan: dict[str, Any] = {}
    shutil.copy(china[0], train / "china" / "copy_of_000.png")  # a duplicate in its class
    plan["duplicate"] = {str(china[0]), str(train / "china" / "copy_of_000.png")}
    shutil.copy(china[1], train / "flower" / "china_001.png")  # one picture, two labels
    plan["conflicting_labels"] = {str(china[1]), str(train / "flower" / "china_001.png")}
    shutil.copy(flower[2], test / "flower" / "leaked.png")  # the same picture in the test split
    plan["leak"] = {str(flower[2]), str(test / "flower" / "leaked.png")}
    near = train / "flower" / "003_small.jpg"
    tiles["flower"][3].resize((48, 48), Image.Resampling.BILINEAR).save(near, quality=80)  # resized, as JPEG
    plan["near_duplicate"] = {str(flower[3]), str(near)}
    bright = test / "china" / "bright_004.png"
    ImageEnhance.Brightness(tiles["china"][4]).enhance(1.3).save(bright)  # brightened, in the other split
    plan["near_leak"] = {str(china[4]), str(bright)}
    broken = train / "china" / "truncated.png"
    data = china[5].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    plan["unreadable"] = {str(broken)}
    misnamed = train / "flower" / "really_a_png.jpg"
    tiles["flower"][18].save(misnamed, format="PNG")
    plan["wrong_extension"] = {str(misnamed)}
    blank = train / "china" / "blank.png"
    Image.new("RGB", (64, 64), (128, 130, 127)).save(blank)
    plan["blank"] = {str(blank)}
    small = train / "flower" / "tiny.png"
    tiles["flower"][19].resize((10, 10)).save(small)
    plan["too_small"] = {str(small)}
    strip = train / "china" / "strip.png"
    Image.fromarray(np.asarray(tiles["china"][18]).repeat(4, axis=1)[:16]).save(strip)  # 16x256
    plan["odd_aspect"] = {str(strip)}
    grey = train / "china" / "grey.png"
    tiles["china"][19].convert("L").convert("RGB").save(grey)
    plan["grey"] = {str(grey)}
    (train / "rare").mkdir()
    for i in range(2):
        tiles["china"][20 + i].rotate(90).save(train / "rare" / f"{i}.png")
    report = audit(train, against=test, label_errors=False)
    return report, plan


def test_every_planted_fault_is_found_by_path(planted: tuple[Any, dict[str, Any]]) -> None:
    report, plan = planted
    for kind, paths in plan.items():
        assert set(report.files(kind)) >= paths, (kind, report.files(kind))
    # few false alarms: each kind's files are the planted ones (the resized copy is not also a leak...)
    for kind in ("duplicate", "conflicting_labels", "leak", "unreadable", "wrong_extension", "blank", "too_small",
                 "odd_aspect", "near_leak"):  # fmt: skip
        assert set(report.files(kind)) == plan[kind], (kind, report.files(kind))
    assert len(report.files("near_duplicate")) <= 4 and len(report.files("grey")) <= 2


def test_the_balance_names_the_small_class_and_the_weights(planted: tuple[Any, dict[str, Any]]) -> None:
    report, _ = planted
    balance = report.imbalance
    assert balance.counts["rare"] == 2 and balance.too_small == ["rare"] and balance.ratio >= 3
    total, classes = sum(balance.counts.values()), len(balance.counts)
    assert balance.weights["rare"] == pytest.approx(total / (classes * 2))
    assert "WeightedRandomSampler" in balance.advice() and not report.ok


def test_the_report_prints_shows_html_and_json(planted: tuple[Any, dict[str, Any]]) -> None:
    report, _ = planted
    text = str(report)
    assert "leak" in text and "what to do" in text and "rare" in text
    page = report._repr_html_()
    assert page.count("<img") >= 5 and "data:image/png;base64" in page
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["counts"]["leak"] == 1 and data["balance"]["too_small"] == ["rare"]
    with pytest.raises(InvalidOptionError, match="kind='leaks'"):
        report.files("leaks")


def test_likely_label_errors_are_found_by_path(tmp_path: Path) -> None:
    pytest.importorskip("cleanlab")
    data = cifarkit.synthetic_cifar10(1500, seed=3)  # 450 pictures of three shapes
    keep = data.labels < 3
    images, labels = data.images[keep], data.labels[keep]
    names = ["disc", "square", "ring"]
    moved = set()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        wrong = i < 16 and i % 2 == 0  # eight pictures in the wrong folder
        folder = tmp_path / names[(int(label) + 1) % 3 if wrong else int(label)]
        folder.mkdir(exist_ok=True)
        path = folder / f"{i:04d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        if wrong:
            moved.add(str(path))
    torch.manual_seed(0)
    report = audit(tmp_path, folds=3, device="cpu")
    found = set(report.files("label_error"))
    assert len(found & moved) >= 6, (found, moved)  # most of the moved ones
    assert len(found - moved) <= 10  # and few others, of 450
    issue = next(f for f in report.findings if f.kind == "label_error" and f.files[0] in moved)
    assert issue.given != issue.suggested and issue.probability is not None and issue.probability > 0.5


def test_the_command_line_exits_0_1_or_2(tmp_path: Path, planted: tuple[Any, dict[str, Any]], capsys: Any,
                                         tiles: dict[str, list[Image.Image]]) -> None:  # fmt: skip
    from cifarkit.cli import main

    _write(tmp_path / "clean", {k: v[:8] for k, v in tiles.items()})
    assert main(["audit", str(tmp_path / "clean"), "--no-label-errors"]) == 0
    _, plan = planted
    train = Path(next(iter(plan["leak"] - {p for p in plan["leak"] if "/test/" in p}))).parent.parent
    page = tmp_path / "audit.html"
    status = main(["audit", str(train), "--against", str(train.parent / "test"), "--no-label-errors", "-o", str(page)])
    assert status == 1 and "leak" in capsys.readouterr().out and page.read_text().count("<img") >= 5
    with pytest.raises(SystemExit) as usage:
        main(["audit", str(tmp_path / "missing"), "--no-label-errors"])
    assert usage.value.code == 2
