"""Calibrated probabilities: how far a model's confidence is from its accuracy (the expected
calibration error), and one temperature, fitted on held-out data, that brings them together
(:func:`calibrate`, temperature scaling as in Guo et al., 2017).

The temperature goes into the model's preprocessing record (``"temperature"``), so it travels in
every saved file and exported program, and :func:`~cifarkit.evaluation.inference.predict`, ``evaluate``
and the programs divide the logits by it before the softmax. It changes no prediction's class:
only how sure the model says it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.data.loader import Batch, check_not_empty
from cifarkit.device import resolve_device
from cifarkit.display import format_table, html_table
from cifarkit.errors import CalibrationError, EmptyDataError, ShapeError
from cifarkit.evaluation.inference import model_outputs
from cifarkit.evaluation.metrics import CalibrationBins
from cifarkit.preprocess import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    make_record,
    preprocessing_of,
    probabilities,
    set_preprocessing,
)

__all__ = ["THRESHOLDS", "CalibrationReport", "calibrate", "fit_temperature"]

#: The thresholds :class:`CalibrationReport` reports the kept share and accuracy for.
THRESHOLDS = (0.5, 0.7, 0.9, 0.95)


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


def _logits_and_labels(
    model: nn.Module, data: Iterable[Batch], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Every logit and label of ``data``, and the pictures' size."""
    outputs, labels, size = [], [], []
    with closing(model_outputs(model, data, device=device)) as batches:
        for x, y, out in batches:
            outputs.append(out.float())
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
    :func:`~cifarkit.evaluation.inference.predict`, ``evaluate`` and every file and program it is saved or
    exported to.

    Raises:
        EmptyDataError: the data yields no batches.
        ShapeError: labels outside the model's classes.
        CalibrationError: the fitted temperature is not finite or outside [0.001, 1000] (for
            example, a model right on every held-out picture); the model is left unchanged.

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn, synthetic_cifar10, train_loop
        >>> model = build_cnn(activation="relu")  # briefly trained: an untrained model's logits say nothing
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        >>> train = synthetic_cifar10(1000, seed=0).loader(batch_size=50, seed=0)
        >>> history = train_loop(model, train, epochs=2, optimizer=optimizer, device="cpu", progress=False)
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
