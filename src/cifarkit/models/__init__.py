"""The models: the tutorial's CIFAR-10 CNN, pretrained torchvision networks adapted to one's
classes (:func:`adapt`, and the lesson's :func:`adapt_vgg16`), and a parameter summary.

Every model built here remembers how it was built (a small JSON-serialisable
:class:`BuildRecord`), so :func:`cifarkit.save` can write a file that
:func:`cifarkit.load` turns back into the same architecture with no pickle and no class import.

May import: cifarkit.device, cifarkit.errors, cifarkit.files, cifarkit.files.diagnosis,
cifarkit.files.reading, cifarkit.files.records, cifarkit.models.zoo, cifarkit.models.overview,
cifarkit.preprocess.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast, get_args

import torch
from torch import nn

from cifarkit.device import unwrap_model
from cifarkit.errors import (
    AlreadyAdaptedError,
    InvalidOptionError,
    ShapeError,
    WeightsUnavailableError,
    check_choice,
    check_positive_int,
)
from cifarkit.files import PathLike
from cifarkit.files.diagnosis import apply_state_dict
from cifarkit.files.reading import read_state_dict
from cifarkit.files.records import BuildRecord, validate_build_record
from cifarkit.models.overview import LayerRow, ModelSummary, summary
from cifarkit.models.zoo import (
    BACKBONES,
    Backbone,
    BackboneTable,
    backbones,
    build_backbone,
    find_backbone,
    has_imagenet_head,
    replace_head,
    weights_path,
)
from cifarkit.models.zoo import freeze_features as freeze_backbone
from cifarkit.preprocess import IMAGENET_MEAN, IMAGENET_STD, make_record, set_preprocessing

if TYPE_CHECKING:
    from torchvision.models import VGG

__all__ = [
    "BackboneTable",
    "BuildRecord",
    "CifarCNN",
    "LayerRow",
    "ModelSummary",
    "adapt",
    "adapt_vgg16",
    "backbones",
    "build_cnn",
    "get_build_record",
    "head_of",
    "imagenet_cache_path",
    "rebuild",
    "summary",
]

Activation = Literal["none", "relu"]
Strategy = Literal["replace", "append"]

#: Attribute under which a model keeps its build record.
RECORD_ATTR = "_cifarkit_build"
_VGG_ARCHS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}  # conv count -> torchvision name


class CifarCNN(nn.Module):
    """The tutorial's CIFAR-10 network, layer for layer.

    ``Conv5x5(3->32) MaxPool, Conv5x5(32->32) MaxPool, Conv5x5(32->64) MaxPool, Flatten,
    Linear(1024->64), Linear(64->num_classes)``, held in ``.sequential`` exactly as in the
    tutorial, so a ``state_dict`` saved from the tutorial's own class loads into it.

    Args:
        num_classes: Outputs of the last layer.
        activation: ``"none"`` reproduces the tutorial (which has no activation at all: apart from
            max-pooling the network is one linear map, so it cannot learn much). ``"relu"`` adds a
            ReLU after each convolution and after the first Linear layer.
        dropout: Dropout probability before the last Linear layer (0 disables it).

    Example:
        >>> import torch
        >>> from cifarkit.models import CifarCNN
        >>> CifarCNN()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, *, activation: Activation = "none", dropout: float = 0.0) -> None:
        super().__init__()
        check_choice("activation", activation, get_args(Activation))
        check_positive_int("num_classes", num_classes)
        if not 0.0 <= dropout < 1.0:
            msg = f"dropout must be in [0, 1), got {dropout!r}"
            raise InvalidOptionError(msg)
        relu = activation == "relu"
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in (32, 32, 64):
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=5, stride=1, padding=2))
            if relu:
                layers.append(nn.ReLU())
            layers.append(nn.MaxPool2d(kernel_size=2))
            in_channels = out_channels
        # (N, 64, 4, 4) -> (N, 1024)
        layers += [nn.Flatten(), nn.Linear(1024, 64)]
        if relu:
            layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(64, num_classes))
        self.sequential = nn.Sequential(*layers)
        self.num_classes = num_classes
        record: BuildRecord = {
            "builder": "build_cnn",
            "kwargs": {"num_classes": num_classes, "activation": activation, "dropout": dropout},
        }
        setattr(self, RECORD_ATTR, record)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch ``(N, 3, 32, 32)`` into logits ``(N, num_classes)``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            hint = (
                " (a single image: use x.unsqueeze(0))"
                if tuple(x.shape) == (3, 32, 32)
                else " (resize images to 32x32 and put channels first)"
            )
            msg = f"CifarCNN expects input of shape (N, 3, 32, 32), got {tuple(x.shape)}{hint}"
            raise ShapeError(msg)
        out: torch.Tensor = self.sequential(x)
        return out


def build_cnn(num_classes: int = 10, *, activation: Activation = "none", dropout: float = 0.0) -> CifarCNN:
    """Build the tutorial's CIFAR-10 CNN (145,578 parameters with the defaults).

    See :class:`CifarCNN` for the arguments. The default has **no activation functions**, exactly
    as the tutorial; pass ``activation="relu"`` for a network that actually learns non-linear
    features (it reaches far higher accuracy for the same training).

    Example:
        >>> from cifarkit import build_cnn
        >>> model = build_cnn()
        >>> sum(p.numel() for p in model.parameters())
        145578
        >>> model.sequential[0]
        Conv2d(3, 32, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))
    """
    return CifarCNN(num_classes, activation=activation, dropout=dropout)


def imagenet_cache_path(arch: str = "vgg16") -> Path:
    """The file torchvision's cache holds ``arch``'s ImageNet weights in (VGG16's by default).

    ``$TORCH_HOME/hub/checkpoints/<file>`` (``TORCH_HOME`` defaults to ``~/.cache/torch``); the
    file names are listed by :func:`cifarkit.backbones`.

    Example:
        >>> imagenet_cache_path().name, imagenet_cache_path("resnet18").name
        ('vgg16-397923af.pth', 'resnet18-f37072fd.pth')
    """
    return weights_path(arch)


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
    return read_state_dict(path)


def _vgg_arch(model: VGG) -> str | None:
    convs = sum(isinstance(m, nn.Conv2d) for m in model.features)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.features)
    name = _VGG_ARCHS.get(convs)
    return None if name is None else name + ("_bn" if has_bn else "")


def _check_weights(weights: object) -> None:
    if isinstance(weights, str) and weights != "imagenet" and not weights.strip():
        msg = "weights='' is not valid; pass None, 'imagenet' or a path to a state_dict file"
        raise InvalidOptionError(msg)


def _adapt_into(
    model: nn.Module,
    spec: Backbone,
    *,
    strategy: Strategy,
    num_classes: int,
    weights: Literal["imagenet"] | PathLike | None,
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
        apply_state_dict(model, read_state_dict(weights), strict=True, source=os.fspath(weights))
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
    weights: Literal["imagenet"] | PathLike | None = None,
    strategy: Strategy = "replace",
    freeze_features: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Build torchvision's ``arch`` as a ``num_classes``-way classifier, pretrained or not.

    The networks and their sizes are listed by :func:`cifarkit.backbones` (ResNet-18/50,
    MobileNetV3 small/large, EfficientNet-B0, ConvNeXt-Tiny, RegNetY-400MF, VGG16).
    :func:`adapt_vgg16` is the lesson's name for ``adapt("vgg16", ...)``.

    Args:
        arch: The network's torchvision name, e.g. ``"resnet18"``.
        num_classes: Number of output classes.
        weights: ``None`` (random init), ``"imagenet"`` (torchvision's default weights for that
            network, from its cache ``$TORCH_HOME/hub/checkpoints/``, downloaded when missing and
            online), or the path of a ``state_dict`` file in torchvision's layout (read with
            ``weights_only=True``). Weights load before the head changes. With weights, the
            model's preprocessing record holds their mean and std and their pretraining input size
            (224x224) as the recommended one.
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
        >>> import torch
        >>> model = adapt("resnet18", num_classes=5)
        >>> model.fc
        Linear(in_features=512, out_features=5, bias=True)
        >>> model.eval()(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 5])
        >>> get_build_record(model)["kwargs"]["arch"]
        'resnet18'
    """
    spec = find_backbone(arch)
    check_choice("strategy", strategy, get_args(Strategy))
    check_positive_int("num_classes", num_classes)
    _check_weights(weights)
    if spec.name == "vgg16":
        vgg: nn.Module = adapt_vgg16(strategy=strategy, num_classes=num_classes, weights=weights,
                                     freeze_features=freeze_features, progress=progress)  # fmt: skip
        return vgg
    model = build_backbone(spec.name)
    _adapt_into(model, spec, strategy=strategy, num_classes=num_classes, weights=weights,
                freeze_features=freeze_features, progress=progress)  # fmt: skip
    record: BuildRecord = {
        "builder": "adapt",
        "kwargs": {"arch": spec.name, "strategy": strategy, "num_classes": num_classes,
                   "freeze_features": freeze_features},
    }  # fmt: skip
    setattr(model, RECORD_ATTR, record)
    return model


def adapt_vgg16(
    model: VGG | None = None,
    *,
    strategy: Strategy = "replace",
    num_classes: int = 10,
    weights: Literal["imagenet"] | PathLike | None = None,
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
            file (read with ``weights_only=True``). Weights are loaded before the head is swapped,
            because torchvision's builder refuses ``num_classes != 1000`` with weights.
        freeze_features: Set ``requires_grad=False`` on ``model.features`` (train the head only).
        progress: Show a progress bar while downloading.

    Returns:
        The adapted model, whose output is ``(N, num_classes)`` for 32x32 and 224x224 inputs.

    Raises:
        InvalidOptionError: unknown ``strategy`` or ``weights`` value.
        AlreadyAdaptedError: the model's head was already changed.
        WeightsUnavailableError: ImageNet weights neither cached nor downloadable.
        StateDictMismatchError: the weights file is not a VGG16 ``state_dict``.

    Example:
        >>> import torch
        >>> model = adapt_vgg16(strategy="append")
        >>> model.classifier.add_linear
        Linear(in_features=1000, out_features=10, bias=True)
        >>> model.eval()(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    check_choice("strategy", strategy, get_args(Strategy))
    check_positive_int("num_classes", num_classes)
    _check_weights(weights)
    from torchvision.models import VGG, vgg16  # lazily: importing cifarkit stays fast

    if model is None:
        model = vgg16(weights=None)
    elif not isinstance(model, VGG):
        msg = f"adapt_vgg16 expects a torchvision VGG model, got {type(model).__name__}"
        raise InvalidOptionError(msg)
    _adapt_into(model, find_backbone("vgg16"), strategy=strategy, num_classes=num_classes, weights=weights,
                freeze_features=freeze_features, progress=progress)  # fmt: skip
    record: BuildRecord = {
        "builder": "adapt_vgg16",
        "kwargs": {
            "arch": _vgg_arch(model),
            "strategy": strategy,
            "num_classes": num_classes,
            "freeze_features": freeze_features,
        },
    }
    setattr(model, RECORD_ATTR, record)
    return model


def get_build_record(model: nn.Module) -> BuildRecord | None:
    """Return the build record of a cifarkit-built model, or ``None`` for any other model.

    ``DistributedDataParallel`` and ``torch.compile`` wrappers are looked through.

    Example:
        >>> get_build_record(build_cnn(activation="relu"))["kwargs"]["activation"]
        'relu'
    """
    record = getattr(unwrap_model(model), RECORD_ATTR, None)
    return cast("BuildRecord | None", record)


def head_of(model: nn.Module, head: str | None = None) -> tuple[str, int]:
    """The classifier block's name and the depth at which the other layers are grouped.

    ``head`` names it for any model; without it the model must come from :func:`cifarkit.adapt`
    or :func:`cifarkit.adapt_vgg16`, whose build record names the network.

    Raises:
        InvalidOptionError: no ``head`` and the model's network is not one cifarkit adapts.

    Example:
        >>> head_of(adapt("resnet18"))
        ('fc', 1)
    """
    if head is not None:
        return head, 1
    record = get_build_record(model)
    arch = None if record is None else record["kwargs"].get("arch")
    if record is not None and record["builder"] == "adapt_vgg16":
        arch = "vgg16"  # every VGG has its classifier block in .classifier
    spec = BACKBONES.get(str(arch))
    if spec is None:
        msg = (
            "fine_tune needs to know which layers are the head: build the model with "
            "cifarkit.adapt(...) (see cifarkit.backbones()), or pass head='name of the classifier "
            "module' (for example head='fc')"
        )
        raise InvalidOptionError(msg)
    return spec.head, spec.depth


def rebuild(record: BuildRecord | dict[str, object]) -> nn.Module:
    """Build a fresh (randomly initialised) model from a build record.

    The record is checked first (:func:`cifarkit.files.records.validate_build_record`): known builders
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
    arch = str(options.pop("arch", None) or "vgg16")
    import torchvision.models  # lazily, as in adapt_vgg16

    base = cast("VGG", getattr(torchvision.models, arch)(weights=None))
    adapted: nn.Module = adapt_vgg16(base, **options)  # type: ignore[arg-type]
    return adapted
