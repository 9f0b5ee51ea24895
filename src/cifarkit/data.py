"""CIFAR-10 from disk, a generated offline dataset, and a fast in-memory batch loader.

Images are held as one uint8 tensor ``(N, 3, 32, 32)`` and converted to float32 per batch
(the airbench approach): no per-image Python, no PIL, four times less memory than float.
"""

from __future__ import annotations

import math
import os
import pickle
import urllib.error
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.errors import DatasetFormatError, DatasetNotFoundError, InvalidOptionError, ShapeError

__all__ = [
    "CIFAR10_CLASSES",
    "SYNTHETIC_CLASSES",
    "ImageTensors",
    "TensorLoader",
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
        images: uint8 tensor ``(N, 3, 32, 32)``.
        labels: int64 tensor ``(N,)``.
        classes: class names, indexed by label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            msg = f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            raise ShapeError(msg)
        if self.labels.shape != (self.images.shape[0],):
            msg = f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            raise ShapeError(msg)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def loader(self, **options: Any) -> TensorLoader:
        """A :class:`TensorLoader` over this dataset (keyword options as for ``TensorLoader``)."""
        return TensorLoader(self.images, self.labels, **options)


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
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


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


def load_cifar10(root: str | os.PathLike[str], *, train: bool = True, download: bool = False) -> ImageTensors:
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
            files are read with a restricted unpickler, so a tampered file cannot run code).

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
    meta = _read_batch(folder / "batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    images, labels = [], []
    for name in names:
        batch = _read_batch(folder / name)
        data, batch_labels = batch.get("data"), batch.get("labels")
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
            msg = f"{folder / name}: 'data' must be a (N, 3072) uint8 array"
            raise DatasetFormatError(msg)
        if not isinstance(batch_labels, list) or len(batch_labels) != data.shape[0]:
            msg = f"{folder / name}: 'labels' must be a list of {data.shape[0]} ints"
            raise DatasetFormatError(msg)
        # Rows are 1024 red, 1024 green, 1024 blue values: exactly (3, 32, 32) in C order.
        images.append(torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8)).view(-1, 3, 32, 32))
        labels.append(torch.tensor(batch_labels, dtype=torch.int64))
    return ImageTensors(torch.cat(images), torch.cat(labels), classes or list(CIFAR10_CLASSES))


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
    if not isinstance(n, int) or n < 1:
        msg = f"n must be a positive int, got {n!r}"
        raise InvalidOptionError(msg)
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


# --------------------------------------------------------------------------- the loader


def _as_stats(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    stats = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if stats.numel() not in (1, 3):
        msg = f"normalize {name} must have 1 or 3 values, got {stats.numel()}"
        raise InvalidOptionError(msg)
    return stats.expand(3).reshape(1, 3, 1, 1).clone()


@dataclass(frozen=True)
class _Shard:
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    pad: bool = True


class TensorLoader:
    """Batches of ``(x float32 in [0, 1], y int64)`` cut from uint8 tensors held in memory.

    Conversion happens per batch, fused with the copy to the device and memory format; the
    optional augmentation (random crop with 4 px zero padding, horizontal flip) runs as batched
    tensor ops. The order and augmentation of epoch ``e`` depend only on the loader's seed and
    ``e`` (like ``DistributedSampler``): :func:`~cifarkit.train.train_loop` calls
    :meth:`set_epoch`; without it, each new iteration moves to the next epoch.

    Args:
        images: uint8 ``(N, 3, H, W)`` (float input in [0, 1] is accepted and quantised).
        labels: integer ``(N,)``.
        batch_size: Images per batch.
        shuffle: Draw a new permutation every epoch.
        drop_last: Drop the last, smaller batch.
        augment: Random crop (pad 4) and horizontal flip.
        device: Where batches (and the uint8 storage) live.
        generator: Seeds the loader (one draw at construction); default: torch's global RNG.
        seed: Explicit seed instead of ``generator``.
        normalize: ``(mean, std)`` per channel, applied after scaling to [0, 1].
        memory_format: e.g. ``torch.channels_last`` for conv nets.

    Example:
        >>> data = synthetic_cifar10(100)
        >>> loader = TensorLoader(data.images, data.labels, batch_size=32, seed=0)
        >>> len(loader)
        4
        >>> x, y = next(iter(loader))
        >>> x.dtype, tuple(x.shape), y.dtype, float(x.max()) <= 1.0
        (torch.float32, (32, 3, 32, 32), torch.int64, True)
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int = 64,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: bool = False,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            msg = f"images must be (N, 3, H, W), got {tuple(images.shape)}"
            raise ShapeError(msg)
        if labels.shape != (images.shape[0],):
            msg = f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            raise ShapeError(msg)
        if images.shape[0] == 0:
            msg = "TensorLoader got an empty dataset (0 images)"
            raise ValueError(msg)
        if not isinstance(batch_size, int) or batch_size < 1:
            msg = f"batch_size must be a positive int, got {batch_size!r}"
            raise InvalidOptionError(msg)
        if images.is_floating_point():
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        self.device = torch.device(device)
        self.images = images.to(self.device, torch.uint8).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.memory_format = memory_format
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.seed = int(seed)
        self.epoch = 0
        self._normalize = (
            None
            if normalize is None
            else (_as_stats(normalize[0], "mean").to(self.device), _as_stats(normalize[1], "std").to(self.device))
        )
        self._shard = _Shard()

    # -- configuration ----------------------------------------------------------------

    def _copy(self, **changes: Any) -> TensorLoader:
        clone = object.__new__(TensorLoader)
        clone.__dict__.update(self.__dict__)
        clone.__dict__.update(changes)
        return clone

    def shard(self, rank: int, world_size: int, *, drop_last: bool = False, pad: bool = True) -> TensorLoader:
        """This rank's share of every epoch, with ``DistributedSampler``'s semantics.

        All ranks draw the same permutation (same seed and epoch); it is padded by repeating its
        start to a multiple of ``world_size`` (or truncated with ``drop_last=True``; or left
        uneven with ``pad=False``, for evaluation), and rank ``r`` takes every
        ``world_size``-th index from ``r``. Storage is shared, not copied.

        Example:
            >>> data = synthetic_cifar10(10)
            >>> a = data.loader(batch_size=10, seed=0).shard(0, 2)
            >>> b = data.loader(batch_size=10, seed=0).shard(1, 2)
            >>> ya, yb = next(iter(a))[1], next(iter(b))[1]
            >>> len(ya), len(yb)
            (5, 5)
        """
        if not 0 <= rank < world_size:
            msg = f"rank must be in [0, {world_size}), got {rank}"
            raise InvalidOptionError(msg)
        return self._copy(_shard=_Shard(rank, world_size, drop_last, pad))

    def with_options(self, **changes: Any) -> TensorLoader:
        """A copy sharing storage and seed with some attributes changed (e.g. ``memory_format``)."""
        unknown = set(changes) - {"batch_size", "shuffle", "drop_last", "augment", "memory_format"}
        if unknown:
            msg = f"with_options does not take {sorted(unknown)}"
            raise InvalidOptionError(msg)
        return self._copy(**changes)

    def set_epoch(self, epoch: int) -> None:
        """Select the order (and augmentation) of epoch ``epoch``."""
        self.epoch = int(epoch)

    # -- iteration --------------------------------------------------------------------

    def _indices(self, g: torch.Generator) -> torch.Tensor:
        n = self.images.shape[0]
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        shard = self._shard
        if shard.world_size > 1:
            if shard.drop_last:
                total = (n // shard.world_size) * shard.world_size
                order = order[:total]
            elif not shard.pad:
                total = n
            else:
                total = math.ceil(n / shard.world_size) * shard.world_size
                repeats = math.ceil(total / n)
                order = order.repeat(repeats)[:total]
            order = order[shard.rank : total : shard.world_size]
        return order

    def _shard_size(self) -> int:
        n, shard = int(self.images.shape[0]), self._shard
        if shard.world_size == 1:
            return n
        if shard.drop_last:
            return n // shard.world_size
        if not shard.pad:
            return math.ceil((n - shard.rank) / shard.world_size)
        return math.ceil(n / shard.world_size)

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        """Images this loader yields per epoch (this rank's share when sharded)."""
        return min(len(self) * self.batch_size, self._shard_size())

    def _crop_flip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))  # (B, 3, H+8, W+8), zeros
        oy = torch.randint(0, 9, (b,), generator=g).to(x.device)
        ox = torch.randint(0, 9, (b,), generator=g).to(x.device)
        flip = (torch.rand(b, generator=g) < 0.5).to(x.device)
        rows = oy[:, None] + torch.arange(h, device=x.device)[None, :]  # (B, H)
        cols = torch.arange(w, device=x.device)[None, :].expand(b, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(3, device=x.device)[None, :, None, None]
        return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch = epoch + 1  # plain re-iteration moves on; set_epoch overrides
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = self._indices(g).to(self.device)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, order.numel()), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]  # uint8 gather: 4x fewer bytes than float
            if self.augment:
                x = self._crop_flip(x, g)
            # One pass: uint8 -> float32 in the target memory format, then scale in place.
            x = x.to(dtype=torch.float32, memory_format=self.memory_format).mul_(1.0 / 255.0)
            if self._normalize is not None:
                x = x.sub_(self._normalize[0]).div_(self._normalize[1])
            yield x, self.labels[idx]

    def __repr__(self) -> str:
        return (
            f"TensorLoader(n={self.images.shape[0]}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, augment={self.augment}, device={str(self.device)!r}, "
            f"seed={self.seed}, shard={self._shard.rank}/{self._shard.world_size})"
        )
