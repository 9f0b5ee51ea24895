"""How good a model is on held-out data: the meters that count a pass over batches on the device
(loss, accuracy, gradient norms; the confusion matrix and top-k hits; calibration bins), read once
at the end, and :func:`evaluate`, which runs the one inference loop
(:func:`~cifarkit.evaluation.inference.model_outputs`) through them into an :class:`EvalResult`.

The training loop counts its epochs with the same :class:`Meter`. Adding a batch launches a few
tiny device ops and never waits for the device: the loss is accumulated *detached* (the
tutorial's ``sum_loss = sum_loss + result_loss`` keeps every step's autograd graph alive) and
nothing is converted to a Python number until ``totals``, which also sums over
``torch.distributed`` ranks.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from cifarkit.data.loader import Batch, check_not_empty
from cifarkit.device import Amp, resolve_device, unwrap_model
from cifarkit.display import format_table, html_table, new_figure, save_or_return
from cifarkit.distributed import DistContext, all_max, all_sum, all_sum_tensor, context
from cifarkit.errors import EmptyDataError, InvalidOptionError
from cifarkit.evaluation.inference import TTA, model_outputs
from cifarkit.losses import LossFn, cross_entropy
from cifarkit.preprocess import Preprocess, preprocessing_of, probabilities
from cifarkit.writing import PathLike

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "BINS",
    "CalibrationBins",
    "ClassCounts",
    "ClassMeter",
    "EvalResult",
    "Meter",
    "Totals",
    "confusion_counts",
    "evaluate",
    "expected_calibration_error",
]

#: Confidence bins of the expected calibration error (the usual 15, of equal width).
BINS = 15
#: Pictures whose outputs :func:`evaluate` gathers before it counts them into the per-class figures.
CHUNK = 16_384


def confusion_counts(targets: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The confusion matrix ``(C, C)`` int64 of class indices ``(N,)``: rows = true class,
    columns = predicted (on the tensors' device; the one place cifarkit counts it). Targets
    outside ``[0, C)`` (``ignore_index``-style labels) are not counted.

    Example:
        >>> confusion_counts(torch.tensor([0, 1, 1, -100]), torch.tensor([0, 0, 1, 1]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    c = num_classes
    valid = (targets >= 0) & (targets < c)
    cells = torch.where(valid, targets * c + predicted, c * c)  # a mask, not a copy: the rest go to an extra bin
    return torch.bincount(cells, minlength=c * c + 1)[:-1].view(c, c)


@dataclass(frozen=True)
class Totals:
    """A pass's figures as Python numbers, summed over ranks (``seconds``: the slowest rank's)."""

    loss_sum: float  # sum of the batch losses, divided by the world size (see Meter.totals)
    weighted_loss: float  # sum of batch loss x batch size
    correct: int
    images: int
    batches: int  # batches counted (optimizer steps are counted by norm_steps)
    grad_norm_sum: float
    norm_steps: int  # optimizer steps whose gradient norm was finite
    seconds: float
    first_step_seconds: float | None

    @property
    def loss_mean(self) -> float:
        """Mean loss per image."""
        return self.weighted_loss / self.images

    @property
    def accuracy(self) -> float:
        """Share of images whose top class was right."""
        return self.correct / self.images

    @property
    def grad_norm(self) -> float | None:
        """Mean gradient norm over the optimizer steps (``None`` when none was counted)."""
        return self.grad_norm_sum / self.norm_steps if self.norm_steps else None


FOLD_EVERY = 256
"""Batches a :class:`Meter` keeps before adding them to its running sums: a few small ops per
256 steps, and the memory of at most 256 batches' predictions."""


def _step_norms(steps: list[torch.Tensor | list[torch.Tensor]]) -> torch.Tensor:
    """Each step's global norm ``(steps,)`` in float64, from its partial norms: one stack of them
    all when every step has as many (the usual case), else one norm per step."""
    listed = [s for s in steps if isinstance(s, list)]
    parts: torch.Tensor
    width = len(steps[0])
    if len(listed) == len(steps) and all(len(s) == width and all(n.ndim == 0 for n in s) for s in listed):
        parts = torch.stack([n for s in listed for n in s]).reshape(len(steps), width)
    else:
        vectors = [torch.cat([n.reshape(-1) for n in s]) if isinstance(s, list) else s for s in steps]
        if len({len(v) for v in vectors}) > 1:
            return torch.stack([torch.linalg.vector_norm(v.double()) for v in vectors])
        parts = torch.stack(vectors)
    totals: torch.Tensor = torch.linalg.vector_norm(parts.double(), dim=1)
    return totals


class Meter:
    """Loss, accuracy and gradient norms of the batches of one pass.

    Adding a batch launches at most one device op (the ``argmax`` of its logits) and never waits
    for the device: losses, predictions and gradient norms are kept as they come (detached: no
    graph is kept alive), folded into running sums on the device every :data:`FOLD_EVERY`
    batches (so memory stays flat however long the pass), and read by :meth:`totals` with one
    read of the device. A loss given as a Python float (the training step reads it anyway, to
    refuse a NaN before ``backward()``) costs no device op at all.

    Example:
        >>> meter = Meter(torch.device("cpu"))
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> meter.add(torch.tensor(0.5), logits, torch.tensor([0, 0]))
        >>> t = meter.totals(DistContext.single(torch.device("cpu")))
        >>> t.loss_sum, t.loss_mean, t.accuracy, t.images
        (0.5, 0.5, 0.5, 2)
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._losses: list[torch.Tensor] = []  # 0-d, detached, on the device
        self._loss_sizes: list[int] = []
        self._float_sum = 0.0  # losses that came as Python floats
        self._float_weighted = 0.0
        self._predicted: list[torch.Tensor] = []  # (B,) argmax of each batch
        self._targets: list[torch.Tensor] = []
        self._norms: list[torch.Tensor | list[torch.Tensor]] = []  # per optimizer step: partial norms, or the total
        self._folded: list[torch.Tensor] | None = None  # the sums of the batches already folded
        self.images = 0
        self.batches = 0
        self.started = time.perf_counter()
        self.first_step_seconds: float | None = None

    def add(self, loss: torch.Tensor | float, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one batch: its mean ``loss``, ``(B, C)`` ``logits``, ``(B,)`` class ``targets`` (or
        ``(B, C)`` class probabilities, as MixUp and CutMix make: counted against the dominant
        class)."""
        self._predicted.append(logits.argmax(1))  # an index tensor: no graph, nothing to detach
        self._targets.append(targets.argmax(1) if targets.ndim == 2 else targets)  # mixed: the dominant label
        self.add_loss(loss, int(targets.shape[0]))

    def add_loss(self, loss: torch.Tensor | float, images: int) -> None:
        """Count one batch of ``images`` by its mean ``loss`` alone: for a caller that counts the
        right answers itself (:func:`evaluate` reads them off its confusion matrix), so
        :attr:`Totals.correct` counts only the batches given to :meth:`add`."""
        if isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())
            self._loss_sizes.append(images)
        else:
            self._float_sum += loss
            self._float_weighted += loss * images
        if self.batches == 0:
            self.first_step_seconds = time.perf_counter() - self.started
        self.images += images
        self.batches += 1
        if max(len(self._loss_sizes), len(self._predicted)) >= FOLD_EVERY:
            self._fold()

    def add_grad_norm(self, norms: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Count one optimizer step's gradient norm: the total (0-d), or partial norms whose vector
        norm is the total: a vector ``(P,)``, or a list of ``P`` 0-d tensors (one per gradient,
        as ``torch._foreach_norm`` gives them). A step a gradient scaler skipped (an inf or nan
        norm) is left out when the pass is read."""
        # Partial norms carry no graph: kept as they are, the usual case costs no op (a list is
        # stacked with the other steps' when folded: one op per fold, not one per step).
        if isinstance(norms, torch.Tensor):
            norms = norms if norms.ndim == 1 and not norms.requires_grad else norms.detach().reshape(-1)
        elif not isinstance(norms, list) or any(n.requires_grad for n in norms):
            norms = [n.detach() for n in norms]
        self._norms.append(norms)
        if len(self._norms) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> list[torch.Tensor]:
        """Add the kept batches to the running sums, let them go, and return the sums. No read
        of the device."""
        sums = self._pending_sums()
        self._folded = sums if self._folded is None else [a + b for a, b in zip(self._folded, sums, strict=True)]
        self._losses, self._loss_sizes, self._predicted, self._targets, self._norms = [], [], [], [], []
        return self._folded

    def _device_sums(self) -> list[torch.Tensor]:
        """Every sum as a float64 tensor on the device: losses, weighted losses, correct, grad
        norms and steps with a finite one. No read of the device."""
        return self._fold()

    def _pending_sums(self) -> list[torch.Tensor]:
        """The sums of the batches kept since the last fold, as :meth:`_device_sums` lists them."""
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        if self._losses:
            losses = torch.stack(self._losses).double()
            sizes = torch.tensor(self._loss_sizes, dtype=torch.float64, device=losses.device)
            loss_sum, weighted = losses.sum(), (losses * sizes).sum()
        else:
            loss_sum, weighted = zero, zero
        correct = (torch.cat(self._predicted) == torch.cat(self._targets)).sum().double() if self._predicted else zero
        norm_sum, norm_steps = zero, zero
        if self._norms:
            totals = _step_norms(self._norms)
            finite = torch.isfinite(totals)
            norm_sum, norm_steps = torch.where(finite, totals, 0.0).sum(), finite.sum().double()
        return [t.to(self.device) for t in (loss_sum, weighted, correct, norm_sum, norm_steps)]

    def totals(self, ctx: DistContext) -> Totals:
        """Read the sums (one host read) and add them up over ranks.

        Under DDP every rank's shard is padded to equal batches, so the mean of the ranks' batch
        losses is the global batch loss: ``loss_sum`` is divided by the world size and then equals
        the single-process figure over the same global batches.
        """
        loss_sum, weighted, correct, norm_sum, norm_steps = torch.stack(self._device_sums()).tolist()
        sums = all_sum(
            ctx,
            [loss_sum + self._float_sum, weighted + self._float_weighted, correct, float(self.images),
             float(self.batches), norm_sum, norm_steps],
        )  # fmt: skip
        seconds = all_max(ctx, time.perf_counter() - self.started)
        first_step = None if self.first_step_seconds is None else all_max(ctx, self.first_step_seconds)
        return Totals(
            loss_sum=sums[0] / ctx.world_size,
            weighted_loss=sums[1],
            correct=int(sums[2]),
            images=int(sums[3]),
            batches=int(sums[4]),
            grad_norm_sum=sums[5],
            norm_steps=int(sums[6]),
            seconds=seconds,
            first_step_seconds=first_step,
        )


@dataclass(frozen=True)
class ClassCounts:
    """Per-class figures of a pass, summed over ranks: the confusion matrix and top-k hits."""

    confusion: torch.Tensor  # (C, C) int64 on the CPU: rows = true class, columns = predicted
    topk_hits: dict[int, int]

    @property
    def per_class_accuracy(self) -> list[float]:
        """Share of each class's images predicted as that class (``nan`` for a class never seen)."""
        totals = self.confusion.sum(1).double()
        return (self.confusion.diagonal().double() / totals).tolist()  # 0 / 0 is nan: never seen


class ClassMeter:
    """Accumulate a confusion matrix and top-k hits on the device (no host sync per batch).

    Example:
        >>> meter = ClassMeter(3, topk=(1, 2), device=torch.device("cpu"))
        >>> meter.add(torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]), torch.tensor([0, 1]))
        >>> counts = meter.totals(DistContext.single(torch.device("cpu")))
        >>> counts.confusion.tolist(), counts.topk_hits, counts.per_class_accuracy[:2]
        ([[1, 0, 0], [1, 0, 0], [0, 0, 0]], {1: 1, 2: 2}, [1.0, 0.0])
    """

    def __init__(self, num_classes: int, *, topk: tuple[int, ...], device: torch.device) -> None:
        bad = [k for k in topk if not isinstance(k, int) or not 1 <= k <= num_classes]
        if bad:
            msg = (
                f"topk={topk!r} asks for top-{bad[0]} accuracy, but the model has {num_classes} classes: "
                f"use values from 1 to {num_classes}"
            )
            raise InvalidOptionError(msg)
        self.num_classes = num_classes
        self.topk = tuple(sorted(set(topk)))
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        self.hits = torch.zeros(len(self.topk), dtype=torch.int64, device=device)
        self._ks = torch.tensor(self.topk, device=device)

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one batch of ``(B, C)`` logits against ``(B,)`` class indices; labels outside
        ``[0, C)`` (``ignore_index``-style) are not counted."""
        c = self.num_classes
        with torch.no_grad():
            self.confusion += confusion_counts(targets, logits.argmax(1), c).view(-1)
            valid = (targets >= 0) & (targets < c)
            # The true class's rank (how many classes come before it) answers every k at once
            # and costs a comparison, not a sort; a tie goes to the lower index, as argmax does.
            true = targets.clamp(0, c - 1)[:, None]
            score = logits.gather(1, true)
            columns = torch.arange(c, device=logits.device)
            rank = ((logits > score) | ((logits == score) & (columns < true))).sum(1)
            self.hits += ((rank[:, None] < self._ks) & valid[:, None]).sum(0)

    def totals(self, ctx: DistContext) -> ClassCounts:
        """Read the counts once (summed over ranks under DDP)."""
        confusion = all_sum_tensor(ctx, self.confusion).view(self.num_classes, self.num_classes)
        hits = all_sum_tensor(ctx, self.hits).tolist()
        return ClassCounts(confusion, {k: int(h) for k, h in zip(self.topk, hits)})


class CalibrationBins:
    """Per-bin sums over batches, on the device: images, confidence, correct answers, and the
    summed negative log-likelihood. ``add`` never reads the device; :meth:`ece` and :meth:`nll`
    read once."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, BINS, dtype=torch.float64, device=device)
        self.nll_sum = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Count a batch of probabilities ``(N, C)`` with their true classes ``(N,)``."""
        confidence, predicted = probs.max(dim=1)
        which = (confidence * BINS).long().clamp_(max=BINS - 1)
        for row, values in enumerate((torch.ones_like(confidence), confidence, (predicted == labels).float())):
            self.sums[row].index_add_(0, which, values.double())
        picked = probs.gather(1, labels.reshape(-1, 1)).clamp_min(torch.finfo(probs.dtype).tiny)
        self.nll_sum -= picked.double().log().sum()

    def reduce(self, ctx: DistContext) -> None:
        """Sum the bins over ``torch.distributed`` ranks (nothing in a single process)."""
        if ctx.active:
            self.sums = all_sum_tensor(ctx, self.sums)
            self.nll_sum = all_sum_tensor(ctx, self.nll_sum)

    def _read(self) -> tuple[float, float, float]:
        """Images, the summed |confidence - correct| over bins, and the summed NLL: one read."""
        count, confidence, correct = self.sums.unbind(0)
        total, gap, nll = torch.stack([count.sum(), (confidence - correct).abs().sum(), self.nll_sum]).tolist()
        return total, gap, nll

    def ece(self) -> float:
        """Sum over bins of (share of images) x ``|accuracy - mean confidence|``; nan without images."""
        total, gap, _ = self._read()
        return gap / total if total else math.nan

    def nll(self) -> float:
        """Mean negative log-likelihood of the true class; nan without images."""
        total, _, nll = self._read()
        return nll / total if total else math.nan


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The expected calibration error of probabilities ``(N, C)`` over 15 equal-width bins.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
        >>> round(expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])), 4)
        0.1
    """
    bins = CalibrationBins(probs.device)
    bins.add(probs, labels)
    return bins.ece()


_HEADERS = ("loss", "accuracy", "images")


@dataclass(frozen=True)
class EvalResult:
    """Mean loss per image, accuracy in [0, 1], and the number of images (unpacks as that tuple),
    plus top-k accuracies, per-class accuracies and the confusion matrix.

    Example:
        >>> loss, accuracy, count = EvalResult(0.5, 0.75, 8)
        >>> count
        8
    """

    loss: float
    accuracy: float
    count: int
    #: k -> share of images whose true class is among the k highest logits.
    topk: dict[int, float] = field(default_factory=dict)
    #: One figure per class: the share of that class's images predicted right (nan if absent).
    per_class_accuracy: list[float] = field(default_factory=list)
    #: ``(C, C)`` int64 counts, rows = true class, columns = predicted class.
    confusion: torch.Tensor | None = field(default=None, compare=False, repr=False)
    #: Expected calibration error (15 bins) of the probabilities (the record's temperature applied).
    ece: float = math.nan
    #: Mean negative log-likelihood of the true class under those probabilities.
    nll: float = math.nan

    def __iter__(self) -> Iterator[float | int]:
        return iter((self.loss, self.accuracy, self.count))

    def _header_and_cells(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        extra = sorted(k for k in self.topk if k != 1)
        headers = ("loss", "accuracy", *(f"top-{k}" for k in extra), "images")
        cells = (f"{self.loss:.4f}", f"{self.accuracy:.2%}", *(f"{self.topk[k]:.2%}" for k in extra), f"{self.count:,}")
        return headers, cells

    def __repr__(self) -> str:
        """A one-row table: ``loss``, ``accuracy``, top-k accuracies, ``images``."""
        headers, cells = self._header_and_cells()
        return format_table([cells], headers=headers, right=range(len(headers)))

    def _repr_html_(self) -> str:
        headers, cells = self._header_and_cells()
        return html_table([cells], headers=headers, right=range(len(headers)))

    def per_class_table(self, classes: Sequence[str] | None = None) -> str:
        """Each class's accuracy and image count, worst first: where the model fails.

        Example:
            >>> confusion = torch.tensor([[3, 1], [0, 4]])
            >>> print(EvalResult(0.1, 0.875, 8, {}, [0.75, 1.0], confusion).per_class_table(["cat", "dog"]))
            class  accuracy  images
            -----  --------  ------
            cat      75.00%       4
            dog     100.00%       4
        """
        counts = self.confusion.sum(1).tolist() if self.confusion is not None else [0] * len(self.per_class_accuracy)
        names = list(classes) if classes is not None else [str(i) for i in range(len(self.per_class_accuracy))]
        order = sorted(range(len(self.per_class_accuracy)), key=lambda c: _worst_first(self.per_class_accuracy[c]))
        rows = [
            (names[c] if c < len(names) else str(c), _percent(self.per_class_accuracy[c]), f"{counts[c]:,}")
            for c in order
        ]
        return format_table(rows, headers=("class", "accuracy", "images"), right=(1, 2))

    def plot_confusion(self, path: PathLike | None = None, *, classes: Sequence[str] | None = None) -> Path | Figure:
        """Draw the confusion matrix (rows: true class, columns: predicted; counts in the cells).

        With ``path``: writes a PNG and returns the path; without: returns the figure. Needs
        matplotlib (``pip install 'cifarkit[plot]'``); pyplot is not used.
        """
        if self.confusion is None:
            msg = "this EvalResult has no confusion matrix (it was not made by cifarkit.evaluate)"
            raise InvalidOptionError(msg)
        counts = self.confusion.numpy()
        n = counts.shape[0]
        names = list(classes) if classes is not None else [str(i) for i in range(n)]
        fig = new_figure("plot_confusion", figsize=(1.5 + 0.55 * n, 1.2 + 0.5 * n), dpi=100, layout="constrained")
        ax = fig.subplots()
        ax.imshow(counts, cmap="Blues")
        ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true class")
        ax.set_xticklabels(names[:n], rotation=45, ha="right")
        ax.set_yticklabels(names[:n])
        top = counts.max() if counts.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                        color="white" if counts[i, j] > top / 2 else "black", fontsize=8)  # fmt: skip
        return save_or_return(fig, path)


def _worst_first(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _percent(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2%}"


def evaluate(
    model: nn.Module,
    data: Iterable[Batch],
    *,
    loss_fn: LossFn | None = None,
    device: str | torch.device = "auto",
    amp: Amp = False,
    channels_last: bool | None = None,
    distributed: bool | None = None,
    topk: Sequence[int] | None = None,
    tta: TTA = None,
) -> EvalResult:
    """Mean loss and accuracy of ``model`` over ``data``, in ``torch.inference_mode()``.

    The one inference loop (:func:`~cifarkit.evaluation.inference.model_outputs`): the model runs
    in eval mode and every module gets its own mode back afterwards; a model with convolutions is
    moved to ``device`` and switched to the channels-last memory format, as in
    :func:`~cifarkit.training.loop.train_loop` (same results up to float rounding;
    ``channels_last=False`` keeps its layout). Accepts a :class:`~cifarkit.data.loader.TensorLoader`
    or any iterable of ``(x, y)`` batches (uint8 pixels are scaled and normalized as the model's
    record says). Under ``torchrun`` each rank evaluates its shard and every figure (the confusion
    matrix included) is summed over ranks. The figures are counted on the device and read once,
    at the end.

    ``EvalResult.ece`` and ``nll`` measure the probabilities, with the temperature of
    :func:`~cifarkit.evaluation.calibration.calibrate` when the model's record has one.

    Args:
        loss_fn: A loss of your own, ``loss_fn(logits, targets)`` giving a batch's mean, taken per
            batch; by default the guarded :func:`~cifarkit.losses.cross_entropy`, taken over
            every :data:`CHUNK` pictures at once (the same mean, in fewer ops).
        topk: The k of the top-k accuracies in ``EvalResult.topk``; default ``(1, 5)``, or ``(1,)``
            for models with fewer than 5 classes.
        tta: ``"flip"``: every figure is that of the mean probabilities of each picture and its
            mirror image (:func:`~cifarkit.evaluation.inference.flip_mean`; the loss is their
            negative log-likelihood). Refused for a model trained with ``mirror=False``.

    Raises:
        EmptyDataError: ``data`` yields no batches.
        InvalidOptionError: a ``topk`` value above the number of classes (found at the first batch).
        ShapeError: a batch that is not an ``(x, y)`` pair.

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
    record = preprocessing_of(unwrap_model(model))
    _warn_if_normalization_differs(data, record)
    meter = Meter(ctx.device)
    calibration = CalibrationBins(ctx.device)
    classes: ClassMeter | None = None  # sized at the first batch, from the logits
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # outputs not yet counted by the class meters

    def count_pending() -> None:  # per chunk, not per batch: the loss and per-class figures in a few ops
        if pending and classes is not None:
            out, y = torch.cat([o for o, _ in pending]).float(), torch.cat([t for _, t in pending])
            if loss_fn is None:  # the default loss, a mean: the same figure per chunk, 2 ops less a batch
                meter.add_loss(cross_entropy(out, y), len(y))  # the guarded loss: a bad target's error
            calibration.add(probabilities(out, record), y)
            classes.add(out, y)
            pending.clear()

    outputs = model_outputs(model, data, device=ctx.device, amp=amp, channels_last=channels_last, dist=ctx, tta=tta)
    with torch.inference_mode(), closing(outputs):  # closed first: the generator restores its modes, then this
        for _, y, out in outputs:
            if loss_fn is not None:
                meter.add_loss(loss_fn(out, y), len(y))  # the loss per batch, as loss_fn defines it
            if classes is None:
                c = int(out.shape[1])
                classes = ClassMeter(c, topk=tuple(topk) if topk is not None else _default_topk(c), device=ctx.device)
            pending.append((out, y))
            if len(pending) * len(y) >= CHUNK:
                count_pending()
        count_pending()
    totals = meter.totals(ctx)
    if totals.images == 0 or classes is None:
        msg = "evaluate data yielded no batches (a one-shot iterator that was used up?)"
        raise EmptyDataError(msg)
    counts = classes.totals(ctx)
    calibration.reduce(ctx)
    return EvalResult(
        totals.loss_mean,
        int(counts.confusion.trace()) / totals.images,  # the right answers: the confusion's diagonal
        totals.images,
        topk={k: hits / totals.images for k, hits in counts.topk_hits.items()},
        per_class_accuracy=counts.per_class_accuracy,
        confusion=counts.confusion,
        ece=calibration.ece(),
        nll=calibration.nll(),
    )


def _warn_if_normalization_differs(data: Iterable[Batch], record: Preprocess | None) -> None:
    if record is None or not hasattr(data, "normalize_values"):  # no record, or a loader that does not say
        return
    given = data.normalize_values
    recorded = (record.get("mean"), record.get("std")) if record.get("mean") is not None else None
    if (tuple(given) if given is not None else None) != recorded:
        warnings.warn(
            f"the evaluation loader normalizes with {given} (mean, std) but the model was trained with "
            f"{recorded}: build the loader with normalize={recorded}",
            stacklevel=3,
        )


def _default_topk(num_classes: int) -> tuple[int, ...]:
    return (1, 5) if num_classes >= 5 else (1,)
