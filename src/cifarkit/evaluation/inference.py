"""The one inference loop (:func:`model_outputs`) and what it answers about one's own pictures:
the top classes with their names and probabilities (:func:`predict`, :func:`class_probabilities`).

Every use of a trained model runs through :func:`model_outputs`: :func:`~cifarkit.evaluation.metrics.evaluate`,
:func:`predict`, :func:`~cifarkit.evaluation.calibration.calibrate`,
:func:`~cifarkit.evaluation.interpretation.interpret` and the report. It puts the model on the
device in its memory format once, runs it in eval mode under ``torch.inference_mode()`` (and
autocast with ``amp``), scales and normalizes raw uint8 pixels as the model's record says, and,
under ``torchrun``, gives each rank its shard.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import nn

from cifarkit.data.images import image_batch
from cifarkit.data.loader import match_memory_format
from cifarkit.device import (
    Amp,
    amp_dtype,
    autocast,
    eval_mode,
    move_batch,
    move_images,
    place_model,
    resolve_device,
    unwrap_model,
)
from cifarkit.distributed import DistContext, shard_data
from cifarkit.errors import InvalidOptionError, ShapeError, check_choice
from cifarkit.preprocess import Preprocess, preprocessing_of, probabilities, to_model_input

__all__ = ["TTA", "Prediction", "check_tta", "class_probabilities", "flip_mean", "model_outputs", "predict"]

#: Test-time augmentation: ``None``, or ``"flip"`` (the mean of a picture's and its mirror image's
#: probabilities).
TTA = Literal["flip"] | None

#: Pictures per forward pass when :func:`class_probabilities` is given a list.
PREDICT_BATCH = 256


Outputs = Generator[tuple[torch.Tensor, torch.Tensor, torch.Tensor], None, None]
UnlabelledOutputs = Generator[tuple[torch.Tensor, None, torch.Tensor], None, None]


@overload
def model_outputs(
    model: nn.Module,
    data: Iterable[Any],
    *,
    device: torch.device,
    amp: Amp = ...,
    channels_last: bool | None = ...,
    dist: DistContext | None = ...,
    tta: TTA = ...,
    labelled: Literal[True] = ...,
) -> Outputs: ...


@overload
def model_outputs(
    model: nn.Module,
    data: Iterable[Any],
    *,
    device: torch.device,
    amp: Amp = ...,
    channels_last: bool | None = ...,
    dist: DistContext | None = ...,
    tta: TTA = ...,
    labelled: Literal[False],
) -> UnlabelledOutputs: ...


def model_outputs(
    model: nn.Module,
    data: Iterable[Any],
    *,
    device: torch.device,
    amp: Amp = False,
    channels_last: bool | None = None,
    dist: DistContext | None = None,
    tta: TTA = None,
    labelled: bool = True,
) -> Outputs | UnlabelledOutputs:
    """``(x, y, logits)`` of every batch of ``data``, on ``device``: the one inference loop.

    The model (wrappers removed) is placed on ``device`` in its memory format once and runs in
    eval mode under ``torch.inference_mode()`` (and autocast to ``amp``); uint8 pixels are scaled
    and normalized as its record says (float batches are taken as the loader normalized them).
    ``dist`` (an active :class:`~cifarkit.distributed.DistContext`) gives this rank its shard,
    without padding. With ``labelled=False`` a batch is the images alone and ``y`` is ``None``.
    ``tta="flip"`` (test-time augmentation) runs each picture and its mirror image and answers
    their mean probability (see :func:`flip_mean`).

    Every module's train/eval mode, and the grad mode, are restored when the generator ends or is
    closed: iterate it inside ``contextlib.closing`` so that an exception in the caller's loop
    restores them at once. The caller's loop body runs under the same ``inference_mode``.

    Raises:
        ShapeError: a batch that is not an ``(x, y)`` pair (with ``labelled``).
        InvalidOptionError: an unknown ``tta``, or ``"flip"`` for a model whose record says its
            pictures must not be mirrored.

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> batches = synthetic_cifar10(8).loader(batch_size=4, shuffle=False)
        >>> with closing(model_outputs(build_cnn(), batches, device=torch.device("cpu"))) as outputs:
        ...     [tuple(logits.shape) for _, _, logits in outputs]
        [(4, 10), (4, 10)]
    """
    inner = unwrap_model(model)
    check_tta(tta, preprocessing_of(inner))
    fmt = place_model(inner, device, channels_last)
    batches = match_memory_format(data, device, fmt)
    if dist is not None and dist.active:
        batches = shard_data(batches, dist, pad=False)
    return _outputs(inner, batches, device, fmt, amp_dtype(amp, device), labelled, tta)


def check_tta(tta: object, record: Preprocess | None) -> None:
    """Refuse an unknown ``tta``, and ``"flip"`` for pictures that must not be mirrored.

    Raises:
        InvalidOptionError: either.

    Example:
        >>> check_tta("flip", {"mirror": False})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cifarkit.errors.InvalidOptionError: tta='flip' mirrors the pictures, but this model's record says ...
    """
    check_choice("tta", tta, (None, "flip"))
    if tta == "flip" and (record or {}).get("tta") == "flip":
        msg = "tta='flip' is already inside this exported program (its record says so): pass tta=None"
        raise InvalidOptionError(msg)
    if tta == "flip" and (record or {}).get("mirror") is False:
        msg = (
            "tta='flip' mirrors the pictures, but this model's record says they must not be mirrored "
            "(it was trained with mirror=False: digits, letters, text, anything with a left and right): "
            "a mirrored picture is not one of its classes. Pass tta=None"
        )
        raise InvalidOptionError(msg)


def flip_mean(logits: torch.Tensor, mirrored: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Logits whose softmax (divided by ``temperature``) is the mean of the probabilities of a
    picture and of its mirror image: ``T * log((softmax(a / T) + softmax(b / T)) / 2)``.

    So every figure computed from logits (the loss, ``predict``'s probabilities, the calibration
    error) is that of the averaged probabilities, the calibration temperature included.

    Example:
        >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> torch.softmax(flip_mean(a, b), 1).tolist()
        [[0.5, 0.5]]
    """
    views = torch.stack([logits.float(), mirrored.float()]) / temperature  # (2, N, C)
    return (torch.logsumexp(torch.log_softmax(views, dim=2), dim=0) - math.log(2)) * temperature


def _outputs(
    inner: nn.Module, batches: Iterable[Any], device: torch.device, fmt: torch.memory_format,
    dtype: torch.dtype | None, labelled: bool, tta: TTA,
) -> Generator[tuple[torch.Tensor, Any, torch.Tensor], None, None]:  # fmt: skip
    record = preprocessing_of(inner)
    temperature = float((record or {}).get("temperature") or 1.0)
    with eval_mode(inner), torch.inference_mode(), autocast(device, dtype):
        for batch in batches:
            if not labelled:
                x, y = move_images(batch, device, fmt), None
            elif isinstance(batch, (tuple, list)) and len(batch) == 2:
                x, y = move_batch(batch[0], batch[1], device, fmt)
            else:
                msg = "labelled pictures are needed: (x, y) batches, or an ImageTensors with labels"
                raise ShapeError(msg)
            x_in = x if x.is_floating_point() else to_model_input(x, record)
            out = inner(x_in)
            if tta == "flip":  # the mirror image: width is the last dimension of (N, C, H, W)
                out = flip_mean(out, inner(x_in.flip(-1)), temperature)
            yield x, y, out


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
    tta: TTA = None,
) -> torch.Tensor:
    """The softmax probabilities ``(N, C)`` (float32, on the CPU) that :func:`predict` ranks.

    The eager pipeline every exported program is checked against: pictures through the one
    picture path (:func:`~cifarkit.data.images.image_batch`) at ``size`` (default: the record's
    ``input_size``, else 32), scaled and normalized as recorded, the one inference loop
    (:func:`model_outputs`, in batches of 256), softmax of the logits divided by the record's
    calibration temperature (1 without one); with ``tta="flip"``, the mean of the probabilities
    of each picture and its mirror image.

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn
        >>> [round(p, 4) for p in class_probabilities(build_cnn(), torch.zeros(2, 3, 32, 32)).sum(1).tolist()]
        [1.0, 1.0]
    """
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    record = preprocessing_of(unwrap_model(model)) or {}
    recorded_size = record.get("input_size")
    side = size if size is not None else tuple(recorded_size) if recorded_size else 32
    x = image_batch(items, size=side)  # (N, 3, H, W) float in [0, 1]
    if record.get("mean") is not None:
        x = to_model_input(x, record)  # normalized as the model was trained
    chunks = [x[i : i + PREDICT_BATCH] for i in range(0, x.shape[0], PREDICT_BATCH)]
    out = []
    with closing(model_outputs(model, chunks, device=resolve_device(device), tta=tta, labelled=False)) as outputs:
        out = [probabilities(logits, record).cpu() for _, _, logits in outputs]  # calibrated when recorded
    return torch.cat(out)


def predict(
    model: nn.Module,
    inputs: object | Sequence[object],
    *,
    classes: Sequence[str] | None = None,
    device: str | torch.device = "auto",
    size: int | Sequence[int] | None = None,
    top: int = 1,
    reject_below: float | None = None,
    tta: TTA = None,
) -> list[Prediction]:
    """Classify your own pictures: file paths, PIL images, or tensors ``(3, H, W)``/``(N, 3, H, W)``.

    uint8 tensors and images are scaled to [0, 1] (as :class:`~cifarkit.data.loader.TensorLoader` does),
    resized to ``size`` (a side, or ``(height, width)``) by the one picture path of
    :mod:`cifarkit.data.images` when needed, and normalized as the
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
        tta: ``"flip"``: answer the mean of the probabilities of each picture and of its mirror
            image (test-time augmentation: one more forward pass per picture, usually a little
            more accuracy). Refused for a model trained on pictures that must not be mirrored.

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
    probs = class_probabilities(model, inputs, device=device, size=size, tta=tta)
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
