"""Datasets in memory: real CIFAR-10 read from its folder, and a generated offline stand-in.

Both come as :class:`ImageTensors` (uint8 images, int64 labels, class names), whose
:meth:`~ImageTensors.loader` gives a :class:`~cifarkit.loader.TensorLoader`.

May import: cifarkit.errors, cifarkit.files, cifarkit.loader.
"""

from __future__ import annotations

import pickle
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.errors import DatasetFormatError, DatasetNotFoundError, ShapeError, check_positive_int
from cifarkit.files import PathLike
from cifarkit.loader import TensorLoader

__all__ = [
    "CIFAR10_CLASSES",
    "SYNTHETIC_CLASSES",
    "ImageTensors",
    "load_cifar10",
    "synthetic_cifar10",
]

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
SYNTHETIC_CLASSES = [
    "disc", "square", "ring", "cross", "triangle", "diamond",
    "h-stripes", "v-stripes", "checkers", "diagonals",
]  # fmt: skip
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
_FOLDER = "cifar-10-batches-py"


@dataclass(frozen=True)
class ImageTensors:
    """A whole image dataset in memory.

    Attributes:
        images: uint8 tensor ``(N, 3, H, W)`` (32x32 for CIFAR-10).
        labels: int64 tensor ``(N,)``.
        classes: class names, indexed by label.
        skipped: ``(file, reason)`` of the files a folder reader could not read.
        sources: The file each image came from (read by
            :func:`~cifarkit.folders.load_image_folder`); ``None`` for generated or CIFAR-10 data.
            Kept by :meth:`subset` and the validation split, so a picture found wrong can be
            found on disk.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list, compare=False)
    sources: list[str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            msg = f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            raise ShapeError(msg)
        if self.labels.shape != (self.images.shape[0],):
            msg = f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            raise ShapeError(msg)
        if self.sources is not None and len(self.sources) != self.images.shape[0]:
            msg = f"sources must name one file per image ({self.images.shape[0]}), got {len(self.sources)}"
            raise ShapeError(msg)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def loader(self, **options: Any) -> TensorLoader:
        """A :class:`TensorLoader` over this dataset (keyword options as for ``TensorLoader``); it
        carries the class names into the trained model's record."""
        return TensorLoader(self.images, self.labels, **{"classes": self.classes, **options})

    def subset(self, indices: torch.Tensor) -> ImageTensors:
        """The images at ``indices`` (a copy), with the same class names and their sources.

        Example:
            >>> data = synthetic_cifar10(10)
            >>> len(data.subset(torch.tensor([0, 3])))
            2
        """
        if indices.dtype == torch.bool:
            indices = indices.nonzero().reshape(-1)
        sources = None if self.sources is None else [self.sources[i] for i in indices.reshape(-1).tolist()]
        return ImageTensors(self.images[indices], self.labels[indices], list(self.classes), sources=sources)


# --------------------------------------------------------------------------- real CIFAR-10


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10 batch files contain: numpy arrays, lists, bytes, str, int."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how Python 3 writes bytes into protocol-2 pickles
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            msg = f"refusing to load {module}.{name}: CIFAR-10 batch files hold only arrays and lists"
            raise pickle.UnpicklingError(msg)
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = _BatchUnpickler(handle, encoding="bytes").load()
    except Exception as exc:
        msg = (
            f"{path} is not a valid CIFAR-10 batch file ({type(exc).__name__}: {exc}). Re-extract "
            "cifar-10-python.tar.gz, or delete the folder and use download=True"
        )
        raise DatasetFormatError(msg) from exc
    if not isinstance(raw, dict):
        msg = f"{path} holds a {type(raw).__name__}, not the dict of a CIFAR-10 batch file"
        raise DatasetFormatError(msg)
    batch = {}
    for key, value in raw.items():
        try:
            batch[key.decode() if isinstance(key, bytes) else key] = value
        except UnicodeDecodeError as exc:
            msg = f"{path} has a key that is not UTF-8 text ({key[:40]!r}): the file is damaged; re-extract it"
            raise DatasetFormatError(msg) from exc
        if not isinstance(key, (bytes, str)):
            msg = f"{path} has a key of type {type(key).__name__}: the file is damaged; re-extract it"
            raise DatasetFormatError(msg)
    return batch


def _label_names(meta: dict[str, Any], path: Path) -> list[str]:
    names = meta.get("label_names")
    if names is None:
        return list(CIFAR10_CLASSES)
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        msg = f"{path}: 'label_names' must be a non-empty list of names; re-extract the archive"
        raise DatasetFormatError(msg)
    try:
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as exc:
        msg = f"{path}: a label name is not UTF-8 text; re-extract the archive"
        raise DatasetFormatError(msg) from exc


def _batch_arrays(batch: dict[str, Any], path: Path, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's images ``(N, 3, 32, 32)`` uint8 and labels, after checking dtype, shape and range."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        msg = f"{path}: 'data' must be a (N, 3072) uint8 array, found {found}; re-extract the archive"
        raise DatasetFormatError(msg)
    if isinstance(labels, np.ndarray):
        labels = labels.tolist() if labels.ndim == 1 and labels.dtype.kind in "iu" else None
    if not (
        isinstance(labels, list)
        and len(labels) == data.shape[0]
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < classes for v in labels)
    ):
        msg = f"{path}: 'labels' must be a list of {data.shape[0]} ints from 0 to {classes - 1}; re-extract the archive"
        raise DatasetFormatError(msg)
    # Rows are 1024 red, 1024 green, 1024 blue values: exactly (3, 32, 32) in C order.
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
    return images, torch.tensor(labels, dtype=torch.int64)


def _find_folder(root: Path) -> Path | None:
    for candidate in (root / _FOLDER, root):
        if (candidate / "batches.meta").is_file():
            return candidate
    return None


def _download(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(_CIFAR_URL, str(root), md5=_CIFAR_MD5)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        msg = (
            f"could not download CIFAR-10 from {_CIFAR_URL} ({type(exc).__name__}: {exc}). "
            f"Download cifar-10-python.tar.gz by hand and unpack it into {root} so that "
            f"{root / _FOLDER / 'batches.meta'} exists"
        )
        raise DatasetNotFoundError(msg) from exc


def load_cifar10(root: PathLike, *, train: bool = True, download: bool = False) -> ImageTensors:
    """Read the standard ``cifar-10-batches-py`` folder into memory.

    Args:
        root: The folder holding ``cifar-10-batches-py`` (as for torchvision), or that folder.
        train: The 50,000 training images (``data_batch_1..5``) or the 10,000 test images.
        download: Fetch and unpack the archive with torchvision's downloader when missing.

    Returns:
        uint8 images ``(N, 3, 32, 32)``, int64 labels and the class names.

    Raises:
        DatasetNotFoundError: the folder or a batch file is missing (or the download failed).
        DatasetFormatError: a batch file is damaged or holds anything but arrays and lists (the
            files are read with a restricted unpickler, so a tampered file cannot run code); its
            keys are not text, its images not ``(N, 3072)`` uint8, its labels not ints within the
            label names.

    Example:
        >>> load_cifar10("/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cifarkit.errors.DatasetNotFoundError: CIFAR-10 not found under /nonexistent...
    """
    base = Path(root)
    folder = _find_folder(base)
    if folder is None and download:
        _download(base)
        folder = _find_folder(base)
    if folder is None:
        msg = (
            f"CIFAR-10 not found under {base}: expected {base / _FOLDER / 'batches.meta'}. Pass "
            f"download=True, or unpack cifar-10-python.tar.gz ({_CIFAR_URL}) into {base} by hand"
        )
        raise DatasetNotFoundError(msg)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        msg = f"{folder} lacks {', '.join(missing)}: re-extract cifar-10-python.tar.gz there"
        raise DatasetNotFoundError(msg)
    classes = _label_names(_read_batch(folder / "batches.meta"), folder / "batches.meta")
    images, labels = [], []
    for name in names:
        batch_images, batch_labels = _batch_arrays(_read_batch(folder / name), folder / name, len(classes))
        images.append(batch_images)
        labels.append(batch_labels)
    return ImageTensors(torch.cat(images), torch.cat(labels), classes)


# --------------------------------------------------------------------------- synthetic data


def _shape_masks(
    kind: int, dx: torch.Tensor, dy: torch.Tensor, size: torch.Tensor, period: torch.Tensor
) -> torch.Tensor:
    """Boolean masks ``(k, 32, 32)`` of one shape class; dx, dy are offsets from each centre."""
    ax, ay = dx.abs(), dy.abs()
    if kind in (0, 2) or kind >= 6:
        r = torch.sqrt(dx * dx + dy * dy)
        if kind == 0:
            return r < size
        if kind == 2:
            return (r - size).abs() < 1.6
        window = r < size * 1.6  # textures fill a disc, so position and size still vary
        if kind == 9:
            return window & (torch.remainder(dx + dy, period * 1.4) < period * 0.7)
        phase_x = torch.remainder(dx, period) < period / 2
        phase_y = torch.remainder(dy, period) < period / 2
        pattern = {6: phase_y, 7: phase_x, 8: phase_x ^ phase_y}[kind]
        return window & pattern
    if kind == 1:
        return torch.maximum(ax, ay) < size * 0.85
    if kind == 3:
        return ((ax < size / 3) & (ay < size)) | ((ay < size / 3) & (ax < size))
    if kind == 4:
        return (dy > -size) & (dy < size * 0.8) & (ax < (dy + size) * 0.55)
    return ax + ay < size * 1.1  # 5: diamond


def synthetic_cifar10(n: int = 10_000, *, seed: int = 0) -> ImageTensors:
    """Generate a CIFAR-10-sized dataset of 10 shape and texture classes, offline.

    **This is not CIFAR-10.** It exists so that everything in cifarkit runs without downloads:
    32x32 RGB uint8 images of a disc, square, ring, cross, triangle, diamond, or horizontal,
    vertical, checkered or diagonal stripes, each with a random foreground and background colour,
    random position, size and stripe period, and Gaussian noise. Colours are drawn independently
    of the class, so no class can be told apart by its mean colour; a CNN must see the shape.
    The same ``seed`` gives the same images; classes are balanced (``n // 10`` each, the
    remainder spread over the first classes).

    Args:
        n: Number of images.
        seed: Seed of the generator; use different seeds for training and held-out data.

    Example:
        >>> data = synthetic_cifar10(100, seed=1)
        >>> data.images.shape, data.images.dtype, data.classes[2]
        (torch.Size([100, 3, 32, 32]), torch.uint8, 'ring')
        >>> bool((synthetic_cifar10(100, seed=1).images == data.images).all())
        True
    """
    check_positive_int("n", n, unit="images")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g) * (high - low) + low

    cx, cy = uniform(13.0, 19.0, n), uniform(13.0, 19.0, n)
    size, period = uniform(5.0, 10.0, n), uniform(3.5, 7.0, n)
    coords = torch.arange(32, dtype=torch.float32) + 0.5
    # Light shapes on a darker ground, hues random: the brightness step gives a plain (linear)
    # gradient signal from the first step, while the wide spread of background colours hides
    # the small class differences in covered area from any mean-colour statistic.
    background = uniform(0, 100, n, 3)
    foreground = background + uniform(90, 155, n, 3)
    mask = torch.zeros(n, 32, 32, dtype=torch.bool)
    for kind in range(10):
        idx = (labels == kind).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        dx = coords[None, None, :] - cx[idx, None, None]  # (k, 1, 32)
        dy = coords[None, :, None] - cy[idx, None, None]  # (k, 32, 1)
        dx, dy = torch.broadcast_tensors(dx, dy)
        mask[idx] = _shape_masks(kind, dx, dy, size[idx, None, None], period[idx, None, None])
    # Compose in int16: where(mask, fg, bg) + noise. Noise comes from a pool of 512 Gaussian
    # tiles (sigma 12 levels) drawn per image, 30x cheaper than fresh noise for every pixel.
    fg = foreground.round().to(torch.int16)[:, :, None, None]  # (n, 3, 1, 1)
    bg = background.round().to(torch.int16)[:, :, None, None]
    images = torch.where(mask[:, None], fg, bg)  # (n, 3, 32, 32)
    pool = (torch.randn(512, 3, 32, 32, generator=g) * 12.0).round().to(torch.int16)
    images += pool[torch.randint(0, 512, (n,), generator=g)]
    return ImageTensors(images.clamp_(0, 255).to(torch.uint8), labels, list(SYNTHETIC_CLASSES))
