"""Pretrained torchvision networks adapted to one's classes: :func:`adapt` for every network of
:data:`~cifarkit.models.zoo.BACKBONES`, the lesson's :func:`adapt_vgg16` (which also takes a VGG
you built), their pretrained weights (torchvision's cache, the download, a file of your own), and
which block of an adapted network is its head (:func:`head_of`).
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import nn

from cifarkit.errors import (
    AlreadyAdaptedError,
    InvalidOptionError,
    MissingExtraError,
    NotACheckpointError,
    WeightsUnavailableError,
    check_choice,
    check_positive_int,
)
from cifarkit.models.fitting import apply_state_dict
from cifarkit.models.records import RECORD_ATTR, BuildRecord, backbone_of, set_build_record
from cifarkit.models.zoo import (
    Backbone,
    build_backbone,
    find_backbone,
    has_imagenet_head,
    replace_head,
    weights_path,
)
from cifarkit.models.zoo import freeze_features as freeze_backbone
from cifarkit.preprocess import IMAGENET_MEAN, IMAGENET_STD, make_record, set_preprocessing
from cifarkit.untrusted import read_bytes, tensor_dict, torch_load
from cifarkit.writing import PathLike

if TYPE_CHECKING:
    from torchvision.models import VGG

__all__ = ["Strategy", "Weights", "adapt", "adapt_vgg16", "head_of", "read_weights"]

Strategy = Literal["replace", "append"]
#: ``None`` (random init), ``"imagenet"`` (torchvision's default weights) or a weights file.
Weights = Literal["imagenet"] | PathLike | None
_VGG_ARCHS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}  # conv count -> torchvision name


def read_weights(path: PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` in a weights file (torchvision's ``.pth``, a plain ``torch.save`` of a
    ``state_dict``, a ``{"state_dict": ...}`` file, a ``.safetensors`` file), read as a file from a
    stranger (:mod:`cifarkit.untrusted`: torch's ``weights_only`` unpickler, the zip checked first).

    A cifarkit model file's weights are read too, without its checksum: to check it and rebuild
    the model, use :func:`cifarkit.load`.

    Raises:
        ModelFileNotFoundError, PathIsDirectoryError: bad path.
        NotACheckpointError: not a weights file (a picture, text, a file of other things).
        CorruptCheckpointError: truncated or damaged.
        UnsafeLoadError: a pickled module (its code never runs).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"weight": torch.ones(2)}, path)
        >>> read_weights(path)["weight"].tolist()
        [1.0, 1.0]
    """
    file = Path(path)
    data, kind = read_bytes(file)
    if kind == "safetensors":
        try:
            from safetensors.torch import load as load_safetensors
        except ImportError as exc:
            msg = f"{file} is a safetensors file: pip install 'cifarkit[safetensors]' to read it"
            raise MissingExtraError(msg) from exc
        obj: object = load_safetensors(data)
    else:
        obj = torch_load(file, trusted=False, map_location="cpu", data=data)
    weights = tensor_dict(obj, file)
    if weights is None:
        msg = f"{file} holds a {type(obj).__name__}, not model weights (a state_dict: a dict of tensors)"
        raise NotACheckpointError(msg)
    return weights


def _imagenet_state_dict(arch: str, progress: bool) -> dict[str, torch.Tensor]:
    url, path = find_backbone(arch).url, weights_path(arch)
    if not path.is_file():
        match = torch.hub.HASH_REGEX.search(path.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Downloads to a temporary file and renames it: never leaves a half file at `path`.
            torch.hub.download_url_to_file(
                url, str(path), hash_prefix=match.group(1) if match else None, progress=progress
            )
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
            msg = (
                f"{arch} ImageNet weights are not cached at {path} and could not be downloaded "
                f"from {url} ({type(exc).__name__}: {exc}). Download that file by hand on a "
                f"machine with internet access and copy it to {path} (set TORCH_HOME to change "
                f"the cache folder), or pass weights='path/to/{arch}.pth' or weights=None."
            )
            raise WeightsUnavailableError(msg) from exc
    return read_weights(path)


def _vgg_arch(model: VGG) -> str | None:
    convs = sum(isinstance(m, nn.Conv2d) for m in model.features)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.features)
    name = _VGG_ARCHS.get(convs)
    return None if name is None else name + ("_bn" if has_bn else "")


def _check_options(strategy: object, num_classes: object, weights: object) -> None:
    check_choice("strategy", strategy, get_args(Strategy))
    check_positive_int("num_classes", num_classes)
    if isinstance(weights, str) and weights != "imagenet" and not weights.strip():
        msg = "weights='' is not valid; pass None, 'imagenet' or a path to a state_dict file"
        raise InvalidOptionError(msg)


def _adapt_into(
    model: nn.Module,
    spec: Backbone,
    *,
    strategy: Strategy,
    num_classes: int,
    weights: Weights,
    freeze_features: bool,
    progress: bool,
) -> None:
    """Load the weights into a torchvision network with its ImageNet head, then swap the head."""
    if getattr(model, RECORD_ATTR, None) is not None or not has_imagenet_head(model, spec):
        msg = (
            f"this {type(model).__name__} was already adapted (its last layer is no longer the "
            "1000-way ImageNet head); adapting again would stack heads. Start from torchvision's "
            f"torchvision.models.{spec.name}(), or use the model as it is."
        )
        raise AlreadyAdaptedError(msg)
    if weights == "imagenet":
        apply_state_dict(model, _imagenet_state_dict(spec.name, progress), strict=True, source="the ImageNet cache")
    elif weights is not None:
        apply_state_dict(model, read_weights(weights), strict=True, source=os.fspath(weights))
    if weights is not None:  # pretrained features expect the weights' normalization and size: say so
        size = (spec.input_size, spec.input_size)
        set_preprocessing(model, make_record(input_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    replace_head(model, spec, strategy, num_classes)
    if freeze_features:
        freeze_backbone(model, spec.head)


def adapt(
    arch: str,
    num_classes: int = 10,
    *,
    weights: Weights = None,
    strategy: Strategy = "replace",
    freeze_features: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Build torchvision's ``arch`` as a ``num_classes``-way classifier, pretrained or not.

    The networks and their sizes are listed by :func:`cifarkit.backbones` (ResNet-18/50,
    MobileNetV3 small/large, EfficientNet-B0, ConvNeXt-Tiny, RegNetY-400MF, VGG16).
    :func:`adapt_vgg16` is the lesson's name for ``adapt("vgg16", ...)``; both record the builder
    ``adapt``, so a file rebuilds the same network whichever was called.

    Args:
        arch: The network's torchvision name, e.g. ``"resnet18"``.
        num_classes: Number of output classes.
        weights: ``None`` (random init), ``"imagenet"`` (torchvision's default weights for that
            network, from its cache ``$TORCH_HOME/hub/checkpoints/``, downloaded when missing and
            online), or the path of a weights file in torchvision's layout (:func:`read_weights`).
            Weights load before the head changes. With weights, the model's preprocessing record
            holds their mean and std and their pretraining input size (224x224) as the
            recommended one.
        strategy: ``"replace"`` swaps the last classification layer for a ``num_classes``-way one;
            ``"append"`` keeps the 1000-way layer and adds ``Linear(1000, num_classes)`` after it.
        freeze_features: ``requires_grad=False`` on everything but the classifier block (the
            ``head`` of :class:`~cifarkit.models.zoo.Backbone`): train the head only.
        progress: Show a progress bar while downloading.

    Raises:
        InvalidOptionError: an unknown ``arch``, ``strategy`` or ``weights`` value.
        WeightsUnavailableError: the ImageNet weights are neither cached nor downloadable; the
            message names the file and the folder to put it in.
        StateDictMismatchError: the weights file does not fit the network.

    Example:
        >>> model = adapt("resnet18", num_classes=5)
        >>> model.fc
        Linear(in_features=512, out_features=5, bias=True)
        >>> model.eval()(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 5])
        >>> from cifarkit.models import get_build_record
        >>> get_build_record(model)["kwargs"]["arch"]
        'resnet18'
    """
    spec = find_backbone(arch)
    _check_options(strategy, num_classes, weights)
    model = build_backbone(spec.name)
    _adapt_into(model, spec, strategy=strategy, num_classes=num_classes, weights=weights,
                freeze_features=freeze_features, progress=progress)  # fmt: skip
    set_build_record(model, _adapt_record(spec.name, strategy, num_classes, freeze_features))
    return model


def _adapt_record(arch: str, strategy: Strategy, num_classes: int, freeze_features: bool) -> BuildRecord:
    return {"builder": "adapt", "kwargs": {"arch": arch, "strategy": strategy, "num_classes": num_classes,
                                           "freeze_features": freeze_features}}  # fmt: skip


def adapt_vgg16(
    model: VGG | None = None,
    *,
    strategy: Strategy = "replace",
    num_classes: int = 10,
    weights: Weights = None,
    freeze_features: bool = False,
    progress: bool = True,
) -> VGG:
    """Turn torchvision's VGG16 into a ``num_classes``-way classifier (the tutorial's two ways).

    The lesson's name for ``adapt("vgg16", ...)``, which also takes a VGG you built yourself.

    Args:
        model: A torchvision ``VGG`` with its 1000-way ImageNet head; adapted **in place** and
            returned. ``None`` builds ``torchvision.models.vgg16(weights=None)`` first.
        strategy: ``"replace"`` swaps ``classifier[6]`` for ``Linear(4096, num_classes)``;
            ``"append"`` keeps the ImageNet layer and adds ``classifier.add_linear =
            Linear(1000, num_classes)``.
        num_classes: Number of output classes.
        weights: ``None`` (random init), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` through
            its cache, ``$TORCH_HOME/hub/checkpoints/``), or a path to a VGG16 ``state_dict``
            file (:func:`read_weights`). Weights are loaded before the head is swapped, because
            torchvision's builder refuses ``num_classes != 1000`` with weights.
        freeze_features: Set ``requires_grad=False`` on ``model.features`` (train the head only).
        progress: Show a progress bar while downloading.

    Returns:
        The adapted model, whose output is ``(N, num_classes)`` for 32x32 and 224x224 inputs. Its
        build record is ``adapt`` with ``arch="vgg16"`` (``adapt_vgg16`` with the VGG's own name
        for the other depths, vgg11 to vgg19 with or without batch norm).

    Raises:
        InvalidOptionError: unknown ``strategy`` or ``weights`` value, or a model that is not a VGG.
        AlreadyAdaptedError: the model's head was already changed.
        WeightsUnavailableError: ImageNet weights neither cached nor downloadable.
        StateDictMismatchError: the weights file is not a VGG16 ``state_dict``.

    Example:
        >>> model = adapt_vgg16(strategy="append")
        >>> model.classifier.add_linear
        Linear(in_features=1000, out_features=10, bias=True)
        >>> model.eval()(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    _check_options(strategy, num_classes, weights)
    from torchvision.models import VGG  # lazily: importing cifarkit stays fast

    if model is None:
        built = adapt("vgg16", num_classes, weights=weights, strategy=strategy, freeze_features=freeze_features,
                      progress=progress)  # fmt: skip
        assert isinstance(built, VGG)  # adapt("vgg16") is torchvision's VGG (not user input: no check needed)
        return built
    if not isinstance(model, VGG):
        msg = f"adapt_vgg16 expects a torchvision VGG model, got {type(model).__name__}"
        raise InvalidOptionError(msg)
    _adapt_into(model, find_backbone("vgg16"), strategy=strategy, num_classes=num_classes, weights=weights,
                freeze_features=freeze_features, progress=progress)  # fmt: skip
    arch = _vgg_arch(model)
    record = _adapt_record("vgg16", strategy, num_classes, freeze_features)
    if arch != "vgg16":  # another depth: the one builder that rebuilds it
        record = {"builder": "adapt_vgg16", "kwargs": {**record["kwargs"], "arch": arch}}
    set_build_record(model, record)
    return model


def head_of(model: nn.Module, head: str | None = None) -> tuple[str, int]:
    """The classifier block's name and the depth at which the other layers are grouped.

    ``head`` names it for any model; without it the model must come from :func:`adapt` or
    :func:`adapt_vgg16`, whose build record names the network.

    Raises:
        InvalidOptionError: no ``head`` and the model's network is not one cifarkit adapts.

    Example:
        >>> head_of(adapt("resnet18"))
        ('fc', 1)
    """
    if head is not None:
        return head, 1
    spec = backbone_of(model)
    if spec is None:
        msg = (
            "fine_tune needs to know which layers are the head: build the model with "
            "cifarkit.adapt(...) (see cifarkit.backbones()), or pass head='name of the classifier "
            "module' (for example head='fc')"
        )
        raise InvalidOptionError(msg)
    return spec.head, spec.depth
