"""The batch-loader contract and the fast in-memory loader that fulfils it.

:class:`Loader` is what :func:`~cifarkit.training.loop.train_loop` and :mod:`cifarkit.distributed` ask of
a loader beyond plain iteration (a ``typing.Protocol``, checked by duck typing, never by concrete
type). :class:`TensorLoader` implements it: images held as one uint8 tensor ``(N, 3, H, W)`` and
converted to float32 per batch (the airbench approach): no per-image Python, no PIL, four times
less memory than float. Plain iterables of ``(x, y)`` batches (a list, a generator, a
``DataLoader``) are accepted everywhere a loader is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from cifarkit.errors import EmptyDataError, InvalidOptionError, ShapeError, check_choice, check_positive_int
from cifarkit.preprocess import Preprocess, make_record

__all__ = ["Batch", "Loader", "TensorLoader", "check_not_empty", "match_memory_format", "set_epoch"]

#: One batch: images ``(B, 3, H, W)`` and integer labels ``(B,)``.
Batch = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class Loader(Protocol):
    """A re-iterable source of batches that the loop and the distributed glue can steer.

    * ``set_epoch(e)``: make epoch ``e``'s order (and augmentation) a function of the seed and ``e``;
    * ``shard(rank, world_size, pad=...)``: this rank's share, as ``DistributedSampler`` gives;
    * ``with_options(**changes)``: a copy sharing storage with some options changed (the loop asks
      for ``memory_format=``);
    * ``device`` and ``memory_format``: where and in which layout batches come out.
    """

    device: torch.device
    memory_format: torch.memory_format

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def shard(self, rank: int, world_size: int, *, pad: bool = True) -> Loader: ...

    def with_options(self, **changes: Any) -> Loader: ...


def set_epoch(data: Iterable[Batch], epoch: int) -> None:
    """Tell ``data`` (or its sampler, e.g. a ``DistributedSampler``) which epoch begins, if it listens.

    Example:
        >>> loader = TensorLoader(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.zeros(4), seed=0)
        >>> set_epoch(loader, 3); loader.epoch
        3
        >>> set_epoch([(torch.zeros(1), torch.zeros(1))], 3)  # a plain list: nothing to tell
    """
    target = data if hasattr(data, "set_epoch") else getattr(data, "sampler", None)
    method = getattr(target, "set_epoch", None)
    if callable(method):
        method(epoch)


def check_not_empty(data: Iterable[Batch], name: str) -> None:
    """Raise :class:`~cifarkit.errors.EmptyDataError` when ``data`` has a length of 0.

    Example:
        >>> check_not_empty([], "training data")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cifarkit.errors.EmptyDataError: training data is empty: it yields no batches ...
    """
    if hasattr(data, "__len__") and len(data) == 0:  # type: ignore[arg-type]
        msg = f"{name} is empty: it yields no batches (check the dataset path and batch size)"
        raise EmptyDataError(msg)


def match_memory_format(data: Iterable[Batch], device: torch.device, fmt: torch.memory_format) -> Iterable[Batch]:
    """Have a :class:`Loader` on ``device`` emit batches in ``fmt`` (converted while casting to
    float: no extra copy); anything else is returned as it is.

    Example:
        >>> loader = TensorLoader(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.zeros(4), seed=0)
        >>> match_memory_format(loader, torch.device("cpu"), torch.channels_last).memory_format
        torch.channels_last
    """
    # The attributes first: a Protocol's isinstance costs more than the rest of the call.
    differs = getattr(data, "memory_format", fmt) != fmt and getattr(data, "device", None) == device
    if differs and isinstance(data, Loader):
        return data.with_options(memory_format=fmt)
    return data


def _as_given(values: Sequence[float] | torch.Tensor) -> list[float]:
    """Python floats, through float64: 0.13 stays 0.13."""
    return [float(v) for v in torch.as_tensor(values, dtype=torch.float64).reshape(-1).tolist()]


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
    ``e`` (like ``DistributedSampler``): :func:`~cifarkit.training.loop.train_loop` calls
    :meth:`set_epoch`; without it, each new iteration moves to the next epoch.

    Args:
        images: uint8 ``(N, 3, H, W)`` (float input in [0, 1] is accepted and quantised).
        labels: integer ``(N,)``.
        batch_size: Images per batch.
        shuffle: Draw a new permutation every epoch.
        drop_last: Drop the last, smaller batch.
        augment: Random crop (pad 4) and horizontal flip (no flip with ``mirror=False``).
        mirror: ``False`` for pictures that must not be mirrored (digits, letters, text): no flip
            in the augmentation, and the model's record says so, so that flip test-time
            augmentation is refused for it.
        mix: ``"mixup"`` or ``"cutmix"``: mix each batch with itself in another order
            (torchvision's ``transforms.v2.MixUp`` / ``CutMix``); the targets become class
            probabilities ``(B, C)``, which cifarkit's cross-entropy takes. The mix of epoch ``e``
            depends only on the seed and ``e``, so a resumed run mixes the same way.
        mix_alpha: The Beta(alpha, alpha) distribution the mixing share is drawn from.
        mix_prob: The share of batches that are mixed (the others keep one-hot targets).
        num_classes: Classes of the targets when mixing; default: the class names' count, else
            the largest label + 1.
        device: Where batches (and the uint8 storage) live.
        generator: Seeds the loader (one draw at construction); default: torch's global RNG.
        seed: Explicit seed instead of ``generator``.
        normalize: ``(mean, std)`` per channel, applied after scaling to [0, 1].
        memory_format: e.g. ``torch.channels_last`` for conv nets.
        classes: The class names (label order); they travel into the model's preprocessing
            record (:meth:`preprocessing`). :meth:`ImageTensors.loader <cifarkit.data.tensors.ImageTensors.loader>`
            passes the dataset's.

    Example:
        >>> images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
        >>> loader = TensorLoader(images, torch.randint(0, 10, (100,)), batch_size=32, seed=0)
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
        mirror: bool = True,
        mix: Literal["mixup", "cutmix"] | None = None,
        mix_alpha: float = 1.0,
        mix_prob: float = 1.0,
        num_classes: int | None = None,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        classes: Sequence[str] | None = None,
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            msg = f"images must be (N, 3, H, W), got {tuple(images.shape)}"
            raise ShapeError(msg)
        if labels.shape != (images.shape[0],):
            msg = f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            raise ShapeError(msg)
        if images.shape[0] == 0:
            msg = "TensorLoader got an empty dataset (0 images); check the dataset path or the filter applied"
            raise EmptyDataError(msg)
        check_positive_int("batch_size", batch_size)
        if images.is_floating_point():
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        self.device = torch.device(device)
        self.images = images.to(self.device, torch.uint8).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.mirror = bool(mirror)
        check_choice("mix", mix, (None, "mixup", "cutmix"))
        for name, value, low in (("mix_alpha", mix_alpha, 0.0), ("mix_prob", mix_prob, 0.0)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value > low and (name != "mix_prob" or value <= 1)):  # fmt: skip
                msg = f"{name} must be a number above 0{' and at most 1' if name == 'mix_prob' else ''}, got {value!r}"
                raise InvalidOptionError(msg)
        self.mix, self.mix_alpha, self.mix_prob = mix, float(mix_alpha), float(mix_prob)
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
        # The numbers as given (0.13, not float32's 0.12999999523): they go into model files.
        self.normalize_values = None if normalize is None else (_as_given(normalize[0]), _as_given(normalize[1]))
        self.classes = [str(c) for c in classes] if classes is not None else None
        self.num_classes = num_classes or (len(self.classes) if self.classes else int(self.labels.max()) + 1)
        if mix is not None:
            check_positive_int("num_classes", self.num_classes, minimum=2)
        self._shard = _Shard()

    # -- configuration ----------------------------------------------------------------

    def _copy(self, **changes: Any) -> TensorLoader:
        clone = object.__new__(TensorLoader)
        clone.__dict__.update(self.__dict__)
        clone.__dict__.update(changes)
        return clone

    def shard(self, rank: int, world_size: int, *, drop_last: bool | None = None, pad: bool = True) -> TensorLoader:
        """This rank's share of every epoch, with ``DistributedSampler``'s semantics.

        All ranks draw the same permutation (same seed and epoch); it is padded by repeating its
        start to a multiple of ``world_size`` (or truncated with ``drop_last=True``; or left
        uneven with ``pad=False``, for evaluation), and rank ``r`` takes every
        ``world_size``-th index from ``r``. Storage is shared, not copied.

        Example:
            >>> loader = TensorLoader(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10), seed=0)
            >>> a, b = loader.shard(0, 2), loader.shard(1, 2)
            >>> ya, yb = next(iter(a))[1], next(iter(b))[1]
            >>> len(ya), len(yb)
            (5, 5)
        """
        if not 0 <= rank < world_size:
            msg = f"rank must be in [0, {world_size}), got {rank}"
            raise InvalidOptionError(msg)
        drop = self.drop_last if drop_last is None else drop_last
        return self._copy(_shard=_Shard(rank, world_size, drop, pad))

    def with_options(self, **changes: Any) -> TensorLoader:
        """A copy sharing storage and seed with some attributes changed (e.g. ``memory_format``)."""
        unknown = set(changes) - {"batch_size", "shuffle", "drop_last", "augment", "memory_format", "mix"}
        if unknown:
            msg = f"with_options does not take {sorted(unknown)}"
            raise InvalidOptionError(msg)
        return self._copy(**changes)

    def set_epoch(self, epoch: int) -> None:
        """Select the order (and augmentation) of epoch ``epoch``."""
        self.epoch = int(epoch)

    def preprocessing(self) -> Preprocess:
        """The preprocessing record of a model trained on these batches (input size, scaling,
        normalization as given, class names), for :func:`~cifarkit.training.loop.train_loop` to attach.

        Example:
            >>> loader = TensorLoader(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2), seed=0,
            ...                       normalize=((0.13,), (0.3,)))
            >>> record = loader.preprocessing()
            >>> record["input_size"], record["mean"], record["std"]
            ([8, 8], [0.13], [0.3])
        """
        mean, std = self.normalize_values if self.normalize_values is not None else (None, None)
        size = [int(v) for v in self.images.shape[-2:]]
        return make_record(input_size=size, mean=mean, std=std, classes=self.classes, mirror=self.mirror)

    def state_dict(self) -> dict[str, int]:
        """The seed and epoch: with them a resumed run draws the same batches (checkpoints keep it).

        Example:
            >>> loader = TensorLoader(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.zeros(4), seed=7)
            >>> loader.state_dict()
            {'seed': 7, 'epoch': 0}
        """
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

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
        flip = (torch.rand(b, generator=g) < (0.5 if self.mirror else 0.0)).to(x.device)
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
        in_order = not self.shuffle and self._shard.world_size == 1  # batches are slices: no gather
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, order.numel()), self.batch_size):
            if in_order:  # views: no copy
                x, y = self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]
            else:  # a uint8 gather (4x fewer bytes than float) by whole rows: 5x faster than images[idx]
                idx = order[start : start + self.batch_size]
                x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            if self.augment:
                x = self._crop_flip(x, g)
            # One pass: uint8 -> float32 in the target memory format, then scale in place.
            x = x.to(dtype=torch.float32, memory_format=self.memory_format).mul_(1.0 / 255.0)
            if self._normalize is not None:
                x = x.sub_(self._normalize[0]).div_(self._normalize[1])
            yield (x, y) if self.mix is None else self._mixed(x, y, g)

    def _mixed(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp or CutMix of one batch, drawn from a seed taken from the epoch's generator: the
        global random state is forked, seeded and given back (torchvision draws from it)."""
        from torchvision.transforms import v2

        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        mixed = bool(torch.rand((), generator=g) < self.mix_prob)
        if not mixed:
            return x, torch.nn.functional.one_hot(y, self.num_classes).to(x.dtype)
        make = v2.MixUp if self.mix == "mixup" else v2.CutMix
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            images, targets = make(alpha=self.mix_alpha, num_classes=self.num_classes)(x, y)
        return images, targets

    def __repr__(self) -> str:
        return (
            f"TensorLoader(n={self.images.shape[0]}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, augment={self.augment}, mix={self.mix}, device={str(self.device)!r}, "
            f"seed={self.seed}, shard={self._shard.rank}/{self._shard.world_size})"
        )
