"""Calibrated probabilities: how far a model's confidence is from its accuracy (the expected
calibration error), and one temperature, fitted on held-out data, that brings them together
(:func:`calibrate`, temperature scaling as in Guo et al., 2017).

The temperature goes into the model's preprocessing record (``"temperature"``), so it travels in
every saved file and exported program, and :func:`~cifarkit.evaluation.predict`, ``evaluate``
and the programs divide the logits by it before the softmax. It changes no prediction's class:
only how sure the model says it is.

May import: cifarkit.device, cifarkit.display, cifarkit.errors, cifarkit.loader, cifarkit.preprocess.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.device import move_batch, place_model, resolve_device, unwrap_model
from cifarkit.display import format_table, html_table
from cifarkit.errors import CalibrationError, EmptyDataError, ShapeError
from cifarkit.loader import Batch, check_not_empty
from cifarkit.preprocess import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    make_record,
    preprocessing_of,
    probabilities,
    set_preprocessing,
    to_model_input,
)

__all__ = ["BINS", "CalibrationBins", "CalibrationReport", "calibrate", "expected_calibration_error"]

#: Confidence bins of the expected calibration error (the usual 15, of equal width).
BINS = 15
#: The thresholds :class:`CalibrationReport` reports the kept share and accuracy for.
THRESHOLDS = (0.5, 0.7, 0.9, 0.95)


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

    def ece(self) -> float:
        """Sum over bins of (share of images) x ``|accuracy - mean confidence|``; nan without images."""
        count, confidence, correct = self.sums.cpu().unbind(0)
        total = float(count.sum())
        return float((confidence - correct).abs().sum()) / total if total else math.nan

    def nll(self) -> float:
        """Mean negative log-likelihood of the true class; nan without images."""
        total = float(self.sums[0].sum())
        return float(self.nll_sum) / total if total else math.nan


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


@dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate` fitted and measured on the held-out data.

    Attributes:
        temperature: The fitted temperature (above 1: the model was over-confident).
        ece_before: Expected calibration error (15 bins) of the plain softmax.
        ece_after: The same after dividing the logits by ``temperature``.
        nll_before: Mean negative log-likelihood of the true class, plain softmax.
        nll_after: The same, calibrated.
        accuracy: Top-1 accuracy on the held-out data (the temperature does not change it).
        count: Held-out images.
        kept: ``threshold -> (share of images whose calibrated top probability reaches it,
            accuracy on those)``: what ``predict(..., reject_below=threshold)`` would keep.
    """

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    accuracy: float
    count: int
    kept: dict[float, tuple[float, float]] = field(default_factory=dict)

    def _rows(self) -> list[tuple[str, ...]]:
        return [
            ("expected calibration error", f"{self.ece_before:.4f}", f"{self.ece_after:.4f}"),
            ("negative log-likelihood", f"{self.nll_before:.4f}", f"{self.nll_after:.4f}"),
        ]

    def _kept_rows(self) -> list[tuple[str, ...]]:
        return [
            (f"{t:.2f}", f"{share:.1%}", "—" if math.isnan(acc) else f"{acc:.1%}")
            for t, (share, acc) in self.kept.items()
        ]

    def _title(self) -> str:
        return f"temperature {self.temperature:.3f} on {self.count:,} held-out images (accuracy {self.accuracy:.1%})"

    def __str__(self) -> str:
        return "\n".join([
            self._title(),
            format_table(self._rows(), headers=("", "before", "after"), right=(1, 2)),
            "",
            format_table(self._kept_rows(), headers=("reject below", "kept", "accuracy kept"), right=(1, 2)),
        ])  # fmt: skip

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return html_table(self._rows(), headers=("", "before", "after"), right=(1, 2), caption=self._title()) + (
            html_table(self._kept_rows(), headers=("reject below", "kept", "accuracy kept"), right=(1, 2))
        )


def model_outputs(
    model: nn.Module, data: Iterable[Any], device: torch.device
) -> Generator[tuple[torch.Tensor, torch.Tensor, torch.Tensor], None, None]:
    """``(x, y, logits)`` of every batch of ``data``, on ``device`` (``x`` as it came, moved).

    The model runs in eval mode under ``torch.inference_mode()``; uint8 pixels are scaled and
    normalized as its record says (float batches are taken as the loader normalized them). Its
    train/eval mode is restored when the generator ends or is closed: iterate it inside
    ``contextlib.closing`` so that an exception in the loop restores it at once.
    Shared by :func:`calibrate` and :func:`~cifarkit.evaluation.interpretation.interpret`.

    Raises:
        ShapeError: a batch that is not an ``(x, y)`` pair: pictures without labels.
    """
    inner = unwrap_model(model)
    fmt = place_model(inner, device, None)
    record = preprocessing_of(inner)
    was_training = inner.training
    inner.eval()
    try:
        with torch.inference_mode():
            for batch in data:
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    msg = "labelled pictures are needed: (x, y) batches, or an ImageTensors with labels"
                    raise ShapeError(msg)
                x, y = move_batch(batch[0], batch[1], device, fmt)
                yield x, y, inner(x if x.is_floating_point() else to_model_input(x, record)).float()
    finally:
        inner.train(was_training)


def _logits_and_labels(
    model: nn.Module, data: Iterable[Batch], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Every logit and label of ``data``, and the pictures' size."""
    outputs, labels, size = [], [], []
    with closing(model_outputs(model, data, device)) as batches:
        for x, y, out in batches:
            outputs.append(out)
            labels.append(y)
            size = [int(v) for v in x.shape[-2:]]
    if not outputs:
        msg = "calibrate got held-out data that yields no batches: pass a loader over labelled pictures"
        raise EmptyDataError(msg)
    return torch.cat(outputs), torch.cat(labels), size


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)``: a 1-D problem in
    ``log T``, solved by L-BFGS in float64 (the model is not involved)."""
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    logits64 = logits.double()
    solver = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        solver.zero_grad()
        loss = F.cross_entropy(logits64 / log_t.exp(), labels)
        loss.backward()
        return loss

    solver.step(closure)
    return float(log_t.detach().exp())


def calibrate(model: nn.Module, val_data: Iterable[Batch], *, device: str | torch.device = "auto") -> CalibrationReport:
    """Fit one temperature on held-out data and store it in the model's preprocessing record.

    The logits of every held-out picture are computed once (eval mode, ``inference_mode``); the
    temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)`` is found
    by L-BFGS on them. Use data the model was not trained on (the validation split), not the
    test set you report. The model's class predictions do not change; its probabilities do, in
    :func:`~cifarkit.evaluation.predict`, ``evaluate`` and every file and program it is saved or
    exported to.

    Raises:
        EmptyDataError: the data yields no batches.
        ShapeError: labels outside the model's classes.
        CalibrationError: the fitted temperature is not finite or outside [0.001, 1000] (for
            example, a model right on every held-out picture); the model is left unchanged.

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10, train_loop
        >>> model = build_cnn(activation="relu")
        >>> report = calibrate(model, synthetic_cifar10(200, seed=1).loader(batch_size=100), device="cpu")
        >>> report.count, report.temperature > 0
        (200, True)
    """
    check_not_empty(val_data, "held-out data")
    dev = resolve_device(device)
    logits, labels, size = _logits_and_labels(model, val_data, dev)
    classes = int(logits.shape[1])
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        msg = (
            f"the held-out labels run from {int(labels.min())} to {int(labels.max())} but the model has "
            f"{classes} classes: calibrate on data labelled with the model's own classes"
        )
        raise ShapeError(msg)
    all_right = bool((logits.argmax(1) == labels).all())  # then the NLL only falls as T -> 0
    temperature = math.nan if all_right else fit_temperature(logits, labels)
    if not (math.isfinite(temperature) and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        msg = (
            f"no usable temperature (fitted: {temperature!r}; allowed: {MIN_TEMPERATURE} to {MAX_TEMPERATURE:g}): "
            "the model answers every held-out picture right with ever more confidence as T falls (or "
            "its logits carry no information), so no finite temperature is best. Calibrate on more, "
            "and harder, held-out pictures (ones it was not trained on); the model was left unchanged"
        )
        raise CalibrationError(msg)
    record = preprocessing_of(model) or make_record(input_size=size)  # a model without one: the data's size
    before, after = CalibrationBins(dev), CalibrationBins(dev)
    plain = probabilities(logits, {})
    calibrated = probabilities(logits, {"temperature": temperature})
    before.add(plain, labels)
    after.add(calibrated, labels)
    set_preprocessing(model, {**record, "temperature": temperature})
    return CalibrationReport(
        temperature=temperature,
        ece_before=before.ece(),
        ece_after=after.ece(),
        nll_before=before.nll(),
        nll_after=after.nll(),
        accuracy=float((logits.argmax(1) == labels).float().mean()),
        count=int(labels.numel()),
        kept=_kept(calibrated, labels, THRESHOLDS),
    )


def _kept(probs: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float]) -> dict[float, tuple[float, float]]:
    confidence, predicted = probs.max(dim=1)
    out = {}
    for t in thresholds:
        keep = confidence >= t
        share = float(keep.float().mean())
        accuracy = float((predicted[keep] == labels[keep]).float().mean()) if bool(keep.any()) else math.nan
        out[t] = (share, accuracy)
    return out
