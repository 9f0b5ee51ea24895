"""Pictures in: image files, PIL images and tensors turned into float batches for a model.

Pillow is imported only when a picture (not a tensor) is read, so ``import cifarkit`` stays fast.

May import: cifarkit.errors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cifarkit.errors import ImageReadError, InvalidOptionError, ShapeError

__all__ = ["image_batch", "image_tensor"]


def image_tensor(item: object) -> torch.Tensor:
    """One input as a float tensor in [0, 1]: ``(3, H, W)`` or ``(N, 3, H, W)``.

    ``item`` is a file path, a PIL image (any mode: converted to RGB) or a tensor; uint8 tensors
    are scaled by 1/255 as :class:`~cifarkit.loader.TensorLoader` does.

    Raises:
        ImageReadError: a file is missing or not an image (the message names it).
        ShapeError: a tensor that is not ``(3, H, W)`` or ``(N, 3, H, W)``.
        InvalidOptionError: anything else.

    Example:
        >>> image_tensor(torch.full((3, 2, 2), 255, dtype=torch.uint8)).max()
        tensor(1.)
    """
    if not isinstance(item, torch.Tensor):
        item = _read_picture(item)
    if item.ndim not in (3, 4) or item.shape[-3] != 3:
        msg = f"image tensors must be (3, H, W) or (N, 3, H, W), got {tuple(item.shape)}"
        raise ShapeError(msg)
    return item.float() / 255.0 if not item.is_floating_point() else item.float()


def _read_picture(item: object) -> torch.Tensor:
    """A file path or a PIL image as a uint8 ``(3, H, W)`` tensor (any mode converted to RGB)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():  # a FIFO would block the read for ever
            what = "does not exist" if not path.exists() else "is not a regular file"
            msg = f"cannot read image {path}: it {what}. Pass a PNG/JPEG/BMP file, a PIL image or a tensor"
            raise ImageReadError(msg)
        try:
            with Image.open(path) as img:
                item = img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            msg = f"cannot read image {path}: {exc}. Pass a PNG/JPEG/BMP file, a PIL image or a tensor"
            raise ImageReadError(msg) from exc
    if not isinstance(item, Image.Image):
        msg = f"expected image paths, PIL images or tensors, got {type(item).__name__}"
        raise InvalidOptionError(msg)
    return torch.from_numpy(np.array(item.convert("RGB"))).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def image_batch(items: Sequence[object], *, size: int) -> torch.Tensor:
    """Stack inputs (see :func:`image_tensor`) into one ``(N, 3, size, size)`` float batch.

    Pictures of another size are resized (bilinear, antialiased).

    Example:
        >>> image_batch([torch.zeros(3, 64, 48), torch.zeros(2, 3, 32, 32)], size=32).shape
        torch.Size([3, 3, 32, 32])
    """
    batch = []
    for item in items:
        t = image_tensor(item)
        t = t.unsqueeze(0) if t.ndim == 3 else t
        if t.shape[-2:] != (size, size):
            t = torch.nn.functional.interpolate(
                t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        batch.append(t)
    return torch.cat(batch)
