"""Build records: how a model was built (``{"builder": name, "kwargs": {...}}``, kept on the model
and written into its files), and the check a record read from a file passes first.

Every model cifarkit builds carries its record (:func:`get_build_record`), one builder name per
network: ``build_cnn`` for the tutorial's CNN, ``adapt`` for every network of
:data:`~cifarkit.models.zoo.BACKBONES` (VGG16 included), ``adapt_vgg16`` only for the other VGG
depths a user hands :func:`~cifarkit.models.pretrained.adapt_vgg16`. A file is untrusted, so
:func:`validate_build_record` admits only these builders, only their keyword names, each with its
type and bounds (``num_classes`` up to :data:`~cifarkit.preprocess.MAX_CLASSES`, ``dropout`` in
[0, 1), ``arch`` one of the table's names), and never a source of weights: rebuilding from a file
(:mod:`cifarkit.models.rebuilding`) never downloads, never opens another file and never allocates
more than the architecture's own parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal, TypedDict, cast

from torch import nn

from cifarkit.device import unwrap_model
from cifarkit.errors import ModelRecordError
from cifarkit.models.zoo import BACKBONES, Backbone
from cifarkit.preprocess import MAX_CLASSES
from cifarkit.untrusted import excerpt

__all__ = [
    "RECORD_ATTR",
    "VGG_ARCHS",
    "BuildRecord",
    "backbone_of",
    "get_build_record",
    "set_build_record",
    "validate_build_record",
]

JSONScalar = str | int | float | bool | None
#: The torchvision VGG architectures ``adapt_vgg16`` records (and ``rebuild`` accepts).
VGG_ARCHS = tuple(f"{name}{bn}" for name in ("vgg11", "vgg13", "vgg16", "vgg19") for bn in ("", "_bn"))
#: Attribute under which a model keeps its build record.
RECORD_ATTR = "_cifarkit_build"


class BuildRecord(TypedDict):
    """How a model was built: the builder's name and its JSON-serialisable arguments."""

    builder: Literal["build_cnn", "adapt_vgg16", "adapt"]
    kwargs: dict[str, JSONScalar]


Check = Callable[[object], str | None]  # returns what is wrong, or None


def _count(value: object) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CLASSES
    return None if ok else f"must be an int from 1 to {MAX_CLASSES:,}"


def _probability(value: object) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value < 1
    return None if ok else "must be a number in [0, 1)"


def _flag(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _one_of(*choices: object) -> Check:
    def check(value: object) -> str | None:
        return None if value in choices else f"must be one of {', '.join(repr(c) for c in choices)}"

    return check


#: builder -> keyword -> check. Nothing else is accepted.
BUILDERS: dict[str, dict[str, Check]] = {
    "build_cnn": {"num_classes": _count, "activation": _one_of("none", "relu"), "dropout": _probability},
    "adapt_vgg16": {
        "arch": _one_of(None, *VGG_ARCHS),
        "strategy": _one_of("replace", "append"),
        "num_classes": _count,
        "freeze_features": _flag,
    },
    "adapt": {
        "arch": _one_of(*BACKBONES),
        "strategy": _one_of("replace", "append"),
        "num_classes": _count,
        "freeze_features": _flag,
    },
}


def validate_build_record(record: object) -> BuildRecord:
    """Check a build record read from a file; return it (a copy) if every field is admissible.

    Raises:
        ModelRecordError: the record is not a ``{"builder": ..., "kwargs": {...}}`` dict, names an
            unknown builder or keyword, or a value of the wrong type or out of bounds. The message
            quotes at most a few hundred characters of the record.

    Example:
        >>> validate_build_record({"builder": "build_cnn", "kwargs": {"num_classes": 10}})["kwargs"]
        {'num_classes': 10}
        >>> validate_build_record({"builder": "build_cnn", "kwargs": {"num_classes": 2_000_000}})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cifarkit.errors.ModelRecordError: build record ... num_classes must be an int from 1 to 100,000
    """

    def bad(why: str) -> ModelRecordError:
        return ModelRecordError(f"build record {excerpt(record)} is not admissible: {why}")

    if not isinstance(record, Mapping) or set(record) - {"builder", "kwargs"}:
        raise bad("expected {'builder': ..., 'kwargs': {...}} and nothing else")
    builder, kwargs = record.get("builder"), record.get("kwargs", {})
    if not isinstance(builder, str) or builder not in BUILDERS:
        raise bad(f"unknown builder; known: {', '.join(repr(b) for b in BUILDERS)}")
    if not isinstance(kwargs, Mapping):
        raise bad("'kwargs' must be a dict")
    allowed = BUILDERS[builder]
    for name, value in kwargs.items():
        if name not in allowed:
            known = ", ".join(allowed)
            raise bad(f"{builder} takes no argument {excerpt(name, 60)} from a file (known: {known})")
        problem = allowed[name](value)
        if problem is not None:
            raise bad(f"{name} {problem}")
    return cast("BuildRecord", {"builder": builder, "kwargs": dict(kwargs)})


def get_build_record(model: nn.Module) -> BuildRecord | None:
    """The build record of a cifarkit-built model, or ``None`` for any other model.

    ``DistributedDataParallel`` and ``torch.compile`` wrappers are looked through.

    Example:
        >>> from cifarkit.models import build_cnn
        >>> get_build_record(build_cnn(activation="relu"))["kwargs"]["activation"]
        'relu'
    """
    record = getattr(unwrap_model(model), RECORD_ATTR, None)
    return cast("BuildRecord | None", record)


def set_build_record(model: nn.Module, record: BuildRecord) -> None:
    """Attach ``record`` (checked first) to ``model``: what its files will say it was built by.

    Raises:
        ModelRecordError: the record is not admissible (see :func:`validate_build_record`).
    """
    setattr(unwrap_model(model), RECORD_ATTR, validate_build_record(record))


def backbone_of(model: nn.Module) -> Backbone | None:
    """The row of :data:`~cifarkit.models.zoo.BACKBONES` a model's record names (a VGG of any
    depth from ``adapt_vgg16`` counts as VGG16: the same head and layout), or ``None``.

    Example:
        >>> from cifarkit.models import adapt, build_cnn
        >>> backbone_of(adapt("resnet18")).name, backbone_of(build_cnn())
        ('resnet18', None)
    """
    record = get_build_record(model)
    if record is None:
        return None
    if record["builder"] == "adapt_vgg16":
        return BACKBONES["vgg16"]  # every VGG has its classifier block in .classifier
    return BACKBONES.get(str(record["kwargs"].get("arch")))
