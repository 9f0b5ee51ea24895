"""A pre-flight check for the lesson's traps: one batch through the model (and a few steps on a
copy of it) before the run, each problem named with its fix.

=============================== ==============================================================
code                            what it means
=============================== ==============================================================
``no-nonlinearity``             two or more linear/conv layers and no activation anywhere:
                                apart from pooling the network is one linear map (the
                                tutorial's own CNN)
``inputs-not-scaled``           the batch holds integers, or floats far above 1 (0-255 pixels)
``inputs-not-normalized``       the model's preprocessing record asks for a normalization
                                (ImageNet's, for pretrained weights) that the data does not
                                apply
``normalization-differs``       the data is normalized with another mean and std than the
                                model's record (a pretrained network's weights') asks for
``input-too-small``             a network pretrained on large pictures (224 pixels) gets
                                pictures smaller than 64 (CIFAR's 32): little survives its
                                downsampling
``frozen-params-in-optimizer``  the optimizer holds parameters with ``requires_grad=False``
``optimizer-not-on-model``      the optimizer holds parameters that are not the model's (built
                                on another model, or before the model was rebuilt): its steps
                                change nothing
``labels-one-based``            labels run from 1 to C: the head's classes are 0 to C-1
``labels-out-of-range``         labels outside 0 to C-1 for the head's C outputs
``loss-explodes``               a few steps at this learning rate make the loss grow or
                                overflow
``amp-emulated``                ``amp`` on a CPU without native bf16: much slower than fp32
``model-in-eval-mode``          the model is in eval mode (dropout and batch norm behave as at
                                test)
``batch-larger-than-data``      the batch size exceeds the number of images
=============================== ==============================================================

Besides problems, the report carries notes: facts about a sound set-up worth knowing.
``probabilities-softened``: MixUp, CutMix and label smoothing train towards soft targets, so the
trained model's probabilities are no longer its confidence; calibrate it afterwards
(:func:`cifarkit.calibrate`). ``int8-without-vnni``: on a CPU without int8 dot-product
instructions (AVX-512 VNNI or AMX), an int8 program (``export(..., quantize="int8")``) is often
slower than the fp32 one; it is still 4x smaller.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cifarkit.device import (
    Amp,
    amp_dtype,
    autocast,
    cpu_has_int8_instructions,
    cpu_supports_bf16,
    move_batch,
    resolve_device,
    unwrap_model,
)
from cifarkit.display import format_table
from cifarkit.errors import EmptyDataError
from cifarkit.losses import CrossEntropyLoss, LossFn
from cifarkit.preprocess import IMAGENET_MEAN, Preprocess, preprocessing_of

__all__ = ["DoctorReport", "Finding", "doctor"]

_LINEAR = frozenset({"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "bilinear"})
_ACTIVATIONS = frozenset({
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "leaky_relu",
    "leaky_relu_", "elu", "elu_", "selu", "celu", "softplus", "hardswish", "hardtanh", "hardsigmoid", "mish",
    "prelu", "rrelu", "glu", "logsigmoid", "softsign", "tanhshrink", "threshold",
})  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One problem: a short kebab-case ``code`` (see the module's table), what was found, the fix."""

    code: str
    message: str
    fix: str


@dataclass
class DoctorReport:
    """What :func:`doctor` found; ``str()`` prints it, ``ok`` is true when it found no problem
    (``notes`` are facts about a sound set-up, not problems)."""

    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __str__(self) -> str:
        text = "no problems found"
        if not self.ok:
            rows = [(f.code, f.message, f.fix) for f in self.problems]
            text = f"{len(self.problems)} problem(s) found:\n" + format_table(rows, headers=("problem", "found", "fix"))
        if self.notes:
            rows = [(f.code, f.message, f.fix) for f in self.notes]
            text += "\nnotes:\n" + format_table(rows, headers=("note", "found", "what to do"))
        return text


class _CallLog(TorchFunctionMode):
    """Records the names of the torch functions a forward pass calls (F.relu as well as nn.ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.append(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


def doctor(
    model: nn.Module,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn | None = None,
    amp: Amp = False,
    device: str | torch.device = "cpu",
    steps: int = 5,
) -> DoctorReport:
    """Check a training set-up before the run: one batch of ``data`` through ``model``, and
    ``steps`` optimizer steps on a *copy* of the model and optimizer (the caller's are never
    touched). Findings are problems, not advice: a sound set-up gets none.

    Args:
        model: The classifier to train.
        data: The training loader (its first batch is used; a ``TensorLoader``'s labels and
            size are read in full).
        optimizer: The optimizer the run will use; without one the frozen-parameter and
            learning-rate checks are skipped.
        loss_fn: Default: cross-entropy.
        amp: The run's ``amp=`` setting.
        device: Where the batch runs (default ``"cpu"``).
        steps: Optimizer steps for the learning-rate check.

    Returns:
        A :class:`DoctorReport`.

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> data = synthetic_cifar10(64).loader(batch_size=32, seed=0)
        >>> report = doctor(build_cnn(activation="relu"), data)
        >>> report.ok
        True
        >>> print(report)  # and any notes about this machine
        no problems found...
        >>> [f.code for f in doctor(build_cnn(), data).problems]
        ['no-nonlinearity']
    """
    dev = resolve_device(device)
    inner = unwrap_model(model)
    batch = next(iter(data), None)
    if batch is None:
        msg = "doctor got data that yields no batches"
        raise EmptyDataError(msg)
    x, y = batch
    found: list[Finding] = []
    found += _check_inputs(x)
    found += _check_normalization(data, x, preprocessing_of(inner))
    found += _check_input_size(x, preprocessing_of(inner))
    probe = copy.deepcopy(inner).to(dev).train()
    x_in, y_in = move_batch(x.float() if not x.is_floating_point() else x, y, dev, torch.contiguous_format)
    log = _CallLog()
    with torch.no_grad(), log:
        out = probe(x_in)
    found += _check_nonlinearity(log.names)
    found += _check_labels(getattr(data, "labels", y), int(out.shape[1]))
    if not inner.training:
        found.append(
            Finding(
                "model-in-eval-mode",
                "the model is in eval mode (model.eval() was called)",
                "call model.train() before training (train_loop does it for you)",
            )
        )
    found += _check_batch_size(data)
    if amp and dev.type == "cpu" and amp_dtype(amp, dev) == torch.bfloat16 and not cpu_supports_bf16():
        found.append(
            Finding(
                "amp-emulated",
                f"amp={amp!r} on a CPU without native bf16 (no AVX-512 BF16/AMX)",
                "train without amp on this CPU: emulated bf16 is many times slower than fp32",
            )
        )
    if optimizer is not None:
        found += _check_frozen(inner, optimizer)
        found += _check_owner(inner, optimizer)
        if not any(f.code.startswith("labels-") or f.code == "optimizer-not-on-model" for f in found):
            found += _check_loss(inner, optimizer, x_in, y_in, loss_fn or CrossEntropyLoss(), amp, dev, steps)
    return DoctorReport(found, _notes(data, loss_fn) + _int8_note(dev))


def _int8_note(device: torch.device) -> list[Finding]:
    if device.type != "cpu" or cpu_has_int8_instructions():
        return []
    return _found(
        "int8-without-vnni",
        "this CPU has no int8 dot-product instructions (AVX-512 VNNI or AMX): an int8 program runs "
        "here often slower than fp32",
        "export fp32 for this machine; export(..., quantize='int8') still makes the file 4x smaller, and "
        "its report measures the speed against fp32",
    )


def _notes(data: Iterable[Any], loss_fn: LossFn | None) -> list[Finding]:
    softening = []
    mix = getattr(data, "mix", None)
    if mix is not None:
        softening.append(f"the loader mixes batches ({mix})")
    smoothing = getattr(loss_fn, "label_smoothing", 0.0)
    if smoothing:
        softening.append(f"the loss smooths the labels (label_smoothing={smoothing})")
    if not softening:
        return []
    return _found(
        "probabilities-softened",
        f"{' and '.join(softening)}: the model learns soft targets, so its probabilities will not be its confidence",
        "calibrate it on held-out pictures after training (cifarkit.calibrate / cifarkit calibrate)",
    )


def _found(code: str, message: str, fix: str) -> list[Finding]:
    return [Finding(code, message, fix)]


def _check_inputs(x: torch.Tensor) -> list[Finding]:
    if not x.is_floating_point():
        return _found(
            "inputs-not-scaled",
            f"the batch holds {x.dtype} pixels, not floats scaled to [0, 1]",
            "divide by 255 (x.float() / 255), or load with a TensorLoader, which does it",
        )
    top = float(x.detach().abs().max()) if x.numel() else 0.0
    if top > 10:
        return _found(
            "inputs-not-scaled",
            f"the batch's values reach {top:.0f}: 0-255 pixels as floats",
            "divide by 255 (and normalize with the dataset's mean and std if the model expects it)",
        )
    return []


def _check_normalization(data: Iterable[Any], x: torch.Tensor, record: Preprocess | None) -> list[Finding]:
    if record is None or record.get("mean") is None or not x.is_floating_point():
        return []
    expected = (record["mean"], record["std"])
    imagenet = " (ImageNet's, for pretrained weights)" if tuple(record["mean"]) == IMAGENET_MEAN else ""
    if hasattr(data, "normalize_values"):
        given = data.normalize_values
        if given is not None and (list(given[0]), list(given[1])) != (list(expected[0]), list(expected[1])):
            return _found(
                "normalization-differs",
                f"the data is normalized with mean {list(given[0])}, std {list(given[1])}; the model "
                f"expects mean {expected[0]}, std {expected[1]}{imagenet}",
                f"build the loader with normalize=({expected[0]}, {expected[1]}): the weights' own",
            )
        wrong = given is None
    else:  # a plain loader: pixels still in [0, 1] mean no normalization was applied
        given = "none (values in [0, 1])"
        wrong = x.numel() > 0 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    if wrong:
        return _found(
            "inputs-not-normalized",
            f"the model expects mean {expected[0]}, std {expected[1]}{imagenet}; the data gives {given}",
            f"build the loader with normalize=({expected[0]}, {expected[1]})",
        )
    return []


#: A record asking for pictures this large marks a network pretrained on large pictures ...
_LARGE_INPUT = 128
#: ... and pictures smaller than this lose almost everything in its downsampling (32x, to 1x1).
_SMALL_INPUT = 64


def _check_input_size(x: torch.Tensor, record: Preprocess | None) -> list[Finding]:
    size = None if record is None else record.get("input_size")
    if not size or x.ndim != 4 or min(size) < _LARGE_INPUT or min(x.shape[-2:]) >= _SMALL_INPUT:
        return []
    height, width = size
    return _found(
        "input-too-small",
        f"the network was pretrained on {height}x{width} pictures and gets {x.shape[-2]}x{x.shape[-1]} "
        "ones: after its 32-fold downsampling almost nothing is left of them",
        f"feed it pictures of {height}x{width} (load_image_folder(..., size={height}); cifarkit train "
        f"--image-size {height}), or at least {_SMALL_INPUT} pixels a side; upsample small ones with "
        f"torch.nn.functional.interpolate(x, size={height}, mode='bilinear')",
    )


def _check_nonlinearity(names: list[str]) -> list[Finding]:
    layers = sum(n in _LINEAR for n in names)
    if layers >= 2 and not any(n in _ACTIVATIONS for n in names):
        return _found(
            "no-nonlinearity",
            f"{layers} linear/conv layers and no activation function between them",
            "add a non-linearity after each layer but the last: build_cnn(activation='relu'), "
            "or nn.ReLU() in your model",
        )
    return []


def _check_labels(labels: torch.Tensor, classes: int) -> list[Finding]:
    if labels.numel() == 0:
        return []
    lo, hi = int(labels.min()), int(labels.max())
    if lo >= 1 and hi == classes:
        return _found(
            "labels-one-based",
            f"labels run from {lo} to {hi}; the head's {classes} classes are 0 to {classes - 1}",
            "subtract 1 from the labels (labels - 1)",
        )
    if lo < 0 or hi >= classes:
        return _found(
            "labels-out-of-range",
            f"labels run from {lo} to {hi} but the head has {classes} outputs",
            f"build the model with num_classes={hi + 1}, or fix the labels",
        )
    return []


def _check_batch_size(data: Iterable[Any]) -> list[Finding]:
    batch_size, images = getattr(data, "batch_size", None), getattr(data, "images", None)
    dataset = getattr(data, "dataset", None)
    count = len(images) if images is not None else len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
    if isinstance(batch_size, int) and count is not None and batch_size > count:
        return _found(
            "batch-larger-than-data",
            f"batch size {batch_size} for {count} images: one short batch per epoch",
            f"use a batch size of at most {count} (64 is the lesson's)",
        )
    return []


def _check_frozen(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Finding]:
    names = {id(p): n for n, p in model.named_parameters()}
    frozen = [names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"] if not p.requires_grad]
    if frozen:
        return _found(
            "frozen-params-in-optimizer",
            f"the optimizer holds {len(frozen)} frozen parameters "
            f"({', '.join(frozen[:3])}{', ...' if len(frozen) > 3 else ''})",
            "build it on the trainable ones: [p for p in model.parameters() if p.requires_grad]",
        )
    return []


def _check_owner(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Finding]:
    own = {id(p) for p in model.parameters()}
    foreign = sum(id(p) not in own for g in optimizer.param_groups for p in g["params"])
    if foreign:
        return _found(
            "optimizer-not-on-model",
            f"{foreign} of the optimizer's parameters are not this model's: its steps would not train it",
            "build the optimizer on this model: torch.optim.SGD(model.parameters(), ...)",
        )
    return []


def _copy_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, probe: nn.Module) -> torch.optim.Optimizer:
    mapping = {id(p): q for p, q in zip(model.parameters(), probe.parameters())}
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [mapping[id(p)] for p in g["params"]]}
        for g in optimizer.param_groups
    ]
    return type(optimizer)(groups, **optimizer.defaults)


def _check_loss(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
    amp: Amp, device: torch.device, steps: int,
) -> list[Finding]:  # fmt: skip
    probe = copy.deepcopy(model).to(device).train()
    opt = _copy_optimizer(optimizer, model, probe)
    dtype = amp_dtype(amp, device)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = loss_fn(probe(x), y)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
        loss.backward()
        opt.step()
    lr = optimizer.param_groups[0].get("lr")
    if not math.isfinite(losses[-1]) or losses[-1] > 2 * losses[0] + 1:
        return _found(
            "loss-explodes",
            f"at lr={lr} the loss went {losses[0]:.3g} -> {losses[-1]:.3g} in {len(losses)} steps on one batch",
            "lower the learning rate (try 10x smaller), or set max_grad_norm",
        )
    return []
