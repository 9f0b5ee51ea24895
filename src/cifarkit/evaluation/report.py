"""One HTML page about a trained model on labelled pictures: accuracy, per-class table, confusion
matrix, most confused pairs, the worst pictures with their files and heatmaps, and calibration.

The file is self-contained (every picture and plot inline as a ``data:`` URI, no script or style
from elsewhere) and written atomically: on any failure nothing is written.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from cifarkit.display import figure_png, html_table
from cifarkit.distributed import DistContext
from cifarkit.evaluation.calibration import fit_temperature
from cifarkit.evaluation.interpretation import Interpretation, interpret
from cifarkit.evaluation.metrics import CalibrationBins, ClassMeter, EvalResult
from cifarkit.preprocess import probabilities
from cifarkit.writing import PathLike, atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["write_report"]

#: Marks, once the page has loaded, how many of its pictures the browser could show.
_LOAD_CHECK = (
    "<script>window.addEventListener('load',function(){var i=Array.prototype.slice.call(document.images);"
    "document.body.setAttribute('data-images',i.length);document.body.setAttribute('data-loaded',"
    "i.filter(function(x){return x.complete&&x.naturalWidth>0;}).length);});</script>"
)
_STYLE = (
    "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 10px;border-bottom:1px solid #ddd}"
    "td{text-align:right}td:first-child{text-align:left}h2{margin-top:1.6em}code{font-size:90%}</style>"
)


def _figure_uri(fig: Figure) -> str:
    return "data:image/png;base64," + base64.b64encode(figure_png(fig)).decode("ascii")


def _calibration_rows(found: Interpretation) -> tuple[list[tuple[str, ...]], str]:
    recorded = found.record.get("temperature")
    temperature = float(recorded) if recorded else fit_temperature(found.logits, found.labels)
    note = (f"the model's temperature {temperature:.3f} (fitted by cifarkit.calibrate)" if recorded else
            f"temperature {temperature:.3f} fitted on these pictures (not stored in the model: "
            "run cifarkit calibrate on held-out pictures to store one)")  # fmt: skip
    rows: list[tuple[str, ...]] = []
    for name, t in (("plain softmax", 1.0), ("calibrated", temperature)):
        bins = CalibrationBins(torch.device("cpu"))
        bins.add(probabilities(found.logits, {"temperature": t}), found.labels)
        rows.append((name, f"{bins.ece():.4f}", f"{bins.nll():.4f}"))
    return rows, note


def _figures(found: Interpretation) -> EvalResult:
    """``evaluate``'s figures from what :func:`interpret` kept: no second pass over the pictures."""
    n = len(found.classes)
    meter = ClassMeter(n, topk=tuple(sorted({1, min(5, n)})), device=torch.device("cpu"))
    meter.add(found.logits, found.labels)
    counts = meter.totals(DistContext.single(torch.device("cpu")))
    topk = {k: hits / len(found) for k, hits in counts.topk_hits.items()}
    return EvalResult(
        float(found.losses.mean()), topk[1], len(found), topk, counts.per_class_accuracy, counts.confusion
    )


def _sections(found: Interpretation, k: int, heatmap: bool) -> list[str]:
    result = _figures(found)
    names = found.classes
    counts = result.confusion.sum(1).tolist() if result.confusion is not None else []
    accuracy = result.per_class_accuracy
    order = sorted(range(len(accuracy)), key=lambda c: math.inf if math.isnan(accuracy[c]) else accuracy[c])
    per_class = [(names[c], "—" if math.isnan(accuracy[c]) else f"{accuracy[c]:.1%}",
                  f"{counts[c]:,}" if counts else "") for c in order]  # fmt: skip
    confused = [(t, p, str(n)) for t, p, n in found.most_confused()[:15]]
    rows = [(str(r.index), html.escape(r.source or "—"), r.true, r.predicted, f"{r.loss:.3f}", f"{r.probability:.1%}")
            for r in found.top_losses(k)]  # fmt: skip
    calibration, note = _calibration_rows(found)
    confusion = result.plot_confusion(classes=names)
    assert not isinstance(confusion, Path)  # no path given: the figure itself
    confusion_uri = _figure_uri(confusion)
    worst_uri = _figure_uri(found.plot_top_losses(k, heatmap=heatmap))
    return [
        f"<h2>Accuracy</h2><p><b>{result.accuracy:.2%}</b> of {result.count:,} pictures; mean loss "
        f"{result.loss:.4f}" + "".join(f"; top-{t} {v:.2%}" for t, v in sorted(result.topk.items()) if t != 1) + "</p>",
        "<h2>Per class, worst first</h2>" + html_table(per_class, headers=("class", "accuracy", "pictures")),
        f'<h2>Confusion matrix</h2><img src="{confusion_uri}" alt="confusion matrix">',
        "<h2>Most confused</h2>"
        + (html_table(confused, headers=("true", "predicted as", "times")) if confused else "<p>no confusion</p>"),
        f"<h2>The {len(rows)} worst pictures</h2><p>Each shows the predicted class, the true one, the loss and "
        "the probability of the true class" + (", with its Grad-CAM heatmap" if heatmap else "") + ". "
        "A mislabelled file is usually among them.</p>"
        f'<img src="{worst_uri}" alt="the worst pictures" style="max-width:100%">'
        + html_table(rows, headers=("index", "file", "true", "predicted", "loss", "p(true)")),
        "<h2>Calibration</h2>"
        + html_table(calibration, headers=("probabilities", "ECE (15 bins)", "NLL"))
        + f"<p>{html.escape(note)}</p>",
    ]


class Section(Protocol):
    """Anything that renders as a section of the page (an :class:`~cifarkit.auditing.AuditReport`)."""

    def html_section(self) -> str: ...


def write_report(model: nn.Module, data: Any, path: PathLike, *, k: int = 12, heatmap: bool = True,
                 device: str | torch.device = "auto", title: str | None = None,
                 audit: Section | None = None) -> Path:  # fmt: skip
    """Write one self-contained HTML page about ``model`` on the labelled pictures ``data``.

    The model runs once over the pictures (:func:`~cifarkit.evaluation.interpretation.interpret`);
    every figure of the page comes from that pass, the heatmaps of the shown pictures aside.

    Args:
        model: The trained classifier (its record's calibration temperature is used).
        data: An :class:`~cifarkit.data.tensors.ImageTensors` (from ``load_image_folder``: the worst
            pictures are named by file), a ``TensorLoader`` or ``(x, y)`` batches.
        path: The ``.html`` file to write (atomically).
        k: How many of the worst pictures to show.
        heatmap: Grad-CAM heatmaps over them (needs ``cifarkit[gradcam]``).
        title: The page's title; default: the time it was written.
        audit: The audit of the same pictures (:func:`cifarkit.audit`): a section "The pictures
            themselves" with its findings.

    Raises:
        EmptyDataError, ShapeError, ClassIndexError: as :func:`~cifarkit.evaluation.interpretation.interpret`.
        MissingExtraError: matplotlib (``cifarkit[plot]``) or, for heatmaps, Captum is missing.

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> out = write_report(build_cnn(), synthetic_cifar10(60), pathlib.Path(tempfile.mkdtemp()) / "r.html",
        ...                    k=3, heatmap=False, device="cpu")
        >>> out.read_text().count("<h2>")
        6
    """
    found = interpret(model, data, device=device)
    heading = title or f"cifarkit report, {datetime.datetime.now():%Y-%m-%d %H:%M}"
    body = "".join(_sections(found, k, heatmap))
    if audit is not None:
        body += "<h2>The pictures themselves</h2>" + audit.html_section()
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>'
            f"{_STYLE}</head><body><h1>{html.escape(heading)}</h1>{body}{_LOAD_CHECK}</body></html>")  # fmt: skip
    return atomic_write(path, lambda handle: handle.write(page.encode("utf-8")))
