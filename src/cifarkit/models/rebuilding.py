"""Rebuilding a model from its build record (:func:`rebuild`): what :func:`cifarkit.load` does
before it loads a file's weights, with no pickle and no class import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from torch import nn

from cifarkit.models.cnn import build_cnn
from cifarkit.models.pretrained import adapt, adapt_vgg16
from cifarkit.models.records import BuildRecord, validate_build_record

if TYPE_CHECKING:
    from torchvision.models import VGG

__all__ = ["rebuild"]


def rebuild(record: BuildRecord | dict[str, object]) -> nn.Module:
    """Build a fresh (randomly initialised) model from a build record.

    The record is checked first (:func:`~cifarkit.models.records.validate_build_record`): known builders
    and keywords only, bounded values, never a source of weights. Inside ``with
    torch.device("meta"):`` nothing is allocated (``load`` compares shapes that way first).

    Raises:
        ModelRecordError: the record is malformed, names an unknown builder or keyword, or holds
            a value out of bounds.

    Example:
        >>> rebuild({"builder": "build_cnn", "kwargs": {"activation": "relu"}}).sequential[1]
        ReLU()
    """
    checked = validate_build_record(record)
    options = dict(checked["kwargs"])
    if checked["builder"] == "build_cnn":
        return build_cnn(**options)  # type: ignore[arg-type]
    if checked["builder"] == "adapt":
        return adapt(str(options.pop("arch")), **options)  # type: ignore[arg-type]
    arch = str(options.pop("arch", None) or "vgg16")  # an adapt_vgg16 record of any VGG depth
    import torchvision.models  # lazily: importing cifarkit does not import torchvision

    base = cast("VGG", getattr(torchvision.models, arch)(weights=None))
    adapted: nn.Module = adapt_vgg16(base, **options)  # type: ignore[arg-type]
    return adapted
