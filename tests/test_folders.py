"""Your own pictures from a folder: every format and mode, damaged files reported, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit import ImageTensors, load_image_folder, synthetic_cifar10
from cifarkit.data.folders import is_image_folder
from cifarkit.data.images import read_pixels
from cifarkit.errors import DatasetFormatError, DatasetNotFoundError, ImageReadError, InvalidOptionError, ShapeError


def colour_image(value: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, (value, 255 - value, value // 2))


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_size) for p in root.rglob("*"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three classes, every kind of picture the reader must take."""
    root = tmp_path / "pets"
    for name in ("cat", "dog", "eel"):
        (root / name).mkdir(parents=True)
    colour_image(10).save(root / "cat" / "a.png")
    colour_image(20, (300, 200)).save(root / "cat" / "b.jpg", quality=95)
    colour_image(30).convert("RGBA").save(root / "cat" / "c.png")
    colour_image(40).convert("L").save(root / "dog" / "a.bmp")
    colour_image(50).convert("P").save(root / "dog" / "b.gif")
    colour_image(60, (16, 16)).save(root / "dog" / "c.webp", lossless=True)
    (root / "dog" / "sub").mkdir()
    colour_image(70).save(root / "dog" / "sub" / "d.png")  # nested folders count for their class
    colour_image(80).save(root / "eel" / "a.png")
    colour_image(90).save(root / "eel" / "b.png")
    (root / "eel" / "notes.txt").write_text("not a picture, not an image extension: ignored")
    return root


def test_reads_every_format_and_mode_in_class_order(folder: Path) -> None:
    data = load_image_folder(folder, size=24)
    assert data.classes == ["cat", "dog", "eel"] and data.images.dtype == torch.uint8
    assert tuple(data.images.shape) == (9, 3, 24, 24) and data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert data.skipped == []
    first = data.images[0].permute(1, 2, 0)  # a flat colour stays that colour through the resize
    assert first.reshape(-1, 3).unique(dim=0).tolist() == [[10, 245, 5]]
    grey = data.images[3]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grayscale became RGB
    reordered = load_image_folder(folder, classes=["eel", "cat"])
    assert reordered.classes == ["eel", "cat"] and reordered.labels.tolist() == [0, 0, 1, 1, 1]


def test_resize_is_the_one_picture_path_and_antialiased_like_pillow(folder: Path) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    noise.save(folder / "cat" / "noise.png")
    data = load_image_folder(folder, classes=["cat", "dog"], size=32)
    got = data.images[list(data.labels.tolist()).index(0) + 3]
    # exactly what predict and exported programs compute from the same file
    assert torch.equal(got, read_pixels(folder / "cat" / "noise.png", 32))
    # and the same filter as Pillow's antialiased bilinear, up to rounding (one grey level)
    pillow = torch.from_numpy(np.array(noise.resize((32, 32), Image.Resampling.BILINEAR))).permute(2, 0, 1)
    assert int((got.int() - pillow.int()).abs().max()) <= 1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, at open
def test_damaged_files_are_skipped_with_their_reason_or_fatal_by_option(folder: Path) -> None:
    (folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))  # a JPEG cut short
    (folder / "dog" / "fake.png").write_text("hello")  # not an image at all
    Image.new("1", (10_000, 9_000)).save(folder / "eel" / "bomb.png")  # over Pillow's limit
    before = listing(folder)
    with pytest.warns(UserWarning, match=r"skipped 3 of 12 files"):
        data = load_image_folder(folder)
    assert len(data) == 9 and {Path(p).name for p, _ in data.skipped} == {"broken.jpg", "fake.png", "bomb.png"}
    reasons = {Path(p).name: why for p, why in data.skipped}
    assert "decompression-bomb limit" in reasons["bomb.png"] and "UnidentifiedImageError" in reasons["fake.png"]
    with pytest.raises(ImageReadError, match=r"broken\.jpg.*skip_errors=True"):
        load_image_folder(folder, skip_errors=False)
    assert listing(folder) == before  # nothing written to the folder


def test_a_fifo_named_like_a_picture_is_skipped_not_waited_for(folder: Path) -> None:
    os.mkfifo(folder / "cat" / "pipe.png")
    with pytest.warns(UserWarning, match=r"skipped 1 of"):
        data = load_image_folder(folder)
    assert [(Path(p).name, why) for p, why in data.skipped] == [
        ("pipe.png", "not a regular file (a FIFO, device or socket)")
    ]


def test_a_reproducible_split_per_class(folder: Path) -> None:
    train, val = load_image_folder(folder, val_fraction=0.34, seed=1)
    again, val_again = load_image_folder(folder, val_fraction=0.34, seed=1)
    assert torch.equal(val.images, val_again.images) and torch.equal(train.labels, again.labels)
    assert sorted(val.labels.tolist()) == [0, 1, 2] and len(train) == 6  # one of each class held out
    assert train.classes == val.classes == ["cat", "dog", "eel"]
    other, _ = load_image_folder(folder, val_fraction=0.34, seed=2)
    assert not torch.equal(other.images, train.images)


def test_bad_folders_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no folder at"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="has no class folders"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "one" / "cat").mkdir(parents=True)
    colour_image(1).save(tmp_path / "one" / "cat" / "a.png")
    with pytest.raises(DatasetFormatError, match="single class"):
        load_image_folder(tmp_path / "one")
    (tmp_path / "one" / "dog").mkdir()
    with pytest.raises(DatasetFormatError, match=r"dog holds no images"):
        load_image_folder(tmp_path / "one")
    with pytest.raises(DatasetNotFoundError, match=r"no folder for the classes \['cow'\]"):
        load_image_folder(tmp_path / "one", classes=["cat", "cow"])
    with pytest.raises(InvalidOptionError, match="val_fraction"):
        load_image_folder(tmp_path / "one", val_fraction=1.5)
    (tmp_path / "one" / "dog" / "x.png").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="skipped 2 of 2"), pytest.raises(DatasetFormatError, match="could be read"):
        load_image_folder(tmp_path / "one", classes=["dog", "dog"])


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_symlink_loop_is_not_followed(folder: Path) -> None:
    os.symlink(folder / "cat", folder / "cat" / "loop")
    assert len(load_image_folder(folder)) == 9


def test_tells_an_image_folder_from_a_cifar_folder(folder: Path, tmp_path: Path) -> None:
    assert is_image_folder(folder)
    (tmp_path / "c" / "cifar-10-batches-py").mkdir(parents=True)
    assert not is_image_folder(tmp_path / "c") and not is_image_folder(tmp_path / "c" / "nothing")


def test_every_image_keeps_the_file_it_came_from_through_split_and_subset(folder: Path) -> None:
    train, val = load_image_folder(folder, size=32, val_fraction=0.34, seed=1)
    assert train.sources is not None and val.sources is not None
    assert len(train.sources) == len(train) and len(val.sources) == len(val)
    pictures = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix != ".txt")
    assert sorted(train.sources + val.sources) == pictures
    for data in (train, val):  # each source is the picture at its index, under its class folder
        for i, source in enumerate(data.sources or []):
            assert torch.equal(data.images[i], read_pixels(source, 32))
            assert Path(source).relative_to(folder).parts[0] == data.classes[int(data.labels[i])]
    picked = train.subset(torch.tensor([2, 0]))
    assert picked.sources == [train.sources[2], train.sources[0]]
    mask = train.labels == 0
    assert train.subset(mask).sources == [s for s, keep in zip(train.sources, mask.tolist(), strict=True) if keep]
    assert synthetic_cifar10(4).sources is None and synthetic_cifar10(4).subset(torch.tensor([1])).sources is None
    with pytest.raises(ShapeError, match="one file per image"):
        ImageTensors(train.images, train.labels, train.classes, sources=["a.png"])


def test_the_folder_reader_takes_torchvisions_picture_files_and_classes(tmp_path: Path) -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    from cifarkit.data.folders import EXTENSIONS, image_files

    assert set(EXTENSIONS) == {*IMG_EXTENSIONS, ".gif"}
    for name in ("b", "a", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"")
    assert image_files(tmp_path)[0] == find_classes(tmp_path)[0]
