"""Data: CIFAR-10 from disk, the synthetic dataset, TensorLoader."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cifarkit import ImageTensors, load_cifar10, synthetic_cifar10
from cifarkit.data import cifar10
from cifarkit.errors import DatasetFormatError, DatasetNotFoundError, InvalidOptionError, ShapeError
from conftest import write_cifar_folder

# --------------------------------------------------------------------------- CIFAR-10 on disk


@pytest.mark.parametrize("flavour", ["py2", "py3"])
def test_load_cifar10_reads_both_pickle_flavours(tmp_path: Path, flavour: str) -> None:
    train, test = write_cifar_folder(tmp_path, flavour=flavour, per_batch=30)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the parent, or the folder itself
        got = load_cifar10(root)
        assert got.images.dtype == torch.uint8 and got.images.shape == (150, 3, 32, 32)
        assert got.labels.dtype == torch.int64
        assert torch.equal(got.images, train.images) and torch.equal(got.labels, train.labels)
        assert got.classes[0] == "airplane" and len(got.classes) == 10
    got_test = load_cifar10(tmp_path, train=False)
    assert torch.equal(got_test.images, test.images) and len(got_test) == 30


def test_channel_layout_matches_the_published_format(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(tmp_path, per_batch=2)
    batch = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")
    row = batch[b"data"][0]
    image = load_cifar10(tmp_path).images[0]
    # first 1024 values are the red plane, row-major
    assert int(image[0, 0, 0]) == row[0] and int(image[0, 0, 1]) == row[1] and int(image[1, 0, 0]) == row[1024]
    assert int(image[2, 31, 31]) == row[3071]


def test_missing_folder_and_missing_batch(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"expected .*cifar-10-batches-py/batches.meta.*download=True"):
        load_cifar10(tmp_path)
    write_cifar_folder(tmp_path, per_batch=2)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)


def test_download_offline_raises_a_clear_error(tmp_path: Path, network: Any) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"could not download CIFAR-10 .* download .* and put it at"):
        load_cifar10(tmp_path, download=True, progress=False)  # the real URL: refused like offline
    assert network.attempts and not list(tmp_path.iterdir())  # tried once, and left nothing


def _archive(tmp_path: Path) -> tuple[Path, Any, Any]:
    """A real cifar-10-python.tar.gz of a small CIFAR folder (and the truth of its two splits)."""
    source = tmp_path / "source"
    train, test = write_cifar_folder(source, per_batch=8)
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, train, test


def _serve(folder: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    finally:
        server.shutdown()
        server.server_close()


def test_download_fetches_checks_and_unpacks_into_the_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, train, test = _archive(tmp_path)
    monkeypatch.setenv("CIFARKIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    for url in _serve(archive.parent):  # a server on 127.0.0.1: the download code, not the network
        monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
        got = load_cifar10(download=True, progress=False)
    assert torch.equal(got.images, train.images) and torch.equal(got.labels, train.labels)
    root = tmp_path / "cache" / "cifar10"
    assert cifar10.cifar10_root() == root and (root / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert torch.equal(load_cifar10(train=False).labels, test.labels)  # the second time: no download


def test_a_damaged_download_keeps_nothing_and_a_placed_archive_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, train, _ = _archive(tmp_path)
    root = tmp_path / "root"
    monkeypatch.setattr(cifar10, "CIFAR10_URL", archive.as_uri())
    with pytest.raises(DatasetFormatError, match=r"MD5 .* nothing was kept"):
        load_cifar10(root, download=True, progress=False)  # the real MD5 does not match this archive
    assert not root.exists() or list(root.iterdir()) == []
    root.mkdir(exist_ok=True)
    shutil.copy(archive, root / "cifar-10-python.tar.gz")  # placed by hand, offline
    with pytest.raises(DatasetFormatError, match="Delete it"):
        load_cifar10(root, download=True)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("no download when placed by hand"))
    assert torch.equal(load_cifar10(root, download=True).images, train.images)


def test_the_command_line_gets_cifar10_or_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from cifarkit.cli import main

    archive, _, _ = _archive(tmp_path)
    monkeypatch.setenv("CIFARKIT_DATA", str(tmp_path / "cache"))
    out = tmp_path / "m.pt"
    assert main(["train", "--data", "cifar10", "--epochs", "1", "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Pass download=True" in err and "cifar-10-python.tar.gz" in err and str(tmp_path / "cache") in err
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(cifar10, "CIFAR10_URL", archive.as_uri())
    args = ["train", "--data", "cifar10", "--download", "--epochs", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0 and out.is_file()
    with pytest.raises(SystemExit) as usage:
        main(["train", "--download", "--epochs", "1"])  # --download without --data cifar10
    assert usage.value.code == 2


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_tampered_batch_file_cannot_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_cifar_folder(tmp_path, per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({"data": _Evil()}, protocol=2))
    with pytest.raises(DatasetFormatError, match="refusing to load"):
        load_cifar10(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_damaged_batch_contents(tmp_path: Path) -> None:
    write_cifar_folder(tmp_path, per_batch=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, protocol=2))
    with pytest.raises(DatasetFormatError, match=r"\(N, 3072\)"):
        load_cifar10(tmp_path, train=False)
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetFormatError, match="not a valid CIFAR-10 batch file"):
        load_cifar10(tmp_path, train=False)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_is_deterministic_balanced_and_uint8() -> None:
    a, b, c = synthetic_cifar10(1000, seed=3), synthetic_cifar10(1000, seed=3), synthetic_cifar10(1000, seed=4)
    assert a.images.shape == (1000, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [100] * 10
    assert a.classes[0] == "disc" and len(a.classes) == 10
    assert "not CIFAR-10" in (synthetic_cifar10.__doc__ or "")
    with pytest.raises(InvalidOptionError):
        synthetic_cifar10(0)


def test_no_class_is_separable_by_mean_colour() -> None:
    train, test = synthetic_cifar10(5000, seed=0), synthetic_cifar10(2000, seed=1)

    def colour(d: ImageTensors) -> torch.Tensor:
        return d.images.float().mean((2, 3))  # (N, 3) per-image mean colour

    means = torch.stack([colour(train)[train.labels == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(colour(test), means).argmin(1) == test.labels).float().mean().item()
    assert accuracy < 0.2, accuracy  # chance is 0.1; measured 0.13


def test_image_tensors_validates() -> None:
    with pytest.raises(ShapeError):
        ImageTensors(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ShapeError):
        ImageTensors(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
