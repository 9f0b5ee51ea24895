"""How good is a model, and what it says of one's own pictures: mean loss, accuracy, per-class
figures, calibration and the confusion matrix over held-out data (:func:`evaluate`), and the top
classes of pictures with their names and probabilities (:func:`predict`,
:func:`class_probabilities`). Calibrating the probabilities: :mod:`cifarkit.evaluation.calibration`.

May import: cifarkit.device, cifarkit.display, cifarkit.distributed, cifarkit.errors,
cifarkit.evaluation.calibration, cifarkit.files, cifarkit.images, cifarkit.loader, cifarkit.losses,
cifarkit.preprocess, cifarkit.steps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from cifarkit.device import Amp, amp_dtype, autocast, move_batch, place_model, resolve_device, unwrap_model
from cifarkit.display import format_table, html_table, new_figure, save_or_return
from cifarkit.distributed import all_sum_tensor, context, shard_data
from cifarkit.errors import EmptyDataError, InvalidOptionError
from cifarkit.evaluation.calibration import CalibrationBins, CalibrationReport, calibrate
from cifarkit.files import PathLike
from cifarkit.images import image_batch
from cifarkit.loader import Batch, check_not_empty, match_memory_format
from cifarkit.losses import CrossEntropyLoss, LossFn
from cifarkit.preprocess import Preprocess, normalize, preprocessing_of, probabilities, to_model_input
from cifarkit.steps import ClassMeter, Meter

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CalibrationReport", "EvalResult", "Prediction", "calibrate", "class_probabilities", "evaluate", "predict"]


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
) -> EvalResult:
    """Mean loss and accuracy of ``model`` over ``data``, in ``torch.inference_mode()``.

    The model is put in eval mode and the caller's train/eval mode is restored afterwards.
    As in :func:`~cifarkit.train.train_loop`, a model with convolutions is moved to ``device`` and
    switched to the channels-last memory format (same results up to float rounding;
    ``channels_last=False`` keeps its layout). Accepts a :class:`~cifarkit.loader.TensorLoader`
    or any iterable of ``(x, y)`` batches. Under ``torchrun`` each rank evaluates its shard and
    every figure (the confusion matrix included) is summed over ranks. The per-class figures are
    counted on the device and read once, at the end.

    ``EvalResult.ece`` and ``nll`` measure the probabilities, with the temperature of
    :func:`~cifarkit.evaluation.calibration.calibrate` when the model's record has one.

    Args:
        topk: The k of the top-k accuracies in ``EvalResult.topk``; default ``(1, 5)``, or ``(1,)``
            for models with fewer than 5 classes.

    Raises:
        EmptyDataError: ``data`` yields no batches.
        InvalidOptionError: a ``topk`` value above the number of classes (found at the first batch).

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
    record = preprocessing_of(inner)
    _warn_if_normalization_differs(data, record)
    meter = Meter(dev)
    calibration = CalibrationBins(dev)
    classes: ClassMeter | None = None  # sized at the first batch, from the logits
    dtype = amp_dtype(amp, dev)
    was_training = inner.training
    inner.eval()
    try:
        with torch.inference_mode(), autocast(dev, dtype):
            for x, y in batches:
                x, y = move_batch(x, y, dev, fmt)
                if not x.is_floating_point():  # raw uint8 pixels: scale and normalize as recorded
                    x = to_model_input(x, record)
                out = inner(x)
                meter.add(loss_fn(out, y), out, y)
                calibration.add(probabilities(out, record), y)
                if classes is None:
                    c = int(out.shape[1])
                    classes = ClassMeter(c, topk=tuple(topk) if topk is not None else _default_topk(c), device=dev)
                classes.add(out, y)
    finally:
        inner.train(was_training)
    totals = meter.totals(ctx)
    if totals.images == 0 or classes is None:
        msg = "evaluate data yielded no batches (a one-shot iterator that was used up?)"
        raise EmptyDataError(msg)
    counts = classes.totals(ctx)
    if ctx.active:
        calibration.sums = all_sum_tensor(ctx, calibration.sums)
        calibration.nll_sum = all_sum_tensor(ctx, calibration.nll_sum)
    return EvalResult(
        totals.loss_mean,
        totals.accuracy,
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


@dataclass(frozen=True)
class Prediction:
    """The top class of one input: index, name (when known) and softmax probability; ``top`` holds
    the ``top`` best ``(index, name, probability)``, best first. ``unknown`` is true when
    ``predict(..., reject_below=p)`` refused to name a class (the top probability was below
    ``p``): ``label`` is then ``None``."""

    index: int
    label: str | None
    probability: float
    top: tuple[tuple[int, str | None, float], ...] = ()
    unknown: bool = False


def class_probabilities(
    model: nn.Module,
    inputs: object | Sequence[object],
    *,
    device: str | torch.device = "auto",
    size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """The softmax probabilities ``(N, C)`` (float32, on the CPU) that :func:`predict` ranks.

    The eager pipeline every exported program is checked against: pictures through the one
    picture path (:func:`~cifarkit.images.image_batch`) at ``size`` (default: the record's
    ``input_size``, else 32), scaled, normalized as recorded, the model in eval mode under
    ``torch.inference_mode()`` (its mode is restored afterwards), softmax of the logits divided
    by the record's calibration temperature (1 without one).

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn
        >>> [round(p, 4) for p in class_probabilities(build_cnn(), torch.zeros(2, 3, 32, 32)).sum(1).tolist()]
        [1.0, 1.0]
    """
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    inner = unwrap_model(model)
    record = preprocessing_of(inner) or {}
    recorded_size = record.get("input_size")
    side = size if size is not None else tuple(recorded_size) if recorded_size else 32
    x = normalize(image_batch(items, size=side), record)  # (N, 3, H, W), as the model was trained
    dev = resolve_device(device)
    inner.to(dev)
    was_training = inner.training
    inner.eval()
    try:
        with torch.inference_mode():
            return probabilities(inner(x.to(dev)), record).cpu()  # calibrated when the record says so
    finally:
        inner.train(was_training)


def predict(
    model: nn.Module,
    inputs: object | Sequence[object],
    *,
    classes: Sequence[str] | None = None,
    device: str | torch.device = "auto",
    size: int | Sequence[int] | None = None,
    top: int = 1,
    reject_below: float | None = None,
) -> list[Prediction]:
    """Classify your own pictures: file paths, PIL images, or tensors ``(3, H, W)``/``(N, 3, H, W)``.

    uint8 tensors and images are scaled to [0, 1] (as :class:`~cifarkit.loader.TensorLoader` does),
    resized to ``size`` (a side, or ``(height, width)``) by the one picture path of
    :mod:`cifarkit.images` when needed, and normalized as the
    model's preprocessing record says (see :mod:`cifarkit.preprocess`); ``size`` and ``classes``
    default to the record's (else 32 and no names), so a model loaded from its file answers as
    it did in training. The model runs in
    eval mode under ``torch.inference_mode()``; its train/eval mode is restored afterwards.

    Args:
        top: How many classes each :class:`Prediction` lists in ``top``, best first.
        reject_below: Answer ``label=None`` (``unknown=True``) for a picture whose top
            probability is below this: "none of these". Calibrate first
            (:func:`~cifarkit.evaluation.calibration.calibrate`), so the probabilities mean what
            they say; its report shows the share kept at a few thresholds.

    Raises:
        ImageReadError: a file is missing or not an image (the message names it).
        InvalidOptionError: ``top`` outside 1 to the number of classes; ``reject_below`` outside
            [0, 1].

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn
        >>> preds = predict(build_cnn(), torch.zeros(2, 3, 64, 64), classes=list("abcdefghij"))
        >>> len(preds), preds[0].label in list("abcdefghij")
        (2, True)
    """
    record = preprocessing_of(unwrap_model(model)) or {}
    probs = class_probabilities(model, inputs, device=device, size=size)
    classes = classes if classes is not None else record.get("classes")
    if not isinstance(top, int) or not 1 <= top <= probs.shape[1]:
        msg = f"top={top!r} is not valid: the model has {probs.shape[1]} classes; use 1 to {probs.shape[1]}"
        raise InvalidOptionError(msg)
    if reject_below is not None and not (isinstance(reject_below, (int, float)) and 0 <= reject_below <= 1):
        msg = f"reject_below={reject_below!r} is not a probability: use a number from 0 to 1 (e.g. 0.7)"
        raise InvalidOptionError(msg)
    names = list(classes) if classes is not None else []
    top_p, top_i = probs.topk(top, dim=1)
    preds = []
    for ps, idx in zip(top_p.tolist(), top_i.tolist()):
        ranked = tuple((i, names[i] if i < len(names) else None, p) for i, p in zip(idx, ps))
        unknown = reject_below is not None and ps[0] < reject_below
        index, label, probability = ranked[0]
        preds.append(Prediction(index, None if unknown else label, probability, top=ranked, unknown=unknown))
    return preds
