"""How good is a model: mean loss and accuracy over held-out data.

May import: cifarkit.errors, cifarkit.device, cifarkit.wrappers, cifarkit.losses, cifarkit.loader,
cifarkit.distributed, cifarkit.meters, cifarkit.tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from cifarkit.device import autocast, move_batch, place_model, resolve_device
from cifarkit.distributed import context, shard_data
from cifarkit.errors import EmptyDataError
from cifarkit.loader import Batch, check_not_empty, match_memory_format
from cifarkit.losses import CrossEntropyLoss
from cifarkit.meters import Meter
from cifarkit.tables import format_table, html_table
from cifarkit.wrappers import unwrap_model

__all__ = ["EvalResult", "LossFn", "evaluate"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_HEADERS = ("loss", "accuracy", "images")


@dataclass(frozen=True)
class EvalResult:
    """Mean loss per image, accuracy in [0, 1], and the number of images (unpacks as a tuple).

    Example:
        >>> loss, accuracy, count = EvalResult(0.5, 0.75, 8)
        >>> count
        8
    """

    loss: float
    accuracy: float
    count: int

    def __iter__(self) -> Iterator[float | int]:
        return iter((self.loss, self.accuracy, self.count))

    def _cells(self) -> tuple[str, str, str]:
        return f"{self.loss:.4f}", f"{self.accuracy:.2%}", f"{self.count:,}"

    def __repr__(self) -> str:
        """A one-row table: ``loss``, ``accuracy``, ``images``."""
        return format_table([self._cells()], headers=_HEADERS, right=(0, 1, 2))

    def _repr_html_(self) -> str:
        return html_table([self._cells()], headers=_HEADERS, right=(0, 1, 2))


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
    As in :func:`~cifarkit.train.train_loop`, a model with convolutions is moved to ``device`` and
    switched to the channels-last memory format (same results up to float rounding;
    ``channels_last=False`` keeps its layout). Accepts a :class:`~cifarkit.loader.TensorLoader`
    or any iterable of ``(x, y)`` batches. Under ``torchrun`` each rank evaluates its shard and
    the figures are summed over ranks.

    Raises:
        EmptyDataError: ``data`` yields no batches.

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> data = synthetic_cifar10(64)
        >>> result = evaluate(build_cnn(), data.loader(batch_size=32), device="cpu")
        >>> result.count
        64
    """
    dev = resolve_device(device)
    ctx = context(distributed, dev)
    check_not_empty(data, "evaluate data")
    inner = unwrap_model(model)
    fmt = place_model(inner, dev, channels_last)
    batches = shard_data(match_memory_format(data, dev, fmt), ctx, pad=False)
    loss_fn = loss_fn or CrossEntropyLoss()
    meter = Meter(dev)
    was_training = inner.training
    inner.eval()
    try:
        with torch.inference_mode(), autocast(dev, amp):
            for x, y in batches:
                x, y = move_batch(x, y, dev, fmt)
                out = inner(x)
                meter.add(loss_fn(out, y), out, y)
    finally:
        inner.train(was_training)
    totals = meter.totals(ctx)
    if totals.images == 0:
        msg = "evaluate data yielded no batches (a one-shot iterator that was used up?)"
        raise EmptyDataError(msg)
    return EvalResult(totals.loss_mean, totals.accuracy, totals.images)
