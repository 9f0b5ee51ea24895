"""A generated, offline stand-in for CIFAR-10: ten classes of shapes and textures that a CNN must
see to tell apart (:func:`synthetic_cifar10`). It is not CIFAR-10.
"""

from __future__ import annotations

import torch

from cifarkit.data.tensors import ImageTensors
from cifarkit.errors import check_positive_int

__all__ = ["SYNTHETIC_CLASSES", "synthetic_cifar10"]

SYNTHETIC_CLASSES = [
    "disc", "square", "ring", "cross", "triangle", "diamond",
    "h-stripes", "v-stripes", "checkers", "diagonals",
]  # fmt: skip


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
