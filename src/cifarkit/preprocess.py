"""The preprocessing record: what a model expects its input to be, carried with the model and in
every model file, so that prediction and evaluation feed it what it was trained on.

A record is plain JSON::

    {"input_size": [32, 32], "channels": "RGB", "resize": "bilinear-antialias", "scale": "uint8 / 255",
     "mean": [0.5, 0.5, 0.5] or None, "std": [0.25, 0.25, 0.25] or None, "classes": [...] or None,
     "temperature": 1.7 (optional)}

``resize`` names how a picture of another size is brought to ``input_size`` (see
:mod:`cifarkit.data.images`, which implements it, and :mod:`cifarkit.exporting`, which puts it in the
exported program). ``temperature``, written by :func:`cifarkit.calibrate`, divides the logits
before the softmax wherever probabilities are computed (:func:`probabilities`). ``averaged``,
written by :class:`~cifarkit.training.averaging.EMA`, says the weights are an average
(``{"kind": "ema", "decay": 0.999, "updates": 1200}``). ``mirror: false``, written by a loader
built with ``mirror=False``, says the pictures must not be mirrored (digits, text): flip
test-time augmentation is refused then.

Numbers are kept as given (``0.13``, not float32's ``0.12999999523``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cifarkit.device import unwrap_model
from cifarkit.errors import ModelRecordError, cut

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_CLASSES",
    "RESIZE_METHOD",
    "Preprocess",
    "make_record",
    "normalize",
    "preprocessing_of",
    "probabilities",
    "set_preprocessing",
    "to_model_input",
    "validate_record",
]

#: ImageNet's per-channel mean and std, what torchvision's pretrained VGG16 expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The most classes a model file, a record or a build record may name.
MAX_CLASSES = 100_000
#: The bounds of a calibration temperature in a record (``probabilities`` divide the logits by it).
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
#: The one resize method (float32 bilinear with antialiasing, rounded to uint8; see :mod:`cifarkit.data.images`).
RESIZE_METHOD = "bilinear-antialias"
_ATTR = "_cifarkit_preprocess"
Preprocess = dict[str, Any]


def make_record(
    *,
    input_size: Sequence[int] | None = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    temperature: float | None = None,
    mirror: bool = True,
) -> Preprocess:
    """A record: input size, RGB channels, uint8 scaled by 1/255, then ``(x - mean) / std``;
    ``temperature`` (a calibration's, see :func:`probabilities`) only when given; ``mirror=False``
    for pictures that must not be mirrored.

    Example:
        >>> make_record(mean=[0.13] * 3, std=[0.3] * 3)["mean"]
        [0.13, 0.13, 0.13]
    """
    record: Preprocess = {
        "input_size": list(input_size) if input_size is not None else None,
        "channels": "RGB",
        "resize": RESIZE_METHOD,
        "scale": "uint8 / 255",
        "mean": [float(v) for v in mean] if mean is not None else None,
        "std": [float(v) for v in std] if std is not None else None,
        "classes": [str(c) for c in classes] if classes is not None else None,
    }
    if temperature is not None:
        record["temperature"] = temperature
    if not mirror:  # only said when it matters: a mirrored picture is not one of the classes
        record["mirror"] = False
    return validate_record(record)


def validate_record(record: object) -> Preprocess:
    """Check a record read from a file (types, lengths, finite positive std); return it.

    Raises:
        ModelRecordError: anything else (the message quotes a short excerpt).
    """

    def bad(why: str) -> ModelRecordError:
        return ModelRecordError(f"preprocessing record {cut(str(record), 200)!r} is malformed: {why}")

    if not isinstance(record, dict):
        raise bad("expected a JSON object")
    size = record.get("input_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 1 <= v <= 8192 for v in size)
    ):
        raise bad("input_size must be [height, width] in pixels")
    if record.get("resize", RESIZE_METHOD) != RESIZE_METHOD:
        raise bad(f"resize must be {RESIZE_METHOD!r}, the one method cifarkit implements")
    for key in ("mean", "std"):
        values = record.get(key)
        if values is not None and not (
            isinstance(values, list)
            and len(values) in (1, 3)
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        ):
            raise bad(f"{key} must be 1 or 3 finite numbers")
    if (record.get("mean") is None) != (record.get("std") is None):
        raise bad("mean and std go together")
    if record.get("std") is not None and any(v <= 0 for v in record["std"]):
        raise bad("std must be positive")
    temperature = record.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        and math.isfinite(temperature) and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE
    ):  # fmt: skip
        raise bad(f"temperature must be a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE:g}")
    if not isinstance(record.get("mirror", True), bool):
        raise bad("mirror must be true or false")
    if record.get("tta") not in (None, "flip"):
        raise bad("tta must be 'flip' when given")
    averaged = record.get("averaged")
    if averaged is not None and not (
        isinstance(averaged, dict) and averaged.get("kind") == "ema" and set(averaged) <= {"kind", "decay", "updates"}
        and isinstance(averaged.get("decay"), float) and 0 < averaged["decay"] < 1
        and isinstance(averaged.get("updates"), int) and not isinstance(averaged["updates"], bool)
        and averaged["updates"] >= 0
    ):  # fmt: skip
        raise bad("averaged must be {'kind': 'ema', 'decay': a number in (0, 1), 'updates': a count}")
    classes = record.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and len(classes) <= MAX_CLASSES and all(isinstance(c, str) for c in classes)
    ):
        raise bad("classes must be a list of names")
    return dict(record)


def preprocessing_of(model: nn.Module) -> Preprocess | None:
    """The record a model carries (a dict), or ``None`` for a model without one.

    Example:
        >>> from torch import nn
        >>> preprocessing_of(nn.Linear(2, 2)) is None
        True
    """
    record = getattr(unwrap_model(model), _ATTR, None)
    return dict(record) if isinstance(record, dict) else None


def set_preprocessing(model: nn.Module, record: Preprocess | None) -> None:
    """Attach ``record`` to ``model`` (``None`` removes it)."""
    inner = unwrap_model(model)
    if record is None:
        if hasattr(inner, _ATTR):
            delattr(inner, _ATTR)
        return
    setattr(inner, _ATTR, validate_record(record))


def probabilities(logits: torch.Tensor, record: Preprocess | None) -> torch.Tensor:
    """``softmax(logits / temperature)`` in float32: the probabilities a model's record asks for
    (the temperature :func:`cifarkit.calibrate` fitted; 1 without one).

    Example:
        >>> probabilities(torch.tensor([[2.0, 0.0]]), {"temperature": 2.0}).tolist()  # doctest: +ELLIPSIS
        [[0.731..., 0.268...]]
    """
    temperature = (record or {}).get("temperature") or 1.0
    return torch.softmax(logits.float() / float(temperature), dim=1)


def normalize(x: torch.Tensor, record: Preprocess | None) -> torch.Tensor:
    """``(x - mean) / std`` of the record, per channel, for float ``(N, 3, H, W)`` in [0, 1]."""
    if record is None or record.get("mean") is None:
        return x
    mean = torch.tensor(record["mean"], dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(record["std"], dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - mean) / std


def to_model_input(x: torch.Tensor, record: Preprocess | None) -> torch.Tensor:
    """Raw pixels as the model expects them: uint8 scaled by 1/255, then the record's normalization.

    Example:
        >>> record = make_record(mean=[0.5], std=[0.5])
        >>> to_model_input(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), record).flatten().tolist()
        [1.0, 1.0, 1.0]
    """
    if not x.is_floating_point():
        x = x.float() / 255.0
    return normalize(x, record)
