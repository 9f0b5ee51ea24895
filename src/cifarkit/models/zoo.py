"""The pretrained torchvision networks cifarkit adapts: their names, sizes, weight files, and the
surgery :func:`cifarkit.adapt` does on them (swap or append the head, freeze the features, group
the layers from the earliest to the head for discriminative learning rates).

Each network is one :class:`Backbone` row of :data:`BACKBONES`, written out here so that listing
them or finding a weights file imports no torchvision; a test keeps every row equal to
torchvision's own weights metadata (file, parameter count, input size, mean and std).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cifarkit.display import format_table, html_table
from cifarkit.errors import InvalidOptionError

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneTable",
    "backbones",
    "build_backbone",
    "feature_norms",
    "find_backbone",
    "freeze_features",
    "has_imagenet_head",
    "layer_groups",
    "replace_head",
    "weights_path",
]

#: Where torchvision publishes its weights; a backbone's file name is appended.
WEIGHTS_URL = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class Backbone:
    """One torchvision classifier cifarkit knows.

    Attributes:
        name: torchvision's builder name (``torchvision.models.<name>``).
        params: Parameters with torchvision's 1000-way ImageNet head.
        file: The file name of torchvision's default ImageNet weights (in ``TORCH_HOME``'s cache).
        head: The classifier block: what ``freeze_features`` leaves trainable and what
            :func:`cifarkit.fine_tune` trains alone first.
        last: The dotted path of the 1000-way ``nn.Linear`` that ``strategy="replace"`` swaps.
        depth: The depth of the parameter names at which the feature layers are grouped, earliest
            first, for discriminative learning rates (``layer1`` at 1, ``features.3`` at 2).
        cam_layer: The layer whose output Grad-CAM explains (the last block of the features,
            where the pictures are smallest and the features most abstract).
        input_size: The side of the pictures the weights were trained on.
    """

    name: str
    params: int
    file: str
    head: str
    last: str
    depth: int
    cam_layer: str
    input_size: int = 224

    @property
    def url(self) -> str:
        """Where torchvision downloads the default weights from."""
        return WEIGHTS_URL + self.file


#: Every network :func:`cifarkit.adapt` takes, by name.
BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("resnet18", 11_689_512, "resnet18-f37072fd.pth", "fc", "fc", 1, "layer4"),
        Backbone("resnet50", 25_557_032, "resnet50-11ad3fa6.pth", "fc", "fc", 1, "layer4"),
        Backbone("mobilenet_v3_small", 2_542_856, "mobilenet_v3_small-047dcff4.pth", "classifier",
                 "classifier.3", 2, "features.12"),
        Backbone("mobilenet_v3_large", 5_483_032, "mobilenet_v3_large-5c1a4163.pth", "classifier",
                 "classifier.3", 2, "features.16"),
        Backbone("efficientnet_b0", 5_288_548, "efficientnet_b0_rwightman-7f5810bc.pth", "classifier",
                 "classifier.1", 2, "features.8"),
        Backbone("convnext_tiny", 28_589_128, "convnext_tiny-983f1562.pth", "classifier", "classifier.2", 2,
                 "features.7"),
        Backbone("regnet_y_400mf", 4_344_144, "regnet_y_400mf-e6988f5f.pth", "fc", "fc", 2, "trunk_output"),
        Backbone("vgg16", 138_357_544, "vgg16-397923af.pth", "classifier", "classifier.6", 2, "features.29"),
    )
}  # fmt: skip


def find_backbone(arch: str) -> Backbone:
    """The :class:`Backbone` called ``arch``.

    Raises:
        InvalidOptionError: ``arch`` is not listed (the message lists the names).

    Example:
        >>> find_backbone("resnet18").last
        'fc'
    """
    spec = BACKBONES.get(arch) if isinstance(arch, str) else None
    if spec is None:
        msg = f"unknown network {arch!r}; cifarkit adapts {', '.join(BACKBONES)} (see cifarkit.backbones())"
        raise InvalidOptionError(msg)
    return spec


@dataclass(frozen=True)
class BackboneTable:
    """What :func:`backbones` returns: the rows, printed as a table (an HTML table in Jupyter)."""

    rows: tuple[Backbone, ...]

    @property
    def names(self) -> list[str]:
        """The networks' names, in the table's order."""
        return [b.name for b in self.rows]

    def __iter__(self) -> Iterator[Backbone]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _cells(self) -> list[tuple[str, ...]]:
        return [(b.name, f"{b.params / 1e6:.1f}M", f"{b.input_size}x{b.input_size}", b.file) for b in self.rows]

    def __str__(self) -> str:
        return format_table(self._cells(), headers=_HEADERS, right=(1,))

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return html_table(self._cells(), headers=_HEADERS, right=(1,))


_HEADERS = ("network", "params", "pretrained at", "ImageNet weights file")


def backbones() -> BackboneTable:
    """The pretrained networks :func:`cifarkit.adapt` takes, smallest first, with their sizes.

    Example:
        >>> table = backbones()
        >>> table.names[:2]
        ['mobilenet_v3_small', 'regnet_y_400mf']
        >>> print(table)  # doctest: +ELLIPSIS
        network             params  pretrained at  ImageNet weights file
        ...
        resnet18             11.7M  224x224        resnet18-f37072fd.pth
        ...
    """
    return BackboneTable(tuple(sorted(BACKBONES.values(), key=lambda b: b.params)))


def weights_path(arch: str) -> Path:
    """Where torchvision's cache keeps ``arch``'s ImageNet weights:
    ``$TORCH_HOME/hub/checkpoints/<file>`` (``TORCH_HOME`` defaults to ``~/.cache/torch``).

    Example:
        >>> weights_path("resnet18").name
        'resnet18-f37072fd.pth'
    """
    return Path(str(torch.hub.get_dir())) / "checkpoints" / find_backbone(arch).file


def build_backbone(arch: str) -> nn.Module:
    """torchvision's ``arch`` with random weights and its 1000-way ImageNet head.

    Example:
        >>> build_backbone("resnet18").fc
        Linear(in_features=512, out_features=1000, bias=True)
    """
    spec = find_backbone(arch)
    import torchvision.models  # lazily: importing cifarkit does not import torchvision

    if spec.name.startswith("regnet") and torch.empty(0).device.type == "meta":
        # RegNet's builder computes its widths with tensors, which meta tensors cannot give back:
        # build it for real (4 M parameters) and move it to the meta device asked for.
        with torch.device("cpu"):
            return torchvision.models.get_model(spec.name, weights=None).to("meta")  # type: ignore[no-any-return]
    model: nn.Module = torchvision.models.get_model(spec.name, weights=None)
    return model


def _parent_and_name(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def has_imagenet_head(model: nn.Module, spec: Backbone) -> bool:
    """True while ``model`` still ends in the 1000-way ``nn.Linear`` torchvision built it with
    (that layer is there, and no other ``nn.Linear`` comes after it)."""
    try:
        last = model.get_submodule(spec.last)
    except AttributeError:
        return False
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return isinstance(last, nn.Linear) and last.out_features == 1000 and linears[-1] is last


def replace_head(model: nn.Module, spec: Backbone, strategy: str, num_classes: int) -> None:
    """``"replace"``: swap the last layer for ``Linear(in_features, num_classes)``; ``"append"``:
    keep it and add ``Linear(1000, num_classes)`` after it (in the classifier ``Sequential`` as
    ``add_linear``, or as ``nn.Sequential(old, new)`` where the head is a bare ``Linear``)."""
    last = model.get_submodule(spec.last)
    assert isinstance(last, nn.Linear)
    parent, name = _parent_and_name(model, spec.last)
    if strategy == "replace":
        setattr(parent, name, nn.Linear(last.in_features, num_classes))
    elif isinstance(parent, nn.Sequential) and parent is not model:
        parent.add_module("add_linear", nn.Linear(1000, num_classes))
    else:
        setattr(parent, name, nn.Sequential(last, nn.Linear(1000, num_classes)))


def freeze_features(model: nn.Module, head: str, *, frozen: bool = True) -> None:
    """Set ``requires_grad`` to ``not frozen`` on every parameter outside the ``head`` block."""
    for name, p in model.named_parameters():
        if not _in(name, head):
            p.requires_grad_(not frozen)


def feature_norms(model: nn.Module, head: str) -> list[nn.Module]:
    """The batch-norm layers outside the ``head`` block (their running statistics are features too).

    Example:
        >>> import torchvision
        >>> len(feature_norms(torchvision.models.resnet18(), "fc"))
        20
    """
    norms = nn.modules.batchnorm._BatchNorm
    return [m for name, m in model.named_modules() if isinstance(m, norms) and not _in(name, head)]


def _in(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_groups(model: nn.Module, head: str, depth: int) -> list[tuple[str, list[nn.Parameter]]]:
    """The model's parameters in groups, earliest layer first and the ``head`` block last.

    Feature parameters are grouped by the first ``depth`` parts of their names (``layer1`` of a
    ResNet at depth 1, ``features.3`` of a MobileNet at depth 2), in the model's own order.

    Raises:
        InvalidOptionError: ``head`` names no parameters of ``model``, or nothing is left besides it.

    Example:
        >>> import torchvision
        >>> [name for name, _ in layer_groups(torchvision.models.resnet18(), "fc", 1)]
        ['conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4', 'fc']
    """
    groups: dict[str, list[nn.Parameter]] = {}
    tail: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if _in(name, head):
            tail.append(p)
        else:
            groups.setdefault(".".join(name.split(".")[:depth]), []).append(p)
    if not tail or not groups:
        msg = (
            f"head={head!r} names {'no' if not tail else 'every'} parameter of this "
            f"{type(model).__name__}: name the classifier block (for example 'fc' or 'classifier')"
        )
        raise InvalidOptionError(msg)
    return [*groups.items(), (head, tail)]
