"""Pictures in: the one path from an image file, a PIL image or a tensor to the model's pixels.

Every reader of pictures goes through :func:`read_pixels` and :func:`resize_pixels`:
:func:`~cifarkit.data.folders.load_image_folder` (training), :func:`~cifarkit.evaluation.inference.predict`,
evaluation on a folder, the command line, and the check of an exported program. So the same
file gives the *same uint8 tensor* in training and in prediction. The steps:

1. decode with Pillow (the whole picture: no JPEG draft mode, which changes pixels), convert to
   RGB (palette, RGBA, grayscale: RGB; a GIF: its first frame);
2. resize to the model's size by :data:`RESIZE_METHOD` when the size differs: float32,
   ``torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)``,
   rounded half to even and clamped to 0..255. An exported program (:mod:`cifarkit.exporting`)
   runs these same operations, so it reproduces them.

Pillow is imported only when a picture (not a tensor) is read, so ``import cifarkit`` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from cifarkit.errors import ImageReadError, InvalidOptionError, ShapeError
from cifarkit.preprocess import RESIZE_METHOD
from cifarkit.writing import PathLike

__all__ = ["RESIZE_METHOD", "decode_file", "image_batch", "image_tensor", "read_pixels", "resize_pixels", "to_size"]


def to_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``: a side in pixels, or a pair.

    Raises:
        InvalidOptionError: not a positive int or a pair of them.

    Example:
        >>> to_size(32), to_size((24, 40))
        ((32, 32), (24, 40))
    """
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        msg = f"an image size must be a positive int (pixels) or (height, width), got {size!r}"
        raise InvalidOptionError(msg)
    return (int(pair[0]), int(pair[1]))


def resize_pixels(pixels: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize uint8 pixels ``(3, H, W)`` or ``(N, 3, H, W)`` to ``size`` by :data:`RESIZE_METHOD`.

    Bilinear with antialiasing (it averages when it shrinks), computed in float32, rounded half
    to even and clamped to 0..255: uint8 in, uint8 out. A picture of the right size is returned
    as it is.

    Example:
        >>> resize_pixels(torch.full((3, 64, 48), 200, dtype=torch.uint8), 32).unique().tolist()
        [200]
    """
    height, width = to_size(size)
    if pixels.dtype != torch.uint8 or pixels.ndim not in (3, 4) or pixels.shape[-3] != 3:
        msg = f"resize_pixels takes uint8 (3, H, W) or (N, 3, H, W), got {pixels.dtype} {tuple(pixels.shape)}"
        raise ShapeError(msg)
    if tuple(pixels.shape[-2:]) == (height, width):
        return pixels
    batch = pixels.unsqueeze(0) if pixels.ndim == 3 else pixels
    out = F.interpolate(batch.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    out = out.round().clamp_(0, 255).to(torch.uint8)
    return out.squeeze(0) if pixels.ndim == 3 else out


def read_pixels(item: object, size: int | Sequence[int] | None = None) -> torch.Tensor:
    """A picture file or a PIL image as uint8 RGB pixels ``(3, H, W)``, resized to ``size`` if given.

    The one picture path of cifarkit (see the module description): training, prediction and
    exported programs all see the pixels this returns.

    Raises:
        ImageReadError: a missing file, not a regular file (a FIFO would block), not an image,
            damaged, or over Pillow's decompression-bomb limit (the message names the file).
        InvalidOptionError: neither a path nor a PIL image.

    Example:
        >>> from PIL import Image
        >>> read_pixels(Image.new("L", (48, 40), 255), 32).shape
        torch.Size([3, 32, 32])
    """
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        try:
            pixels = decode_file(item)
        except ImageReadError as exc:
            msg = f"cannot read image {item}: {exc}. Pass a PNG/JPEG/BMP file, a PIL image or a tensor"
            raise ImageReadError(msg) from exc
    elif isinstance(item, Image.Image):
        pixels = _rgb_pixels(item)
    else:
        msg = f"expected image paths, PIL images or tensors, got {type(item).__name__}"
        raise InvalidOptionError(msg)
    return resize_pixels(pixels, size) if size is not None else pixels


def _rgb_pixels(image: object) -> torch.Tensor:
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # type: ignore[attr-defined]
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def decode_file(path: PathLike) -> torch.Tensor:
    """Decode a picture file into uint8 RGB pixels ``(3, H, W)`` at its own size.

    Raises:
        ImageReadError: the reason alone (the caller names the file): not a regular file, a
            decompression bomb, not an image, damaged.
    """
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():  # a FIFO named like a picture would block the read for ever
        why = "no such file" if not file.exists() else "not a regular file (a FIFO, device or socket)"
        raise ImageReadError(why)
    try:
        with Image.open(file) as img:
            width, height = img.size
            if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
                limit = Image.MAX_IMAGE_PIXELS
                msg = f"{width}x{height} pixels is over Pillow's decompression-bomb limit ({limit:,} pixels)"
                raise ImageReadError(msg)
            return _rgb_pixels(img)  # palette, RGBA, grayscale: RGB; a GIF: its first frame
    except ImageReadError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{type(exc).__name__}: {exc}") from exc


def image_tensor(item: object) -> torch.Tensor:
    """One input as a float tensor in [0, 1]: ``(3, H, W)`` or ``(N, 3, H, W)``.

    ``item`` is a file path, a PIL image (any mode: converted to RGB) or a tensor; uint8 tensors
    are scaled by 1/255 as :class:`~cifarkit.data.loader.TensorLoader` does.

    Raises:
        ImageReadError: a file is missing or not an image (the message names it).
        ShapeError: a tensor that is not ``(3, H, W)`` or ``(N, 3, H, W)``.
        InvalidOptionError: anything else.

    Example:
        >>> image_tensor(torch.full((3, 2, 2), 255, dtype=torch.uint8)).max()
        tensor(1.)
    """
    item = _checked_tensor(item if isinstance(item, torch.Tensor) else read_pixels(item))
    return item.float() / 255.0 if not item.is_floating_point() else item.float()


def _checked_tensor(item: torch.Tensor) -> torch.Tensor:
    """A ``(3, H, W)``/``(N, 3, H, W)`` tensor; integer pixels other than uint8 become uint8."""
    if item.ndim not in (3, 4) or item.shape[-3] != 3:
        msg = f"image tensors must be (3, H, W) or (N, 3, H, W), got {tuple(item.shape)}"
        raise ShapeError(msg)
    if not item.is_floating_point() and item.dtype != torch.uint8:
        if item.numel() and (int(item.min()) < 0 or int(item.max()) > 255):
            msg = f"integer pixels must lie in 0..255, got {int(item.min())}..{int(item.max())} ({item.dtype})"
            raise InvalidOptionError(msg)
        item = item.to(torch.uint8)
    return item


def image_batch(items: Sequence[object], *, size: int | Sequence[int]) -> torch.Tensor:
    """Stack inputs into one float ``(N, 3, height, width)`` batch in [0, 1].

    Files, PIL images and uint8 tensors take the one picture path (:func:`read_pixels`,
    :func:`resize_pixels`: resized and rounded to uint8, then scaled by 1/255); float tensors
    are taken as already scaled and resized in float by the same interpolation.

    Example:
        >>> image_batch([torch.zeros(3, 64, 48), torch.zeros(2, 3, 32, 32)], size=32).shape
        torch.Size([3, 3, 32, 32])
    """
    height, width = to_size(size)
    batch = []
    for item in items:
        t = _checked_tensor(item if isinstance(item, torch.Tensor) else read_pixels(item))
        t = t.unsqueeze(0) if t.ndim == 3 else t
        if t.dtype == torch.uint8:
            t = resize_pixels(t, (height, width)).float() / 255.0
        else:
            t = t.float()
            if tuple(t.shape[-2:]) != (height, width):
                t = F.interpolate(t, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        batch.append(t)
    return torch.cat(batch)
