"""Which pictures does the model get wrong, and why: the worst losses with the files they came
from, the most confused pairs of classes, and Grad-CAM heatmaps (fastai's ``Interpretation``,
with the file names it cannot give).

:func:`interpret` runs the model once over the data (the one inference loop,
:func:`~cifarkit.evaluation.inference.model_outputs`: the cost of one ``evaluate``) and keeps one
loss and one probability row per picture. Heatmaps are computed only for the pictures shown, by
Captum's ``LayerGradCam`` (the ``cifarkit[gradcam]`` extra) on a layer chosen for the network
(:func:`cam_layer`).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.device import eval_mode, resolve_device, unwrap_model
from cifarkit.display import format_table, new_figure
from cifarkit.errors import ClassIndexError, EmptyDataError, InvalidOptionError, MissingExtraError, ShapeError
from cifarkit.evaluation.inference import model_outputs
from cifarkit.evaluation.metrics import confusion_counts
from cifarkit.losses import LossFn
from cifarkit.models.records import backbone_of
from cifarkit.preprocess import Preprocess, preprocessing_of, probabilities, to_model_input

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Interpretation", "TopLoss", "cam_layer", "heatmaps", "interpret", "png_data_uri"]


@dataclass(frozen=True)
class TopLoss:
    """One picture among the worst: its index in the data, its file (``None`` for generated
    data), its true and predicted classes, its loss and the probability of its true class."""

    index: int
    source: str | None
    true: str
    predicted: str
    loss: float
    probability: float


def cam_layer(model: nn.Module) -> str:
    """The name of the layer Grad-CAM explains for ``model``.

    The network's own choice for everything :func:`cifarkit.adapt` builds (the last block of its
    features: ``layer4`` of a ResNet, ``features.29`` of VGG16...); for any other model, the last
    ``Conv2d`` (for the tutorial CNN, its ReLU when it has one).

    Raises:
        InvalidOptionError: the model has no convolutional layer: there is no map to explain.

    Example:
        >>> from cifarkit import adapt, build_cnn
        >>> cam_layer(adapt("resnet18")), cam_layer(build_cnn()), cam_layer(build_cnn(activation="relu"))
        ('layer4', 'sequential.4', 'sequential.7')
    """
    inner = unwrap_model(model)
    spec = backbone_of(inner)
    if spec is not None:
        return spec.cam_layer
    names = [name for name, module in inner.named_modules()]
    convs = [name for name, module in inner.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        msg = (
            f"a {type(inner).__name__} has no convolutional layer, so Grad-CAM has no map to explain: "
            "pass heatmap=False, or layer= naming a layer whose output is (N, C, H, W)"
        )
        raise InvalidOptionError(msg)
    after = names.index(convs[-1]) + 1  # its activation, when the very next module is one
    activation = after < len(names) and isinstance(inner.get_submodule(names[after]), (nn.ReLU, nn.GELU, nn.SiLU))
    return str(names[after] if activation else convs[-1])


def heatmaps(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, *, layer: str | None = None) -> torch.Tensor:
    """Grad-CAM maps ``(N, H, W)`` in [0, 1] of ``targets`` for model inputs ``x`` ``(N, 3, H, W)``.

    Captum's ``LayerGradCam`` on :func:`cam_layer` (or ``layer``), its positive part upsampled
    bilinearly to the picture and scaled so each map's maximum is 1 (a map with no positive
    evidence stays 0). The model runs in eval mode; its mode is restored.

    Raises:
        MissingExtraError: Captum is missing (``pip install 'cifarkit[gradcam]'``).
        InvalidOptionError: a model without a convolutional layer, or an unknown ``layer``.
    """
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError as exc:
        msg = "heatmaps need Captum: pip install 'cifarkit[gradcam]' (or pass heatmap=False)"
        raise MissingExtraError(msg) from exc
    inner = unwrap_model(model)
    name = layer if layer is not None else cam_layer(inner)
    try:
        module = inner.get_submodule(name)
    except AttributeError as exc:
        msg = f"the model has no layer {name!r}; pass layer= one of its module names (model.named_modules())"
        raise InvalidOptionError(msg) from exc
    with eval_mode(inner), torch.enable_grad():
        cam = LayerGradCam(inner, module).attribute(x.detach().clone(), target=targets.tolist())
    maps = LayerAttribution.interpolate(cam.detach().float(), tuple(x.shape[-2:]), "bilinear").clamp_min(0)[:, 0]
    top = maps.flatten(1).amax(1).clamp_min(1e-12).reshape(-1, 1, 1)
    scaled: torch.Tensor = (maps / top).cpu()
    return scaled


class Interpretation:
    """What :func:`interpret` measured: per picture, the loss, the probabilities, the prediction.

    Attributes:
        losses: ``(N,)`` loss of each picture.
        probs: ``(N, C)`` probabilities (the record's calibration temperature applied).
        labels: ``(N,)`` true classes.
        logits: ``(N, C)`` the model's outputs.
        predicted: ``(N,)`` predicted classes.
        classes: Class names (the data's, else the model's, else the indices).
        sources: The file of each picture, or ``None`` (generated data, a plain loader).
    """

    def __init__(self, model: nn.Module, pictures: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                 losses: torch.Tensor, classes: list[str], sources: list[str] | None) -> None:  # fmt: skip
        self.model = model
        self.pictures = pictures  # uint8 (N, 3, H, W) as the model saw them, before normalization
        self.labels, self.losses, self.classes, self.sources = labels, losses, classes, sources
        self.record: Preprocess = preprocessing_of(model) or {}
        self.logits = logits
        self.probs = probabilities(logits, self.record)
        self.predicted = logits.argmax(1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def top_losses(self, k: int = 9) -> list[TopLoss]:
        """The ``k`` pictures with the highest loss, worst first (mislabelled files come first).

        Example:
            >>> from cifarkit import build_cnn, synthetic_cifar10
            >>> rows = interpret(build_cnn(), synthetic_cifar10(20), device="cpu").top_losses(3)
            >>> len(rows), rows[0].loss >= rows[1].loss >= rows[2].loss
            (3, True)
        """
        if not isinstance(k, int) or k < 1:
            msg = f"k must be a whole number of at least 1, got {k!r}"
            raise InvalidOptionError(msg)
        order = torch.argsort(self.losses, descending=True, stable=True)[:k].tolist()
        return [
            TopLoss(
                index=i,
                source=None if self.sources is None else self.sources[i],
                true=self.classes[int(self.labels[i])],
                predicted=self.classes[int(self.predicted[i])],
                loss=float(self.losses[i]),
                probability=float(self.probs[i, int(self.labels[i])]),
            )
            for i in order
        ]

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        """``(true, predicted, count)`` for every pair of different classes confused at least
        ``min_count`` times, most frequent first (ties: in class order)."""
        n = len(self.classes)
        counts = confusion_counts(self.labels, self.predicted, n)
        pairs = [(int(counts[t, p]), t, p) for t in range(n) for p in range(n) if t != p]
        pairs = [pair for pair in pairs if pair[0] >= max(1, min_count)]
        pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
        return [(self.classes[t], self.classes[p], count) for count, t, p in pairs]

    def _rows(self, k: int) -> list[tuple[str, ...]]:
        return [(str(r.index), r.source or "—", r.true, r.predicted, f"{r.loss:.3f}", f"{r.probability:.1%}")
                for r in self.top_losses(k)]  # fmt: skip

    def __repr__(self) -> str:
        headers = ("index", "file", "true", "predicted", "loss", "p(true)")
        return f"Interpretation of {len(self)} pictures; top losses:\n" + format_table(self._rows(5), headers=headers)

    def maps(self, indices: list[int], layer: str | None = None) -> torch.Tensor:
        """Grad-CAM heatmaps ``(len(indices), H, W)`` of the predicted class of those pictures."""
        dev = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        x = to_model_input(self.pictures[indices].to(dev), self.record)
        return heatmaps(self.model, x, self.predicted[indices], layer=layer)

    def plot_top_losses(self, k: int = 9, *, heatmap: bool = True, layer: str | None = None) -> Figure:
        """The ``k`` worst pictures in a grid, each captioned ``predicted / true / loss / p(true)``
        and its file name, with its Grad-CAM heatmap over it (``heatmap=False`` for none).
        Needs matplotlib (``cifarkit[plot]``) and, for heatmaps, Captum (``cifarkit[gradcam]``)."""
        rows = self.top_losses(k)
        maps = self.maps([r.index for r in rows], layer) if heatmap else None
        columns = min(3, len(rows))
        fig = new_figure("plot_top_losses", figsize=(3.2 * columns, 3.4 * math.ceil(len(rows) / columns)), dpi=100)
        for n, row in enumerate(rows):
            ax = fig.add_subplot(math.ceil(len(rows) / columns), columns, n + 1)
            ax.imshow(self.pictures[row.index].permute(1, 2, 0).numpy())
            if maps is not None:
                ax.imshow(maps[n].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            name = "" if row.source is None else "\n" + _tail(row.source)
            ax.set_title(f"{row.predicted} / {row.true}\n{row.loss:.2f} / {row.probability:.2f}{name}", fontsize=8)
            ax.axis("off")
        fig.suptitle("predicted / true, loss / probability of the true class", fontsize=9)
        return fig

    def gallery_html(self, k: int = 9) -> str:
        """The ``k`` worst pictures as an HTML gallery (pictures inline, no heatmaps), each with
        ``predicted / true``, loss, probability of the true class and file name."""
        figures = []
        for row in self.top_losses(k):
            parts = [f"{html.escape(row.predicted)} / {html.escape(row.true)}",
                     f"loss {row.loss:.2f}, p {row.probability:.2f}"]  # fmt: skip
            if row.source is not None:
                parts.append(f"<code>{html.escape(_tail(row.source))}</code>")
            figures.append(
                '<figure style="display:inline-block;margin:4px;text-align:center;font-size:11px">'
                f'<img src="{png_data_uri(self.pictures[row.index])}" width="96" height="96" '
                f'alt="{html.escape(row.true)}"><figcaption>{"<br>".join(parts)}</figcaption></figure>'
            )
        return (
            f"<div><p>the worst {len(figures)} of {len(self)} pictures (predicted / true)</p>{''.join(figures)}</div>"
        )

    def _repr_html_(self) -> str:
        return self.gallery_html(9)


def png_data_uri(pixels: torch.Tensor, scale: int = 3) -> str:
    """A ``data:image/png;base64,...`` URI of uint8 pixels ``(3, H, W)``, enlarged ``scale`` times
    (nearest neighbour), for HTML that needs no other file."""
    from PIL import Image

    array = pixels.permute(1, 2, 0).contiguous().numpy()
    picture = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tail(path: str, parts: int = 2) -> str:
    """``.../dog/0012.png`` -> ``dog/0012.png``: enough to find it."""
    pieces = path.replace("\\", "/").split("/")
    return "/".join(pieces[-parts:])


def interpret(model: nn.Module, data: Any, *, loss_fn: LossFn | None = None,
              device: str | torch.device = "auto") -> Interpretation:  # fmt: skip
    """Look at what ``model`` gets wrong in ``data``: one pass, one loss per picture.

    Args:
        model: The trained classifier.
        data: An :class:`~cifarkit.data.tensors.ImageTensors` (its ``sources`` give the file names), a
            :class:`~cifarkit.data.loader.TensorLoader` (its images, labels and classes; the order of
            the pictures is the tensors'), or any iterable of ``(x, y)`` batches.
        loss_fn: Per-picture loss; default cross-entropy. A loss with a ``reduction`` attribute
            (torch's and cifarkit's) is run with ``reduction="none"``.
        device: ``"auto"`` or a device.

    Raises:
        EmptyDataError: no pictures.
        ShapeError: batches that are not ``(x, y)`` pairs: pictures without labels.
        ClassIndexError: labels outside the model's classes.

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> found = interpret(build_cnn(), synthetic_cifar10(40, seed=2), device="cpu")
        >>> len(found), len(found.most_confused()) > 0
        (40, True)
    """
    dev = resolve_device(device)
    inner = unwrap_model(model)
    record = preprocessing_of(inner) or {}
    batches, classes, sources = _batches_of(data)
    pictures, labels, logits, losses = [], [], [], []
    with closing(model_outputs(inner, batches, device=dev)) as outputs:
        for x, y, out in outputs:
            if int(y.min()) < 0 or int(y.max()) >= out.shape[1]:
                msg = (f"labels run from {int(y.min())} to {int(y.max())} but the model has {out.shape[1]} "
                       "classes: interpret data labelled with the model's own classes")  # fmt: skip
                raise ClassIndexError(msg)
            pictures.append((_to_pixels(x, record) if x.is_floating_point() else x).cpu())
            labels.append(y.cpu())
            logits.append(out.cpu())
            losses.append(_per_picture(loss_fn, out, y).float().cpu())
    if not labels:
        msg = "interpret got no pictures: the data is empty"
        raise EmptyDataError(msg)
    out_all = torch.cat(logits)
    names = classes or record.get("classes") or [str(i) for i in range(out_all.shape[1])]
    return Interpretation(inner, torch.cat(pictures), torch.cat(labels), out_all, torch.cat(losses),
                          list(names), sources)  # fmt: skip


def _batches_of(data: Any) -> tuple[Iterable[Any], list[str] | None, list[str] | None]:
    """Batches in the data's own order, its class names and its files."""
    images, labels = getattr(data, "images", None), getattr(data, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor) and images.dtype == torch.uint8:
        classes = list(getattr(data, "classes", None) or []) or None
        chunks = [(images[i : i + 256], labels[i : i + 256]) for i in range(0, len(labels), 256)]
        return chunks, classes, getattr(data, "sources", None)
    if isinstance(data, torch.Tensor):
        msg = "interpret needs labelled pictures: pass an ImageTensors, a TensorLoader or (x, y) batches"
        raise ShapeError(msg)
    return data, None, None


def _to_pixels(x: torch.Tensor, record: Preprocess) -> torch.Tensor:
    """Float model input back to uint8 pixels for showing (the record's normalization undone)."""
    if record.get("mean") is not None:
        mean = torch.tensor(record["mean"], device=x.device).reshape(1, -1, 1, 1)
        std = torch.tensor(record["std"], device=x.device).reshape(1, -1, 1, 1)
        x = x * std + mean
    return (x.float() * 255).round().clamp(0, 255).to(torch.uint8)


def _per_picture(loss_fn: LossFn | None, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if loss_fn is None:
        return F.cross_entropy(out, y, reduction="none")
    if hasattr(loss_fn, "reduction"):
        saved = loss_fn.reduction
        try:
            loss_fn.reduction = "none"
            values: torch.Tensor = loss_fn(out, y)
        finally:
            loss_fn.reduction = saved
        return values.reshape(-1)
    return torch.stack([loss_fn(out[i : i + 1], y[i : i + 1]).reshape(()) for i in range(out.shape[0])])
