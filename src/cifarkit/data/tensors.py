"""A whole image dataset in memory: :class:`ImageTensors` (uint8 images, int64 labels, class names,
the files they came from), whose :meth:`~ImageTensors.loader` gives a
:class:`~cifarkit.data.loader.TensorLoader`. Every source of pictures (:mod:`~cifarkit.data.cifar10`,
:mod:`~cifarkit.data.synthetic`, :mod:`~cifarkit.data.folders`) returns one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cifarkit.data.loader import TensorLoader
from cifarkit.errors import ShapeError

__all__ = ["ImageTensors"]


@dataclass(frozen=True)
class ImageTensors:
    """A whole image dataset in memory.

    Attributes:
        images: uint8 tensor ``(N, 3, H, W)`` (32x32 for CIFAR-10).
        labels: int64 tensor ``(N,)``.
        classes: class names, indexed by label.
        skipped: ``(file, reason)`` of the files a folder reader could not read.
        sources: The file each image came from (read by
            :func:`~cifarkit.data.folders.load_image_folder`); ``None`` for generated or CIFAR-10 data.
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
            >>> data = ImageTensors(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10))
            >>> len(data.subset(torch.tensor([0, 3])))
            2
        """
        if indices.dtype == torch.bool:
            indices = indices.nonzero().reshape(-1)
        sources = None if self.sources is None else [self.sources[i] for i in indices.reshape(-1).tolist()]
        return ImageTensors(self.images[indices], self.labels[indices], list(self.classes), sources=sources)
