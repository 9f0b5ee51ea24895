"""The tutorial's CIFAR-10 network (:func:`build_cnn`, 145,578 parameters), layer for layer."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from cifarkit.errors import InvalidOptionError, ShapeError, check_choice, check_positive_int
from cifarkit.models.records import set_build_record

__all__ = ["Activation", "CifarCNN", "build_cnn"]

Activation = Literal["none", "relu"]


class CifarCNN(nn.Module):
    """The tutorial's CIFAR-10 network, layer for layer: the class :func:`build_cnn` returns (for
    ``isinstance`` and type hints; build it with :func:`build_cnn`).

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
        >>> isinstance(build_cnn(), CifarCNN), build_cnn()(torch.zeros(2, 3, 32, 32)).shape
        (True, torch.Size([2, 10]))
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
        set_build_record(
            self, {"builder": "build_cnn", "kwargs": {"num_classes": num_classes, "activation": activation,
                                                      "dropout": dropout}}
        )  # fmt: skip

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
