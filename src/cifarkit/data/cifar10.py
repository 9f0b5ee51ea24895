"""Real CIFAR-10: the published ``cifar-10-batches-py`` folder read into memory
(:func:`load_cifar10`), and the published archive downloaded into a cache folder, its MD5 checked
and unpacked (:func:`download_cifar10`).

The cache folder is ``$CIFARKIT_DATA/cifar10`` (``CIFARKIT_DATA`` defaults to
``~/.cache/cifarkit``): :func:`cifar10_root`. Offline, put the archive there by hand
(``cifar-10-python.tar.gz``, from :data:`CIFAR10_URL`): it is checked and unpacked as if it had
been downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from cifarkit.data.tensors import ImageTensors
from cifarkit.display import progress_bar
from cifarkit.errors import DatasetFormatError, DatasetNotFoundError
from cifarkit.writing import PathLike, atomic_write

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MD5", "CIFAR10_URL", "cifar10_root", "download_cifar10", "load_cifar10"]

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
#: Where the CIFAR-10 authors publish the Python version of the dataset (163 MB).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: Its MD5, as published there.
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
_FOLDER = "cifar-10-batches-py"
_MEMBERS = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "readme.html")
_CHUNK = 1 << 20


def cifar10_root() -> Path:
    """The cache folder ``--data cifar10`` reads and downloads into: ``$CIFARKIT_DATA/cifar10``
    (``CIFARKIT_DATA`` defaults to ``~/.cache/cifarkit``).

    Example:
        >>> cifar10_root().name
        'cifar10'
    """
    base = os.environ.get("CIFARKIT_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "cifarkit")
    return Path(base) / "cifar10"


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _by_hand(root: Path) -> str:
    return (
        f"On a machine with internet access download {CIFAR10_URL} (163 MB, MD5 {CIFAR10_MD5}) and put it "
        f"at {root / ARCHIVE}: cifarkit checks and unpacks it there (cifarkit train --data cifar10 --download, "
        f"or load_cifar10(download=True)). Or unpack it yourself so that {root / _FOLDER / 'batches.meta'} exists"
    )


def _fetch(url: str, target: Path, progress: bool) -> None:
    """Stream ``url`` into ``target`` through the atomic writer; a download that fails or does
    not match :data:`CIFAR10_MD5` leaves no file."""

    def write(handle: IO[bytes]) -> None:
        with urllib.request.urlopen(url, timeout=60) as response:
            length = getattr(response, "length", None)  # an http response has one, a file:// one not
            size = f"{length / 1e6:.0f} MB, " if length else ""
            chunks = iter(lambda: response.read(_CHUNK), b"")
            for chunk in progress_bar(chunks, desc=f"CIFAR-10 ({size}1 MB steps)", enabled=progress):
                handle.write(chunk)

    def verify(temporary: Path) -> None:
        found = _md5(temporary)
        if found != CIFAR10_MD5:
            msg = f"the download of {url} has MD5 {found}, not {CIFAR10_MD5}: it is damaged; nothing was kept"
            raise DatasetFormatError(msg)

    atomic_write(target, write, verify=verify)


def _extract(archive: Path, root: Path) -> Path:
    """Unpack the batch files into a temporary folder beside ``root/cifar-10-batches-py`` and
    rename it into place: an extraction that fails leaves no half folder."""
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".cifar10.", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("./")
                if not member.isfile() or name not in {f"{_FOLDER}/{m}" for m in _MEMBERS}:
                    continue  # only the published regular files, by name: no links, no paths elsewhere
                source = tar.extractfile(member)
                if source is None:
                    continue
                out = scratch / _FOLDER / name.split("/", 1)[1]
                out.parent.mkdir(exist_ok=True)
                with source, out.open("wb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK)
        if not (scratch / _FOLDER / "batches.meta").is_file():
            msg = f"{archive} holds no {_FOLDER}/batches.meta: it is not the CIFAR-10 python archive"
            raise DatasetFormatError(msg)
        final = root / _FOLDER
        if final.exists():
            shutil.rmtree(final)
        os.replace(scratch / _FOLDER, final)
        return final
    except (tarfile.TarError, EOFError, OSError) as exc:
        msg = f"{archive} cannot be unpacked ({type(exc).__name__}: {exc}): delete it and download it again"
        raise DatasetFormatError(msg) from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)


def download_cifar10(root: PathLike | None = None, *, progress: bool = True) -> Path:
    """Download the CIFAR-10 archive into ``root`` (default: :func:`cifar10_root`), check its MD5
    and unpack it; return the ``cifar-10-batches-py`` folder.

    An archive already at ``root/cifar-10-python.tar.gz`` (put there by hand, offline) is checked
    and unpacked without a download. The download is streamed into a temporary file and kept only
    when its MD5 is :data:`CIFAR10_MD5`; the batch files are unpacked into a temporary folder and
    renamed into place, by name (nothing else in the archive is written).

    Raises:
        DatasetNotFoundError: the download failed (offline, say); the message says how to place
            the archive by hand.
        DatasetFormatError: the archive (downloaded or placed) has another MD5, or cannot be
            unpacked; the download is not kept.
    """
    base = Path(root) if root is not None else cifar10_root()
    archive = base / ARCHIVE
    if archive.is_file():
        found = _md5(archive)
        if found != CIFAR10_MD5:
            msg = (
                f"{archive} has MD5 {found}, not CIFAR-10's {CIFAR10_MD5}: it is damaged or another file. "
                f"Delete it; then {_by_hand(base)}"
            )
            raise DatasetFormatError(msg)
    else:
        try:
            _fetch(CIFAR10_URL, archive, progress)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if isinstance(exc, DatasetFormatError):
                raise
            msg = f"could not download CIFAR-10 from {CIFAR10_URL} ({type(exc).__name__}: {exc}). {_by_hand(base)}"
            raise DatasetNotFoundError(msg) from exc
    return _extract(archive, base)


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


def load_cifar10(
    root: PathLike | None = None, *, train: bool = True, download: bool = False, progress: bool = True
) -> ImageTensors:
    """Read the standard ``cifar-10-batches-py`` folder into memory.

    Args:
        root: The folder holding ``cifar-10-batches-py`` (as for torchvision), or that folder;
            default: the cache folder :func:`cifar10_root`.
        train: The 50,000 training images (``data_batch_1..5``) or the 10,000 test images.
        download: When the folder is missing, download the archive into ``root`` (or take the one
            placed there by hand), check its MD5 and unpack it (:func:`download_cifar10`).
        progress: Show the download's progress bar.

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
    base = Path(root) if root is not None else cifar10_root()
    folder = _find_folder(base)
    if folder is None and download:
        folder = download_cifar10(base, progress=progress)
    if folder is None:
        msg = f"CIFAR-10 not found under {base}: expected {base / _FOLDER / 'batches.meta'}. Pass download=True. "
        raise DatasetNotFoundError(msg + _by_hand(base))
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
