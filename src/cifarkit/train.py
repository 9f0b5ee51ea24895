"""The training loop, evaluation and prediction.

``train_loop`` is the tutorial's optimizer lesson made reusable: for every batch
``zero_grad -> forward -> loss -> backward -> step``, over epochs, with the loss accumulated
*detached* (the tutorial's ``sum_loss = sum_loss + result_loss`` keeps every step's autograd
graph alive), a per-epoch :class:`History`, evaluation, checkpoints and resume.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarkit.diagnosis import unwrap_model
from cifarkit.errors import ImageReadError, InvalidOptionError, MissingExtraError, NonFiniteLossError, ShapeError
from cifarkit.losses import CrossEntropyLoss

__all__ = [
    "EpochStats",
    "EvalResult",
    "History",
    "Prediction",
    "cpu_supports_bf16",
    "evaluate",
    "predict",
    "resolve_device",
    "retain_cpu_memory",
    "train_loop",
]

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else MPS, else CPU; anything else as ``torch.device``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        msg = f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'"
        raise InvalidOptionError(msg) from exc


_ALLOCATOR_TUNED = False


def retain_cpu_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (Linux only).

    A conv net frees and re-allocates the same multi-MB activation buffers every step. By default
    glibc hands large freed blocks back to the OS (``munmap``/heap trimming), so every step
    page-faults them in again. Raising ``M_MMAP_THRESHOLD`` to its maximum (32 MiB) and
    ``M_TRIM_THRESHOLD`` to 1 GiB keeps them in the heap: +13% training throughput for the
    tutorial CNN measured on a 2-core CPU. The setting is process-wide and lasts until the process
    ends; the cost is that the process keeps its peak heap. Returns whether it was applied.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
        ok = bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX), so ``amp=True`` pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@dataclass
class EpochStats:
    """Figures of one epoch (``epoch`` counts from 1)."""

    epoch: int
    loss_sum: float
    loss_mean: float
    train_accuracy: float
    images: int
    seconds: float
    images_per_second: float
    lr: list[float] = field(default_factory=list)
    grad_norm: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None


@dataclass
class History:
    """Per-epoch figures of a training run: ``history.epochs[-1].loss_sum`` and friends.

    Example:
        >>> h = History([EpochStats(1, 10.0, 1.0, 0.5, 10, 1.0, 10.0)])
        >>> History.from_dict(h.to_dict()) == h
        True
        >>> h.column("loss_sum")
        [10.0]
    """

    epochs: list[EpochStats] = field(default_factory=list)
    compile_seconds: float | None = None

    def __len__(self) -> int:
        return len(self.epochs)

    def column(self, name: str) -> list[Any]:
        """One figure over all epochs, e.g. ``history.column("eval_accuracy")``."""
        return [getattr(e, name) for e in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (and ``torch.load(weights_only=True)``-safe)."""
        return {"epochs": [asdict(e) for e in self.epochs], "compile_seconds": self.compile_seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(
            epochs=[EpochStats(**e) for e in data.get("epochs", [])],
            compile_seconds=data.get("compile_seconds"),
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> History:
        """Read a ``history.json`` written by ``train_loop(..., log_dir=...)``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write a PNG of the loss and accuracy curves, train and eval on the same axes.

        Needs matplotlib (``pip install 'cifarkit[plot]'``). The image is 1000x400 pixels.
        """
        try:
            import matplotlib as mpl

            mpl.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            msg = "History.plot needs matplotlib: pip install 'cifarkit[plot]'"
            raise MissingExtraError(msg) from exc
        epochs = self.column("epoch")
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
        ax_loss.plot(epochs, self.column("loss_mean"), marker="o", label="train")
        ax_acc.plot(epochs, self.column("train_accuracy"), marker="o", label="train")
        if any(v is not None for v in self.column("eval_loss")):
            ax_loss.plot(epochs, self.column("eval_loss"), marker="s", label="eval")
            ax_acc.plot(epochs, self.column("eval_accuracy"), marker="s", label="eval")
        ax_loss.set(title="loss (mean per image)", xlabel="epoch")
        ax_acc.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
        plt.close(fig)
        return out


@dataclass(frozen=True)
class EvalResult:
    """Mean loss per image, accuracy in [0, 1], and the number of images (unpacks as a tuple)."""

    loss: float
    accuracy: float
    count: int

    def __iter__(self) -> Iterator[float | int]:
        return iter((self.loss, self.accuracy, self.count))


@dataclass(frozen=True)
class Prediction:
    """The top class of one input: index, name (when known) and softmax probability."""

    index: int
    label: str | None
    probability: float


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _memory_format(model: nn.Module, channels_last: bool | None) -> torch.memory_format:
    use = _has_conv(model) if channels_last is None else channels_last
    return torch.channels_last if use else torch.contiguous_format


def _prepare_data(data: Iterable[Batch], device: torch.device, fmt: torch.memory_format) -> Iterable[Batch]:
    from cifarkit.data import TensorLoader

    if isinstance(data, TensorLoader) and data.device == device and data.memory_format != fmt:
        return data.with_options(memory_format=fmt)  # converts while casting: no extra copy
    return data


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, fmt: torch.memory_format) -> Batch:
    if x.ndim == 4 and not x.is_contiguous(memory_format=fmt):
        x = x.to(device, non_blocking=True, memory_format=fmt)
    elif x.device != device:
        x = x.to(device, non_blocking=True)
    if y.device != device:
        y = y.to(device, non_blocking=True)
    return x, y


def _check_not_empty(data: Iterable[Batch], name: str) -> None:
    if hasattr(data, "__len__") and len(data) == 0:  # type: ignore[arg-type]
        msg = f"{name} is empty: it yields no batches (check the dataset path and batch size)"
        raise ValueError(msg)


def _set_epoch(data: Iterable[Batch], epoch: int) -> None:
    target = data if hasattr(data, "set_epoch") else getattr(data, "sampler", None)
    set_epoch = getattr(target, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def evaluate(
    model: nn.Module,
    data: Iterable[Batch],
    *,
    loss_fn: LossFn | None = None,
    device: str | torch.device = "auto",
    amp: bool = False,
    channels_last: bool | None = None,
    distributed: bool | None = None,
) -> EvalResult:
    """Mean loss and accuracy of ``model`` over ``data``, in ``torch.inference_mode()``.

    The model is put in eval mode and the caller's train/eval mode is restored afterwards.
    As in :func:`train_loop`, a model with convolutions is moved to ``device`` and switched to
    the channels-last memory format (same results up to float rounding; ``channels_last=False``
    keeps its layout). Accepts a :class:`~cifarkit.data.TensorLoader` or any iterable of
    ``(x, y)`` batches.
    Under ``torchrun`` each rank evaluates its shard and the figures are summed over ranks.

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> data = synthetic_cifar10(64)
        >>> result = evaluate(build_cnn(), data.loader(batch_size=32), device="cpu")
        >>> result.count
        64
    """
    from cifarkit import distributed as dist_mod

    dev = resolve_device(device)
    ctx = dist_mod.context(distributed, dev)
    _check_not_empty(data, "evaluate data")
    inner = unwrap_model(model)
    fmt = _memory_format(inner, channels_last)
    inner.to(dev).to(memory_format=fmt)
    data = dist_mod.shard_data(_prepare_data(data, dev, fmt), ctx, pad=False)
    loss_fn = loss_fn or CrossEntropyLoss()
    was_training = inner.training
    inner.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    count = 0
    try:
        with torch.inference_mode(), _autocast(dev, amp):
            for x, y in data:
                x, y = _to_device(x, y, dev, fmt)
                out = inner(x)
                total_loss += loss_fn(out, y).double() * y.shape[0]
                correct += (out.argmax(1) == y).sum()
                count += int(y.shape[0])
    finally:
        inner.train(was_training)
    totals = dist_mod.all_sum(ctx, [float(total_loss), float(correct), float(count)])
    if totals[2] == 0:
        msg = "evaluate data yielded no batches"
        raise ValueError(msg)
    return EvalResult(totals[0] / totals[2], totals[1] / totals[2], int(totals[2]))


def train_loop(
    model: nn.Module,
    data: Iterable[Batch],
    *,
    epochs: int = 1,
    loss_fn: LossFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 0.01,
    device: str | torch.device = "auto",
    eval_data: Iterable[Batch] | None = None,
    max_grad_norm: float | None = None,
    amp: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, History], bool | None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    distributed: bool | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    retain_memory: bool = True,
) -> History:
    """Train ``model`` on ``data`` for ``epochs`` epochs and return the per-epoch :class:`History`.

    Every step: ``optimizer.zero_grad(set_to_none=True)``, forward, loss, ``backward()``,
    optional gradient clipping, ``optimizer.step()``. Losses are accumulated detached on the
    device and read once per epoch.

    Args:
        model: Any ``nn.Module`` classifier producing ``(N, C)`` logits.
        data: A :class:`~cifarkit.data.TensorLoader`, a ``DataLoader`` or any iterable of
            ``(x, y)`` batches. Loaders with ``set_epoch`` are told the epoch.
        epochs: Total number of epochs (with ``checkpoint``, including those already done).
        loss_fn: Default: cifarkit's guarded :class:`~cifarkit.losses.CrossEntropyLoss`.
        optimizer: Default: ``torch.optim.SGD(model.parameters(), lr=lr)`` as in the tutorial.
        lr: Learning rate of the default optimizer.
        device: ``"auto"`` (CUDA, else MPS, else CPU) or a device; model and batches move once.
        eval_data: Evaluated after every epoch (``eval_loss``, ``eval_accuracy``).
        max_grad_norm: Clip the global gradient norm to this value.
        amp: bf16 autocast (CUDA, and CPUs with native bf16; elsewhere it works but is slow).
        progress: A tqdm bar per epoch (only on a terminal).
        on_epoch_end: ``f(epoch, history)`` after each epoch; returning ``True`` stops training.
        checkpoint: A file saved atomically after every epoch and resumed from if it exists.
        compile: Wrap the model in ``torch.compile`` (the first step's time, compile included,
            is recorded as ``History.compile_seconds``).
        channels_last: Use the channels-last memory format; default: for models with Conv2d.
        distributed: Force (``True``) or forbid (``False``) DDP; default: detect ``torchrun``.
        log_dir: Write TensorBoard scalars, an image grid, the graph and ``history.json`` there
            (needs ``pip install 'cifarkit[tensorboard]'``).
        retain_memory: On CPU under Linux, call :func:`retain_cpu_memory` so activation buffers
            are reused instead of page-faulted in again every step (process-wide; +13% measured).

    Raises:
        ValueError: empty data.
        NonFiniteLossError: the loss became NaN/inf; it is checked before ``backward()``, so
            no step with a non-finite loss changes the weights. On CUDA this check reads the
            loss on the host every step (one sync per step), the price of that guarantee.
        KeyboardInterrupt: re-raised after restoring the model's train/eval mode; the
            checkpoint of the last completed epoch stays valid.

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> data = synthetic_cifar10(128)
        >>> history = train_loop(build_cnn(), data.loader(seed=0), epochs=2, device="cpu", progress=False)
        >>> len(history), history.epochs[0].images
        (2, 128)
    """
    from cifarkit import distributed as dist_mod
    from cifarkit.monitor import RunLogger
    from cifarkit.persist import load_checkpoint, save_checkpoint

    if not isinstance(epochs, int) or epochs < 0:
        msg = f"epochs must be a non-negative int, got {epochs!r}"
        raise InvalidOptionError(msg)
    dev = resolve_device(device)
    if amp and dev.type == "cpu" and not cpu_supports_bf16():
        warnings.warn(
            "amp=True on a CPU without native bf16 (no AVX-512 BF16/AMX): bf16 is emulated and "
            "usually slower than fp32 here",
            stacklevel=2,
        )
    _check_not_empty(data, "training data")
    if retain_memory and dev.type == "cpu":
        retain_cpu_memory()
    ctx = dist_mod.context(distributed, dev)
    dev = ctx.device
    logger = RunLogger(log_dir, enabled=ctx.rank == 0) if log_dir is not None else None  # fails early
    inner = unwrap_model(model)
    fmt = _memory_format(inner, channels_last)
    inner.to(dev).to(memory_format=fmt)
    loss_fn = loss_fn or CrossEntropyLoss()
    if optimizer is None:
        optimizer = torch.optim.SGD([p for p in inner.parameters() if p.requires_grad], lr=lr)
    history = History()
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        resumed = load_checkpoint(checkpoint, model=inner, optimizer=optimizer)
        start, history = resumed.epoch, resumed.history or History()
    train_data = dist_mod.shard_data(_prepare_data(data, dev, fmt), ctx, pad=True)
    net = dist_mod.wrap_model(inner, ctx) if ctx.active else inner
    if compile:
        net = torch.compile(net)  # type: ignore[assignment]
    was_training = inner.training
    params = [p for p in inner.parameters() if p.requires_grad]
    try:
        for epoch in range(start, epochs):
            _set_epoch(train_data, epoch)
            inner.train()
            stats = _run_epoch(
                net, train_data, loss_fn, optimizer, params, dev, fmt, epoch, history,
                amp=amp, max_grad_norm=max_grad_norm, want_grad_norm=logger is not None,
                progress=progress and ctx.rank == 0, ctx=ctx, logger=logger,
            )  # fmt: skip
            if eval_data is not None:
                result = evaluate(inner, eval_data, loss_fn=loss_fn, device=dev, amp=amp,
                                  channels_last=fmt == torch.channels_last, distributed=ctx.active)  # fmt: skip
                stats.eval_loss, stats.eval_accuracy = result.loss, result.accuracy
            history.epochs.append(stats)
            if checkpoint is not None and ctx.rank == 0:
                save_checkpoint(checkpoint, model=inner, optimizer=optimizer, epoch=epoch + 1, history=history)
            if logger is not None:
                logger.log_epoch(stats, history)
            if on_epoch_end is not None and on_epoch_end(epoch, history):
                break
    except Exception as exc:
        translated = dist_mod.translate_error(exc, ctx)
        if translated is exc:
            raise
        raise translated from exc
    finally:
        inner.train(was_training)
        if logger is not None:
            logger.close()
    return history


def _run_epoch(
    net: nn.Module,
    data: Iterable[Batch],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    dev: torch.device,
    fmt: torch.memory_format,
    epoch: int,
    history: History,
    *,
    amp: bool,
    max_grad_norm: float | None,
    want_grad_norm: bool,
    progress: bool,
    ctx: Any,
    logger: Any,
) -> EpochStats:
    from cifarkit import distributed as dist_mod

    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)  # the tutorial's sum_loss
    weighted = torch.zeros((), dtype=torch.float64, device=dev)  # sum of loss * batch size
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    norm_sum = torch.zeros((), dtype=torch.float64, device=dev)
    seen = steps = 0
    bar = _progress_bar(data, epoch, enabled=progress)
    started = time.perf_counter()
    for x, y in bar:
        x, y = _to_device(x, y, dev, fmt)
        if steps == 0 and logger is not None:
            logger.log_first_batch(unwrap_model(net), x)
        step_start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(dev, amp):
            out = net(x)
            loss = loss_fn(out, y)
        if not bool(torch.isfinite(loss)):
            msg = (
                f"loss is {float(loss.detach())} at epoch {epoch + 1}, step {steps + 1}: training diverged. "
                "Lower the learning rate, set max_grad_norm, or check the data for NaN/inf. "
                "The weights were not updated with it."
            )
            raise NonFiniteLossError(msg)
        loss.backward()
        if max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        elif want_grad_norm:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        optimizer.step()
        if history.compile_seconds is None and steps == 0 and hasattr(net, "_orig_mod"):
            history.compile_seconds = time.perf_counter() - step_start
        with torch.no_grad():
            batch = int(y.shape[0])
            detached = loss.detach()
            loss_sum += detached
            weighted += detached.double() * batch
            correct += (out.argmax(1) == y).sum()
            if max_grad_norm is not None or want_grad_norm:
                norm_sum += norm
        seen += batch
        steps += 1
        if progress and steps % 20 == 0:
            bar.set_postfix(loss=f"{float(detached):.4f}", img_s=f"{seen / (time.perf_counter() - started):.0f}")
    seconds = time.perf_counter() - started
    if steps == 0:
        msg = (
            f"training data yielded no batches in epoch {epoch + 1} (a one-shot iterator or "
            "generator is used up after one epoch: pass a list, a DataLoader or a TensorLoader)"
        )
        raise ValueError(msg)
    totals = dist_mod.all_sum(
        ctx, [float(loss_sum), float(weighted), float(correct), float(seen), float(norm_sum), float(steps)]
    )
    seconds = dist_mod.all_max(ctx, seconds)
    images = int(totals[3])
    return EpochStats(
        epoch=epoch + 1,
        # Shards are padded to equal batches, so the mean of the ranks' batch losses is the
        # global batch loss: the loss sum then matches a single process on the same batches.
        loss_sum=totals[0] / ctx.world_size,
        loss_mean=totals[1] / images,
        train_accuracy=totals[2] / images,
        images=images,
        seconds=seconds,
        images_per_second=images / seconds if seconds > 0 else math.inf,
        lr=[float(g["lr"]) for g in optimizer.param_groups],
        grad_norm=totals[4] / totals[5] if (max_grad_norm is not None or want_grad_norm) else None,
    )


def _progress_bar(data: Iterable[Batch], epoch: int, *, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    show = enabled and sys.stderr.isatty()
    return tqdm(data, total=total, desc=f"epoch {epoch + 1}", leave=False, disable=not show)


# --------------------------------------------------------------------------- prediction


def _image_tensor(item: object) -> torch.Tensor:
    """One input as a float (3, H, W) or (N, 3, H, W) tensor in [0, 1]."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        try:
            with Image.open(path) as img:
                item = img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            msg = f"cannot read image {path}: {exc}. Pass a PNG/JPEG/BMP file, a PIL image or a tensor"
            raise ImageReadError(msg) from exc
    if isinstance(item, Image.Image):
        item = pil_to_tensor(item.convert("RGB"))
    if not isinstance(item, torch.Tensor):
        msg = f"predict takes image paths, PIL images or tensors, got {type(item).__name__}"
        raise InvalidOptionError(msg)
    if item.ndim not in (3, 4) or item.shape[-3] != 3:
        msg = f"image tensors must be (3, H, W) or (N, 3, H, W), got {tuple(item.shape)}"
        raise ShapeError(msg)
    return item.float() / 255.0 if not item.is_floating_point() else item.float()


def predict(
    model: nn.Module,
    inputs: object | Sequence[object],
    *,
    classes: Sequence[str] | None = None,
    device: str | torch.device = "auto",
    size: int = 32,
) -> list[Prediction]:
    """Classify your own pictures: file paths, PIL images, or tensors ``(3, H, W)``/``(N, 3, H, W)``.

    uint8 tensors and images are scaled to [0, 1] (as :class:`~cifarkit.data.TensorLoader` does),
    then resized to ``size`` x ``size`` (bilinear, antialiased) when needed.

    Raises:
        ImageReadError: a file is missing or not an image (the message names it).

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn
        >>> preds = predict(build_cnn(), torch.zeros(2, 3, 64, 64), classes=list("abcdefghij"))
        >>> len(preds), preds[0].label in list("abcdefghij")
        (2, True)
    """
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    batch = []
    for item in items:
        t = _image_tensor(item)
        t = t.unsqueeze(0) if t.ndim == 3 else t
        if t.shape[-2:] != (size, size):
            t = torch.nn.functional.interpolate(
                t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        batch.append(t)
    x = torch.cat(batch)
    dev = resolve_device(device)
    inner = unwrap_model(model)
    inner.to(dev)
    was_training = inner.training
    inner.eval()
    try:
        with torch.inference_mode():
            probs = torch.softmax(inner(x.to(dev)).float(), dim=1).cpu()
    finally:
        inner.train(was_training)
    top_p, top_i = probs.max(1)
    names = list(classes) if classes is not None else None
    return [
        Prediction(int(i), names[int(i)] if names and int(i) < len(names) else None, float(p))
        for p, i in zip(top_p, top_i)
    ]
