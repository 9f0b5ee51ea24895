"""The cheap checks of an audit: every file read once (what cannot be decoded, what its extension
misnames), every picture hashed twice (its exact pixels, and a perceptual hash), and the
pictures measured (blank, small, stretched, grey) and counted by class.

Near duplicates, the rule: each picture in grey at 32x32 gives two descriptors, a perceptual hash
(pHash: the 2-D DCT's 63 lowest frequencies but the mean, each compared with their median: 63
bits) and an 8x8 thumbnail with its mean taken out and scaled to length 1. Two pictures are near
duplicates when their hashes differ in at most :data:`NEAR_RADIUS` bits **or** their thumbnails'
cosine similarity is at least :data:`NEAR_COSINE`. Measured on 83 textured 64x64 tiles of two real
photographs (scikit-learn's sample images): no pair of different tiles matched, and a resized
copy (to 48 or 128 px), a JPEG at quality 70 and a 30% brighter copy always did; a copy shifted
by 2 px did 99 times in 100, one cropped by 5% on each side 89 times in 100. Blank pictures
(reported as such) are left out: their descriptors are noise. All pairs are compared at once, as
matrix products in chunks of rows: no Python loop over pairs, about a second for 10,000
pictures on two cores.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from cifarkit.data.tensors import ImageTensors

__all__ = [
    "NEAR_COSINE",
    "NEAR_RADIUS",
    "Picture",
    "balance",
    "clusters",
    "exact_groups",
    "near_pairs",
    "odd_pictures",
    "perceptual_hashes",
    "read_pictures",
    "thumbnails",
]

#: Hamming radius (of 63 bits) within which two perceptual hashes are the same picture ...
NEAR_RADIUS = 10
#: ... or the cosine similarity of the mean-free 8x8 thumbnails from which they are.
NEAR_COSINE = 0.92
#: Pixel standard deviation (0-255) below which a picture is almost constant.
BLANK_STD = 3.0
#: Mean difference between colour channels (0-255) below which a picture is grey.
GREY_SPREAD = 2.0
#: Longest-to-shortest side above which a picture is stretched.
ODD_ASPECT = 3.0
#: What each format's files are called (Pillow's format names).
_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"}, "PNG": {".png"}, "GIF": {".gif"}, "BMP": {".bmp"},
    "WEBP": {".webp"}, "TIFF": {".tif", ".tiff"}, "PPM": {".ppm", ".pgm", ".pbm", ".pnm"}, "ICO": {".ico"},
}  # fmt: skip


@dataclass
class Picture:
    """One picture of an audit: where it came from, its label and split, and what was measured."""

    source: str | None
    label: int
    split: int  # 0: the data audited; 1, 2...: the ``against`` splits
    pixels: torch.Tensor | None = field(default=None, repr=False)  # uint8 (3, H, W) at its own size
    size: tuple[int, int] | None = None  # its own (height, width), when read from a file
    format: str | None = None
    error: str | None = None  # why it could not be read

    @property
    def name(self) -> str:
        return self.source if self.source is not None else f"picture {self.label}"


def _read_file(path: Path) -> tuple[torch.Tensor | None, str | None, str | None]:
    """Pixels, Pillow's format name, and an error: the whole file decoded (a truncated one fails)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            fmt = img.format
            rgb = img.convert("RGB")  # decodes every byte: a truncated file raises here
            pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()
            return pixels, fmt, None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return None, None, f"{type(exc).__name__}: {exc}"


def read_pictures(files: Sequence[tuple[Path, int]], split: int, *, workers: int | None = None) -> list[Picture]:
    """Decode every file (in threads: Pillow releases the GIL); nothing is written."""
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda item: _read_file(item[0]), files))
    pictures = []
    for (path, label), (pixels, fmt, error) in zip(files, decoded, strict=True):
        size = (int(pixels.shape[1]), int(pixels.shape[2])) if pixels is not None else None
        pictures.append(Picture(str(path), label, split, pixels, size, fmt, error))
    return pictures


def pictures_of(data: ImageTensors, split: int) -> list[Picture]:
    """An :class:`ImageTensors`' pictures (at the size they were read at: no file size known)."""
    sources: list[str | None] = list(data.sources) if data.sources is not None else [None] * len(data)
    return [
        Picture(source, int(label), split, image) for source, label, image in zip(sources, data.labels, data.images)
    ]


def wrong_extension(picture: Picture) -> str | None:
    """What the file's name says and what its bytes are, when they differ."""
    if picture.source is None or picture.format is None or picture.format not in _EXTENSIONS:
        return None
    suffix = Path(picture.source).suffix.lower()
    if suffix in _EXTENSIONS[picture.format]:
        return None
    return f"named {suffix or 'without a suffix'} but holds a {picture.format} picture"


def exact_key(pixels: torch.Tensor) -> str:
    """The same decoded pixels, the same key (SHA-256 of the size and the bytes)."""
    digest = hashlib.sha256(f"{tuple(pixels.shape)}".encode())
    digest.update(pixels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def exact_groups(pictures: Sequence[Picture]) -> list[list[int]]:
    """Indices of the pictures with the same decoded pixels, groups of two or more."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, picture in enumerate(pictures):
        if picture.pixels is not None:
            groups[exact_key(picture.pixels)].append(i)
    return [members for members in groups.values() if len(members) > 1]


def _dct_matrix(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    matrix = torch.cos(math.pi / n * (k[None, :] + 0.5) * k[:, None])  # (frequency, position)
    matrix[0] /= math.sqrt(2)
    return (matrix * math.sqrt(2 / n)).float()


def grey_small(pictures: Sequence[Picture], side: int = 32) -> torch.Tensor:
    """Every picture in grey at ``side`` x ``side``, float ``(N, side, side)`` (0 for unreadable
    ones); pictures of one size are resized as one batch."""
    out = torch.zeros(len(pictures), side, side)
    weights = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    for members in _by_size(pictures).values():
        for start in range(0, len(members), 1024):
            chunk = members[start : start + 1024]
            x = torch.stack([pictures[i].pixels for i in chunk]).float()  # type: ignore[misc]
            grey = (x * weights).sum(1, keepdim=True)
            if grey.shape[-2:] != (side, side):
                grey = F.interpolate(grey, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            out[chunk] = grey[:, 0]
    return out


def perceptual_hashes(grey: torch.Tensor) -> torch.Tensor:
    """63-bit pHashes ``(N, 63)`` as +-1 floats, of grey pictures ``(N, 32, 32)``."""
    dct = _dct_matrix(grey.shape[-1])
    coefficients = dct @ grey @ dct.T  # (N, 32, 32): the 2-D DCT
    low = coefficients[:, :8, :8].reshape(len(grey), 64)[:, 1:]  # the 63 lowest, the mean (DC) left out
    return torch.where(low > low.median(dim=1, keepdim=True).values, 1.0, -1.0)


def thumbnails(grey: torch.Tensor) -> torch.Tensor:
    """Mean-free 8x8 thumbnails of length 1 ``(N, 64)``: brightness and contrast taken out."""
    small = F.interpolate(grey[:, None], size=(8, 8), mode="area").reshape(len(grey), 64)
    small = small - small.mean(1, keepdim=True)
    unit: torch.Tensor = small / small.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return unit


def near_pairs(
    grey: torch.Tensor, usable: torch.Tensor, *, radius: int = NEAR_RADIUS, cosine: float = NEAR_COSINE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs ``i < j`` among the ``usable`` pictures that the rule (see the module) calls the
    same picture: ``(i, j, bits)`` as tensors, all pairs at once, in chunks of rows."""
    index = usable.nonzero().reshape(-1)
    empty = torch.zeros(0, dtype=torch.int64)
    if index.numel() < 2:
        return empty, empty, empty
    bits, thumbs = perceptual_hashes(grey[index]), thumbnails(grey[index])
    n_bits = bits.shape[1]
    found_i, found_j, found_d = [], [], []
    for start in range(0, len(index), 4096):
        distance = (n_bits - bits[start : start + 4096] @ bits.T) / 2  # (rows, N) Hamming distances
        similar = thumbs[start : start + 4096] @ thumbs.T
        rows, cols = torch.nonzero((distance <= radius + 0.5) | (similar >= cosine), as_tuple=True)
        take = cols > rows + start  # each pair once, no picture with itself
        rows, cols = rows[take], cols[take]
        found_i.append(index[rows + start])
        found_j.append(index[cols])
        found_d.append(distance[rows, cols].round().long())
    return torch.cat(found_i), torch.cat(found_j), torch.cat(found_d)


def clusters(n: int, first: torch.Tensor, second: torch.Tensor) -> list[list[int]]:
    """The connected groups (of two or more) of ``n`` items joined by the pairs ``first[k]-second[k]``."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(first.tolist(), second.tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in {*first.tolist(), *second.tolist()}:
        groups[root(i)].append(i)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _by_size(pictures: Sequence[Picture]) -> dict[tuple[int, ...], list[int]]:
    """Indices of the readable pictures, grouped by their shape: each group is one batch."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, picture in enumerate(pictures):
        if picture.pixels is not None:
            groups[tuple(picture.pixels.shape)].append(i)
    return groups


def odd_pictures(pictures: Sequence[Picture], input_side: int) -> dict[str, list[tuple[int, str]]]:
    """Blank, too small, stretched and grey pictures: ``kind -> [(index, what was found)]``."""
    found: dict[str, list[tuple[int, str]]] = {"blank": [], "too_small": [], "odd_aspect": [], "grey": []}
    spreads: list[tuple[int, float]] = []
    stds: dict[int, float] = {}
    colours: dict[int, float] = {}
    for members in _by_size(pictures).values():  # one batch per size: a few ops, not a few per picture
        for start in range(0, len(members), 1024):
            chunk = members[start : start + 1024]
            x = torch.stack([pictures[i].pixels for i in chunk]).float()  # type: ignore[misc]
            spread = ((x[:, 0] - x[:, 1]).abs().mean((1, 2)) + (x[:, 1] - x[:, 2]).abs().mean((1, 2))) / 2
            stds.update(zip(chunk, x.flatten(1).std(1).tolist(), strict=True))
            colours.update(zip(chunk, spread.tolist(), strict=True))
    for i, picture in enumerate(pictures):
        if picture.pixels is None:
            continue
        std = stds[i]
        if std < BLANK_STD:
            found["blank"].append((i, f"almost one colour (pixel std {std:.1f} of 255)"))
            continue
        if picture.size is not None:
            height, width = picture.size
            if min(height, width) < input_side / 2:
                found["too_small"].append((i, f"{height}x{width}, for a model that takes {input_side}x{input_side}"))
            if max(height, width) / min(height, width) > ODD_ASPECT:
                found["odd_aspect"].append((i, f"{height}x{width}: {max(height, width) / min(height, width):.1f}:1"))
        spreads.append((i, colours[i]))
    colour = sum(spread >= GREY_SPREAD for _, spread in spreads)
    if colour > len(spreads) / 2:  # a colour set: its grey pictures are odd
        found["grey"] = [(i, "grey in a colour set") for i, spread in spreads if spread < GREY_SPREAD]
    return found


@dataclass(frozen=True)
class Balance:
    """How the classes of the audited split are balanced, and what to do about it.

    Attributes:
        counts: Pictures per class.
        ratio: Largest class over smallest (``inf`` with an empty class).
        too_small: Classes with fewer than ``1 / val_fraction`` pictures: a validation split of
            that share holds none of them.
        weights: Per-class weights ``N / (C * n_c)`` for ``CrossEntropyLoss(weight=...)`` or a
            ``WeightedRandomSampler`` (1.0 everywhere when balanced).
    """

    counts: dict[str, int]
    ratio: float
    too_small: list[str]
    weights: dict[str, float]

    @property
    def flagged(self) -> bool:
        """The largest class has at least 3 times the pictures of the smallest, or a class is too small."""
        return self.ratio >= 3 or bool(self.too_small)

    def advice(self) -> str:
        """What to do, in words."""
        if not self.flagged:
            return "balanced enough"
        parts = []
        if self.ratio >= 3:
            weights = ", ".join(f"{k}: {v:.2f}" for k, v in self.weights.items())
            parts.append(
                f"the largest class has {self.ratio:.1f}x the pictures of the smallest: weight the loss "
                f"(CrossEntropyLoss(weight=torch.tensor([...]))) or sample with WeightedRandomSampler, with the "
                f"weights {weights}"
            )
        if self.too_small:
            parts.append(f"{', '.join(self.too_small)} too few for a validation split: add pictures")
        return "; ".join(parts)


def balance(labels: Sequence[int], classes: Sequence[str], val_fraction: float = 0.2) -> Balance:
    """Counts, ratio, classes too small for the validation split, and suggested weights."""
    counts = dict.fromkeys(classes, 0)
    for label in labels:
        counts[classes[label]] += 1
    total, c = sum(counts.values()), len(counts)
    smallest, largest = min(counts.values()), max(counts.values())
    ratio = largest / smallest if smallest else math.inf
    too_small = [name for name, n in counts.items() if n * val_fraction < 1]
    weights = {name: (total / (c * n) if n else 0.0) for name, n in counts.items()}
    return Balance(counts, ratio, too_small, weights)
