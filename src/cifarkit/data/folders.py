"""Your own pictures: a folder with one sub-folder per class (torchvision's ``ImageFolder`` layout)
read into memory as :class:`~cifarkit.data.tensors.ImageTensors`, in parallel, damaged files reported.

Classes are the sorted sub-folder names and files are filtered by torchvision's
``IMG_EXTENSIONS`` plus GIF, as ``ImageFolder`` does (:data:`EXTENSIONS`); Pillow decodes.
The folder is only read, never written to.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, overload

import torch

from cifarkit.data.images import decode_file, resize_pixels, to_size
from cifarkit.data.tensors import ImageTensors
from cifarkit.display import progress_bar
from cifarkit.errors import DatasetFormatError, DatasetNotFoundError, ImageReadError, InvalidOptionError
from cifarkit.writing import PathLike

__all__ = ["image_files", "is_image_folder", "load_image_folder"]

_T = TypeVar("_T")
_R = TypeVar("_R")


#: The picture files of a class folder: torchvision's ``IMG_EXTENSIONS`` and GIF (a test keeps
#: them equal; written out so that reading a folder does not import torchvision).
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def _extensions() -> tuple[str, ...]:
    return EXTENSIONS


def is_image_folder(root: PathLike) -> bool:
    """True when ``root`` has at least one sub-folder and is not a CIFAR-10 python folder.

    Example:
        >>> is_image_folder("/nonexistent")
        False
    """
    base = Path(root)
    if not base.is_dir() or (base / "batches.meta").is_file() or (base / "cifar-10-batches-py").is_dir():
        return False
    return any(entry.is_dir() for entry in base.iterdir())


def _files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    # os.walk without following links: a symlink loop cannot send it round in circles.
    found = []
    for parent, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        found += [Path(parent) / n for n in sorted(names) if n.lower().endswith(extensions)]
    return found


def _split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a per-class split: ``round(n * fraction)`` of each class (at least one of a class
    with two or more images) held out, drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(len(idx) - 1, max(1 if len(idx) > 1 else 0, round(len(idx) * fraction)))
        val.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


@overload
def load_image_folder(
    root: PathLike,
    *,
    size: int | tuple[int, int] = 32,
    classes: Sequence[str] | None = None,
    val_fraction: None = None,
    seed: int = 0,
    skip_errors: bool = True,
    workers: int | None = None,
    progress: bool = False,
) -> ImageTensors: ...


@overload
def load_image_folder(
    root: PathLike,
    *,
    size: int | tuple[int, int] = 32,
    classes: Sequence[str] | None = None,
    val_fraction: float,
    seed: int = 0,
    skip_errors: bool = True,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[ImageTensors, ImageTensors]: ...


def load_image_folder(
    root: PathLike,
    *,
    size: int | tuple[int, int] = 32,
    classes: Sequence[str] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    skip_errors: bool = True,
    workers: int | None = None,
    progress: bool = False,
) -> ImageTensors | tuple[ImageTensors, ImageTensors]:
    """Read ``root/<class>/<image>`` into memory: uint8 images ``(N, 3, size, size)`` and labels.

    Classes are the sub-folders in sorted order (torchvision's ``ImageFolder`` order), or
    ``classes`` (those folders, in that order). PNG, JPEG, BMP, WebP, TIFF, PPM/PGM and GIF (first
    frame) of any size are read; each is converted to RGB (RGBA, grayscale and palette images
    too) and resized to ``size`` by the one picture path of :mod:`cifarkit.data.images` (what
    ``predict`` and exported programs do: the same file gives the same pixels). Files are decoded
    by a thread pool.

    A file that cannot be read (damaged, not an image, over Pillow's decompression-bomb limit)
    is skipped with its reason in ``ImageTensors.skipped``, and a warning gives the count; with
    ``skip_errors=False`` the first one raises. Nothing is written to the folder.

    Args:
        root: The folder holding one sub-folder per class.
        size: Side of the square images, in pixels (32 for the tutorial's network), or ``(height, width)``.
        classes: Class folders to use, in label order; default: all, sorted.
        val_fraction: Hold out this share of each class (reproducibly, by ``seed``) and return
            ``(train, val)``.
        seed: Seed of the split.
        skip_errors: Skip unreadable files (default) instead of raising.
        workers: Decoding threads; default: the CPU count, at most 8.
        progress: Show a progress bar (on a terminal or in Jupyter).

    Returns:
        An :class:`~cifarkit.data.tensors.ImageTensors`, or ``(train, val)`` with ``val_fraction``.

    Raises:
        DatasetNotFoundError: ``root`` is missing, or a named class has no folder.
        DatasetFormatError: no class folders, a single class, a class with no images, or every
            image unreadable.
        ImageReadError: an unreadable file with ``skip_errors=False`` (the message names it).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name, colour in (("cat", "red"), ("dog", "blue")):
        ...     (root / name).mkdir()
        ...     Image.new("RGB", (48, 40), colour).save(root / name / "a.png")
        >>> pictures = load_image_folder(root)
        >>> pictures.classes, tuple(pictures.images.shape), pictures.labels.tolist()
        (['cat', 'dog'], (2, 3, 32, 32), [0, 1])
    """
    base = Path(root)
    if not base.is_dir():
        msg = f"no folder at {base}: pass a folder holding one sub-folder of images per class"
        raise DatasetNotFoundError(msg)
    side = to_size(size)  # InvalidOptionError for anything but a positive int or (height, width)
    if val_fraction is not None and not 0 < val_fraction < 1:
        msg = f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}"
        raise InvalidOptionError(msg)
    names, files = image_files(base, classes)
    arrays, labels, skipped, sources = _decode(files, side, skip_errors=skip_errors, workers=workers,
                                               progress=progress)  # fmt: skip
    if skipped:
        shown = "; ".join(f"{path}: {why}" for path, why in skipped[:3])
        warnings.warn(f"skipped {len(skipped)} of {len(files)} files that could not be read ({shown})", stacklevel=2)
    if not arrays:
        msg = f"none of the {len(files)} files under {base} could be read as an image"
        raise DatasetFormatError(msg)
    images = torch.stack(arrays)  # (N, 3, size, size) uint8
    data = ImageTensors(images, torch.tensor(labels, dtype=torch.int64), list(names), skipped, sources)
    if val_fraction is None:
        return data
    train_idx, val_idx = _split(data.labels, val_fraction, seed)
    return data.subset(train_idx), data.subset(val_idx)


def image_files(root: PathLike, classes: Sequence[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names of an image folder and its picture files with their labels, in the order
    :func:`load_image_folder` reads them (nothing is opened).

    Raises:
        DatasetNotFoundError: no such folder, or a named class has none.
        DatasetFormatError: no class folders, a single class, or a class with no picture files.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir(); _ = (root / name / "a.png").write_bytes(b"")
        >>> names, files = image_files(root)
        >>> names, [(p.parent.name, label) for p, label in files]
        (['cat', 'dog'], [('cat', 0), ('dog', 1)])
    """
    base = Path(root)
    if not base.is_dir():
        msg = f"no folder at {base}: pass a folder holding one sub-folder of images per class"
        raise DatasetNotFoundError(msg)
    names = _class_names(base, classes)
    extensions = _extensions()
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        found = _files(base / name, extensions)
        if not found:
            msg = f"class folder {base / name} holds no images ({', '.join(extensions)}); add some or remove the folder"
            raise DatasetFormatError(msg)
        files += [(path, label) for path in found]
    return names, files


def _class_names(base: Path, classes: Sequence[str] | None) -> list[str]:
    if classes is not None:
        missing = [c for c in classes if not (base / c).is_dir()]
        if missing:
            msg = f"{base} has no folder for the classes {missing}; its folders are the class names"
            raise DatasetNotFoundError(msg)
        names = list(classes)
    else:
        names = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())  # as ImageFolder
        if not names:
            msg = f"{base} has no class folders: put each class's images in a sub-folder named after it"
            raise DatasetFormatError(msg)
    if len(names) < 2:
        msg = f"{base} has a single class ({names[0]!r}); a classifier needs at least two class folders"
        raise DatasetFormatError(msg)
    return names


def _ordered(pool: ThreadPoolExecutor, fn: Callable[[_T], _R], items: Sequence[_T], *, window: int) -> Iterator[_R]:
    """``pool.map(fn, items)`` with at most ``window`` results pending: full-size photos decoded
    ahead of the resizing thread would otherwise pile up in memory."""
    pending: deque[Future[_R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _decode(
    files: list[tuple[Path, int]], size: tuple[int, int], *, skip_errors: bool, workers: int | None, progress: bool
) -> tuple[list[torch.Tensor], list[int], list[tuple[str, str]], list[str]]:
    threads = workers or min(8, os.cpu_count() or 1)

    def read(item: tuple[Path, int]) -> torch.Tensor | ImageReadError:
        try:
            return decode_file(item[0])  # threads decode (Pillow releases the GIL)
        except ImageReadError as exc:
            return exc

    images: list[torch.Tensor] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    sources: list[str] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = _ordered(pool, read, files, window=4 * threads)
        for (path, label), result in zip(files, progress_bar(results, desc="reading images", enabled=progress)):
            if isinstance(result, ImageReadError):
                if not skip_errors:
                    msg = f"cannot read image {path}: {result}. Fix or remove it, or pass skip_errors=True"
                    raise ImageReadError(msg) from result
                skipped.append((str(path), str(result)))
                continue
            images.append(resize_pixels(result, size))  # one thread resizes: torch's small ops hold the GIL
            labels.append(label)
            sources.append(str(path))
    return images, labels, skipped, sources
