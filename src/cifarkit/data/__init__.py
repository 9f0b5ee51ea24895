"""The data: pictures in, batches out.

================================= =================================================================
:mod:`~cifarkit.data.tensors`      :class:`ImageTensors`, a dataset in memory (uint8 images, labels,
                                   class names, the files they came from)
:mod:`~cifarkit.data.cifar10`      real CIFAR-10 from its folder or the cache, downloaded when asked
:mod:`~cifarkit.data.synthetic`    a generated offline stand-in (not CIFAR-10)
:mod:`~cifarkit.data.folders`      your own pictures: one sub-folder per class
:mod:`~cifarkit.data.images`       the one picture path: file, PIL image or tensor to the model's
                                   pixels
:mod:`~cifarkit.data.loader`       the :class:`Loader` contract and the in-memory :class:`TensorLoader`
================================= =================================================================

Example:
    >>> from cifarkit.data import synthetic_cifar10
    >>> x, y = next(iter(synthetic_cifar10(64).loader(batch_size=16, seed=0)))
    >>> tuple(x.shape), x.dtype, y.dtype
    ((16, 3, 32, 32), torch.float32, torch.int64)
"""

from __future__ import annotations

from cifarkit.data.cifar10 import CIFAR10_CLASSES, cifar10_root, download_cifar10, load_cifar10
from cifarkit.data.folders import is_image_folder, load_image_folder
from cifarkit.data.loader import Batch, Loader, TensorLoader
from cifarkit.data.synthetic import SYNTHETIC_CLASSES, synthetic_cifar10
from cifarkit.data.tensors import ImageTensors

__all__ = [
    "CIFAR10_CLASSES",
    "SYNTHETIC_CLASSES",
    "Batch",
    "ImageTensors",
    "Loader",
    "TensorLoader",
    "cifar10_root",
    "download_cifar10",
    "is_image_folder",
    "load_cifar10",
    "load_image_folder",
    "synthetic_cifar10",
]
