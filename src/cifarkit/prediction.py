"""Classify one's own pictures with a trained model: the top class, its name and probability.

May import: cifarkit.errors, cifarkit.device, cifarkit.images, cifarkit.wrappers, cifarkit.preprocess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cifarkit.device import resolve_device
from cifarkit.errors import InvalidOptionError
from cifarkit.images import image_batch
from cifarkit.preprocess import normalize, preprocessing_of
from cifarkit.wrappers import unwrap_model

__all__ = ["Prediction", "class_probabilities", "predict"]


@dataclass(frozen=True)
class Prediction:
    """The top class of one input: index, name (when known) and softmax probability; ``top`` holds
    the ``top`` best ``(index, name, probability)``, best first."""

    index: int
    label: str | None
    probability: float
    top: tuple[tuple[int, str | None, float], ...] = ()


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
    ``torch.inference_mode()`` (its mode is restored afterwards), softmax.

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn
        >>> class_probabilities(build_cnn(), torch.zeros(2, 3, 32, 32)).sum(1).tolist()  # doctest: +ELLIPSIS
        [1.0..., 1.0...]
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
            return torch.softmax(inner(x.to(dev)).float(), dim=1).cpu()
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

    Raises:
        ImageReadError: a file is missing or not an image (the message names it).
        InvalidOptionError: ``top`` outside 1 to the number of classes.

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
    names = list(classes) if classes is not None else []
    top_p, top_i = probs.topk(top, dim=1)
    preds = []
    for ps, idx in zip(top_p.tolist(), top_i.tolist()):
        ranked = tuple((i, names[i] if i < len(names) else None, p) for i, p in zip(idx, ps))
        preds.append(Prediction(*ranked[0], top=ranked))
    return preds
