"""Guarded L1, MSE and cross-entropy losses.

On valid floating-point inputs every function returns exactly what ``torch.nn.functional``
returns (it *is* the same call); the guards only act on the inputs plain PyTorch rejects with a
confusing message or, worse, silently accepts:

* integer/bool tensors in L1/MSE (``torch.tensor([1, 2, 3])``) are cast to float (or rejected);
* input and target of different shapes in L1/MSE raise instead of broadcasting silently;
* cross-entropy checks for ``(N, C)`` logits and ``(N,)`` integer class indices in ``[0, C)``.

The ``nn.Module`` classes subclass ``torch.nn.L1Loss``/``MSELoss``/``CrossEntropyLoss``, so
``isinstance`` checks and ``reduction=`` keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

from cifarkit.errors import ClassIndexError, DtypeError, ShapeError, check_choice

__all__ = ["CrossEntropyLoss", "L1Loss", "LossFn", "MSELoss", "cross_entropy", "l1_loss", "mse_loss"]

#: What a loss function is to cifarkit: ``(outputs, targets) -> scalar tensor`` (the one alias).
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

Reduction = Literal["mean", "sum", "none"]
OnInt = Literal["cast", "raise"]


def _as_tensor(value: object, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (int, float, bool, list, tuple)):
        return torch.as_tensor(value)
    msg = f"{name} must be a tensor, got {type(value).__name__}"
    raise DtypeError(msg)


def _float_pair(fn: str, input: torch.Tensor, target: torch.Tensor, on_int: OnInt) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast integer/bool operands to a floating dtype, per the ``on_int`` policy."""
    in_float, tg_float = input.is_floating_point(), target.is_floating_point()
    if in_float and tg_float:
        return input, target
    if input.is_complex() or target.is_complex():
        return input, target  # torch handles complex itself
    if on_int == "raise":
        msg = (
            f"{fn} got input of dtype {input.dtype} and target of dtype {target.dtype}; "
            f"{fn} needs floating point. Pass on_int='cast' or call .float() on both"
        )
        raise DtypeError(msg)
    # The other side's floating dtype when there is one, else float32.
    dtype = input.dtype if in_float else target.dtype if tg_float else torch.float32
    return input.to(dtype), target.to(dtype)


def _regression(
    name: str,
    fn: Callable[..., torch.Tensor],
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: Reduction,
    on_int: OnInt,
    broadcast: bool,
) -> torch.Tensor:
    check_choice("reduction", reduction, get_args(Reduction))
    check_choice("on_int", on_int, get_args(OnInt))
    input, target = _as_tensor(input, "input"), _as_tensor(target, "target")
    if input.shape != target.shape and not broadcast:
        msg = (
            f"{name} got input of shape {tuple(input.shape)} and target of shape "
            f"{tuple(target.shape)}; they must match (torch would broadcast them silently, "
            "usually a bug). Reshape one of them, or pass broadcast=True if it is intended"
        )
        raise ShapeError(msg)
    input, target = _float_pair(name, input, target, on_int)
    if broadcast and input.shape != target.shape:
        try:
            torch.broadcast_shapes(input.shape, target.shape)
        except RuntimeError as exc:
            msg = f"{name}: shapes {tuple(input.shape)} and {tuple(target.shape)} do not broadcast"
            raise ShapeError(msg) from exc
        input, target = torch.broadcast_tensors(input, target)  # no torch size warning
    return fn(input, target, reduction=reduction)


def l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: Reduction = "mean",
    on_int: OnInt = "cast",
    broadcast: bool = False,
) -> torch.Tensor:
    """Mean (or sum) absolute error, as ``F.l1_loss``, with dtype and shape guards.

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        on_int: ``"cast"`` integer/bool tensors to float32 (or to the other operand's floating
            dtype), or ``"raise"`` :class:`~cifarkit.errors.DtypeError`.
        broadcast: Allow different shapes that broadcast (off by default: it is usually a bug).

    Raises:
        DtypeError: integer input with ``on_int="raise"``.
        ShapeError: shapes differ and ``broadcast`` is false.

    Example:
        >>> import torch
        >>> l1_loss(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]))
        tensor(0.6667)
        >>> l1_loss(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]), reduction="sum")
        tensor(2.)
    """
    return _regression("L1 loss", F.l1_loss, input, target, reduction, on_int, broadcast)


def mse_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: Reduction = "mean",
    on_int: OnInt = "cast",
    broadcast: bool = False,
) -> torch.Tensor:
    """Mean (or sum) squared error, as ``F.mse_loss``, with the guards of :func:`l1_loss`.

    Example:
        >>> import torch
        >>> mse_loss(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]))
        tensor(1.3333)
    """
    return _regression("MSE loss", F.mse_loss, input, target, reduction, on_int, broadcast)


def _check_class_target(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target's shape against the logits', and its dtype made one torch takes (no reads)."""
    n = input.shape[0]
    expected = (n, *input.shape[2:])
    if tuple(target.shape) != expected:
        if target.ndim == input.ndim and tuple(target.shape) == tuple(input.shape):
            msg = (
                f"cross-entropy got integer target of shape {tuple(target.shape)}, the shape of "
                "the logits: one-hot labels? Pass class indices (target.argmax(1)) of shape "
                f"{expected}, or float probabilities of shape {tuple(input.shape)}"
            )
        elif target.ndim == 2 and target.shape[1] == 1 and input.ndim == 2:
            msg = (
                f"cross-entropy got target of shape {tuple(target.shape)}; class indices must "
                f"have shape {expected}: use target.squeeze(1)"
            )
        else:
            msg = (
                f"cross-entropy got logits of shape {tuple(input.shape)} and target of shape "
                f"{tuple(target.shape)}; for (N, C) logits the target must be (N,) class "
                f"indices, here {expected}"
            )
        raise ShapeError(msg)
    if target.dtype not in (torch.int64, torch.uint8):
        target = target.long()  # torch accepts only int64/uint8 indices
    return target


def _class_index_error(input: torch.Tensor, target: torch.Tensor, ignore_index: int) -> ClassIndexError:
    """What is wrong with class indices that torch's kernel found out of range."""
    c = input.shape[1]
    valid = target[target != ignore_index]
    low, high = (int(v) for v in torch.aminmax(valid)) if valid.numel() else (ignore_index, ignore_index)
    msg = (
        f"cross-entropy got class indices in [{low}, {high}] but the logits have C={c} classes, so "
        f"indices must be in [0, {c - 1}]: is num_classes of the model right, or are labels 1-based?"
    )
    return ClassIndexError(msg)


def _check_probabilities(target: torch.Tensor) -> None:
    """Probability targets (MixUp, CutMix, soft labels): every row non-negative, summing to 1.
    Checked on the CPU only, as the class indices are (a read of the values)."""
    if target.device.type != "cpu" or not target.numel():
        return
    low, worst = torch.stack([target.min(), (target.sum(1) - 1).abs().max()]).tolist()
    if low < 0 or worst > 1e-3:
        msg = (
            f"cross-entropy got float targets that are not class probabilities (each row must be >= 0 "
            f"and sum to 1; the smallest value is {low:.3g}, a row's sum is off by {worst:.3g}): pass "
            "class indices (int64), or normalize the rows (target / target.sum(1, keepdim=True))"
        )
        raise ShapeError(msg)


_REDUCTIONS = get_args(Reduction)


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor | int,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of logits ``(N, C)`` against class indices ``(N,)``, with shape guards.

    A single sample ``(C,)`` with a scalar target is treated as a batch of one (the tutorial
    reshapes it by hand). Float targets with the logits' shape are class probabilities, as in
    torch (what MixUp and CutMix give): each row non-negative and summing to 1, else an error.
    ``weight``, ``ignore_index``, ``reduction`` and ``label_smoothing`` pass through.

    Raises:
        ShapeError: logits are not ``(N, C, ...)`` or the target's shape does not fit them.
        DtypeError: float class indices, or non-floating logits.
        ClassIndexError: a class index outside ``[0, C)`` (checked for CPU tensors; a ``ValueError``).

    Example:
        >>> import torch
        >>> x = torch.tensor([0.1, 0.2, 0.3])
        >>> cross_entropy(x, 1)
        tensor(1.1019)
        >>> round(float(-x[1] + torch.log(torch.exp(x).sum())), 4)
        1.1019
    """
    if reduction not in _REDUCTIONS:  # the usual case in one look: this runs every step
        check_choice("reduction", reduction, _REDUCTIONS)
    input = _as_tensor(input, "input")
    target = _as_tensor(target, "target")
    if not input.is_floating_point():
        msg = (
            f"cross-entropy got logits of dtype {input.dtype}; logits must be floating point: "
            "call .float() on the model output"
        )
        raise DtypeError(msg)
    if input.ndim == 0:
        msg = "cross-entropy got a scalar as logits; expected (N, C) or a single sample (C,)"
        raise ShapeError(msg)
    if input.ndim == 1:
        if target.ndim == 0 and not target.is_floating_point():
            input, target = input.unsqueeze(0), target.reshape(1)  # one sample -> batch of one
        elif not (target.is_floating_point() and target.shape == input.shape):
            msg = (
                f"cross-entropy got logits of shape {tuple(input.shape)} and target of shape "
                f"{tuple(target.shape)}; a single sample needs a scalar class index. For a batch "
                "pass logits of shape (N, C) and targets of shape (N,)"
            )
            raise ShapeError(msg)
    if target.is_floating_point():
        if target.shape != input.shape:
            msg = (
                f"cross-entropy: class indices must be integers; got {target.dtype} target of "
                f"shape {tuple(target.shape)} — use target.long(), or pass probabilities of "
                f"shape {tuple(input.shape)}"
            )
            raise DtypeError(msg)
        _check_probabilities(target)
    elif target.dtype == torch.bool or target.is_complex():
        msg = f"cross-entropy: class indices must be integers; got {target.dtype} — use target.long()"
        raise DtypeError(msg)
    elif input.ndim >= 2:
        target = _check_class_target(input, target)
    try:
        return F.cross_entropy(
            input,
            target,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
    except IndexError as exc:
        # torch's CPU kernel checks every index ("Target 10 is out of bounds."): the range check
        # costs nothing until it fails. On CUDA a device-side assert answers instead.
        if target.is_floating_point() or input.ndim < 2:
            raise
        raise _class_index_error(input, target, ignore_index) from exc


class _GuardedRegressionLoss(_Loss):
    """Shared ``__init__``/``forward`` of :class:`L1Loss` and :class:`MSELoss`."""

    _guarded: Callable[..., torch.Tensor]

    def __init__(self, reduction: Reduction = "mean", *, on_int: OnInt = "cast", broadcast: bool = False) -> None:
        check_choice("reduction", reduction, get_args(Reduction))
        check_choice("on_int", on_int, get_args(OnInt))
        super().__init__(reduction=reduction)
        self.on_int: OnInt = on_int
        self.broadcast = broadcast

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        guarded = type(self)._guarded
        return guarded(
            input, target, reduction=cast("Reduction", self.reduction), on_int=self.on_int, broadcast=self.broadcast
        )


class L1Loss(_GuardedRegressionLoss, nn.L1Loss):
    """``torch.nn.L1Loss`` with the guards of :func:`l1_loss`.

    Example:
        >>> import torch
        >>> L1Loss(reduction="sum")(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]))
        tensor(2.)
    """

    _guarded = l1_loss


class MSELoss(_GuardedRegressionLoss, nn.MSELoss):
    """``torch.nn.MSELoss`` with the guards of :func:`mse_loss`.

    Example:
        >>> import torch
        >>> MSELoss()(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]))
        tensor(1.3333)
    """

    _guarded = mse_loss


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` with the guards of :func:`cross_entropy`.

    Example:
        >>> import torch
        >>> CrossEntropyLoss()(torch.tensor([0.1, 0.2, 0.3]), torch.tensor(1))
        tensor(1.1019)
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        check_choice("reduction", reduction, get_args(Reduction))
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=cast("Reduction", self.reduction),
            label_smoothing=self.label_smoothing,
        )
