"""Shared fixtures: no network, a CIFAR-10 folder on disk, VGG16 weights files."""

from __future__ import annotations

import io
import os
import pickle
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cifarkit import build_cnn, synthetic_cifar10, train_loop
from cifarkit.data.cifar10 import CIFAR10_CLASSES
from cifarkit.data.tensors import ImageTensors
from cifarkit.models.zoo import weights_path

_LOOPBACK = ("127.", "::1", "localhost")


class NetworkLog:
    """Connection attempts to non-loopback addresses (each one is refused like offline)."""

    def __init__(self) -> None:
        self.attempts: list[Any] = []


@pytest.fixture(autouse=True)
def network(monkeypatch: pytest.MonkeyPatch) -> NetworkLog:
    """Refuse every non-loopback connection, as on a machine without internet, and record it."""
    log = NetworkLog()
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(host, str) and host.startswith(_LOOPBACK):
            return real_connect(self, address)
        log.attempts.append(address)
        raise OSError(f"network disabled in tests (tried {address})")

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and not host.startswith(_LOOPBACK):
            log.attempts.append(host)
            raise socket.gaierror(f"network disabled in tests (looked up {host})")
        return real_getaddrinfo(host, *args, **kwargs)

    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return log


# --------------------------------------------------------------------------- CIFAR-10 files


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the published CIFAR-10 files do."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:  # Python 2 str: bytes on disk
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _dump(obj: Any, path: Path, flavour: str) -> None:
    if flavour == "py2":
        buffer = io.BytesIO()
        _Py2Pickler(buffer, protocol=2).dump(obj)
        # Python 2-era numpy lived in numpy.core.
        data = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        path.write_bytes(data)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar_folder(
    root: Path, *, per_batch: int = 40, flavour: str = "py2", seed: int = 0
) -> tuple[ImageTensors, ImageTensors]:
    """Write ``root/cifar-10-batches-py`` in the published format; return (train, test) truth."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    key = (lambda s: s.encode()) if flavour == "py2" else (lambda s: s)
    meta = {
        key("label_names"): [key(c) for c in CIFAR10_CLASSES],
        key("num_cases_per_batch"): per_batch,
        key("num_vis"): 3072,
    }
    _dump(meta, folder / "batches.meta", flavour)
    parts: dict[str, tuple[list[np.ndarray], list[list[int]]]] = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {key("batch_label"): key(f"{name} of 6"), key("labels"): labels, key("data"): data,
                 key("filenames"): [key(f"img_{i}.png") for i in range(per_batch)]}  # fmt: skip
        _dump(batch, folder / name, flavour)
        split = "test" if name == "test_batch" else "train"
        parts[split][0].append(data)
        parts[split][1].append(labels)

    def truth(split: str) -> ImageTensors:
        arrays, labels = parts[split]
        images = torch.from_numpy(np.concatenate(arrays)).view(-1, 3, 32, 32)
        return ImageTensors(images, torch.tensor([v for chunk in labels for v in chunk]), list(CIFAR10_CLASSES))

    return truth("train"), truth("test")


@pytest.fixture
def cifar_root(tmp_path: Path) -> tuple[Path, ImageTensors, ImageTensors]:
    train, test = write_cifar_folder(tmp_path / "data")
    return tmp_path / "data", train, test


# --------------------------------------------------------------------------- a model that learned

SHAPES_MEAN, SHAPES_STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


@pytest.fixture(scope="session")
def shapes_model() -> tuple[nn.Module, ImageTensors]:
    """The tutorial CNN (ReLU) trained until it tells the synthetic shapes apart (normalized by
    SHAPES_MEAN and SHAPES_STD, 100% on held-out pictures), and 400 pictures of the same kind it
    never saw: for the int8 checks and the web page, which need answers that are not near-ties."""
    torch.manual_seed(0)
    data = synthetic_cifar10(2000, seed=0)
    model = build_cnn(activation="relu")
    train_loop(model, data.subset(torch.arange(1600)).loader(batch_size=64, seed=0, normalize=(SHAPES_MEAN, SHAPES_STD)),
               epochs=4, optimizer=torch.optim.Adam(model.parameters(), lr=3e-3), device="cpu", progress=False)  # fmt: skip
    return model, data.subset(torch.arange(1600, 2000))


# --------------------------------------------------------------------------- VGG16 weights


@pytest.fixture(scope="session")
def vgg_weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random VGG16 ``state_dict`` (ImageNet layout, 528 MB) written once per test session."""
    path = tmp_path_factory.mktemp("weights") / "vgg16-random.pth"
    torch.manual_seed(1234)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    return path


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME for this test."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def seeded_cache(torch_home: Path, vgg_weights_file: Path) -> Path:
    """TORCH_HOME whose hub cache holds VGG16 'ImageNet' weights under torchvision's file name."""
    target = weights_path("vgg16")
    target.parent.mkdir(parents=True)
    os.link(vgg_weights_file, target)  # a real file at the exact cache path, without a copy
    return target
