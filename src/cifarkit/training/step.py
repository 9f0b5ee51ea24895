"""The lesson's step: :func:`train_one_epoch` runs ``zero_grad -> forward -> loss -> backward ->
step`` for every batch, top to bottom, and nothing hidden.

What a real step needs besides the five lines sits in one small object, :class:`OptimizerStep`,
around ``loss.backward()`` and ``optimizer.step()``: gradient accumulation, fp16 loss scaling,
gradient clipping and per-batch learning-rate schedules. The figures are counted by the
evaluation's :class:`~cifarkit.evaluation.metrics.Meter` (detached, on the device, read once per
epoch); a callback with ``on_step_end`` hears of every optimizer step
(:class:`~cifarkit.training.callbacks.StepEnd`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from cifarkit.data.loader import Batch, match_memory_format
from cifarkit.device import Amp, amp_dtype, autocast, grad_scaler, move_batch, place_model, resolve_device, unwrap_model
from cifarkit.display import Progress, ProgressReport
from cifarkit.distributed import DistContext
from cifarkit.errors import EmptyDataError, NonFiniteLossError, check_positive_int
from cifarkit.evaluation.metrics import Meter
from cifarkit.history import EpochStats
from cifarkit.losses import LossFn, cross_entropy
from cifarkit.training.callbacks import Callbacks, StepEnd
from cifarkit.training.schedules import Scheduler

__all__ = ["OptimizerStep", "clip_or_measure", "train_one_epoch"]


def train_one_epoch(
    model: nn.Module,
    data: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: LossFn | None = None,
    device: str | torch.device = "auto",
    amp: Amp = False,
    max_grad_norm: float | None = None,
    epoch: int = 0,
    accumulate: int = 1,
    scheduler: Scheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool | None = None,
    progress: Progress = False,
    callbacks: Sequence[object] | Callbacks = (),
    dist: DistContext | None = None,
) -> EpochStats:
    """Train ``model`` for one pass over ``data``: the tutorial's loop, and nothing hidden.

    For every batch: ``optimizer.zero_grad()``, forward, loss, ``loss.backward()``,
    ``optimizer.step()``. The loss is checked *before* ``backward()`` (no step with a NaN/inf
    loss reaches the weights), the global gradient norm is measured (clipped to
    ``max_grad_norm`` when given), and the figures are summed detached on the device and read
    once, at the end. The model is left in training mode.

    Args:
        model: Any classifier producing ``(N, C)`` logits (a DDP or ``torch.compile`` wrapper too).
        data: A :class:`~cifarkit.data.loader.TensorLoader`, a ``DataLoader`` or any iterable of
            ``(x, y)`` batches.
        optimizer: Built on ``model``'s parameters.
        loss_fn: Default: cifarkit's guarded :func:`~cifarkit.losses.cross_entropy`.
        device: ``"auto"`` (CUDA, else MPS, else CPU) or a device; the model moves there once.
        amp: ``True`` (the device's best), ``"bf16"`` or ``"fp16"`` autocast for forward and loss;
            fp16 steps through a ``torch.amp.GradScaler``.
        max_grad_norm: Clip the global gradient norm to this value before each step.
        epoch: The epoch's index from 0 (for messages and the progress bar).
        accumulate: Sum the gradients of this many batches (each loss divided by it) before one
            optimizer step: the step of one batch ``accumulate`` times larger, in less memory.
        scheduler: Stepped after every optimizer step (a per-batch schedule such as
            :func:`~cifarkit.training.schedules.one_cycle`;
            :func:`~cifarkit.training.loop.train_loop` steps per-epoch ones itself).
        scaler: The fp16 gradient scaler to use (and keep across epochs); default: a new one.
        channels_last: Memory format; default: channels-last for models with ``Conv2d``.
        progress: ``True`` shows a bar where someone watches (a terminal, or a widget in Jupyter);
            ``"bar"`` also into a file; ``False`` (the default here) none.
        callbacks: Objects whose ``on_step_end(step)`` hook hears of every optimizer step (see
            :mod:`cifarkit.training.callbacks`; the other hooks are ``train_loop``'s), or the
            :class:`~cifarkit.training.callbacks.Callbacks` of a run.
        dist: Under ``torchrun``: the :class:`~cifarkit.distributed.DistContext` whose ranks'
            figures are summed (``data`` must already be this rank's shard;
            :func:`~cifarkit.training.loop.train_loop` does both).

    Returns:
        The epoch's :class:`~cifarkit.history.EpochStats` (no evaluation figures).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (before that step changed anything).
        EmptyDataError: ``data`` yielded no batches.

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> model = build_cnn(activation="relu")
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        >>> stats = train_one_epoch(model, synthetic_cifar10(128).loader(seed=0), optimizer, device="cpu")
        >>> stats.images, stats.epoch
        (128, 1)
    """
    dev = resolve_device(device)
    fmt = place_model(unwrap_model(model), dev, channels_last)
    dtype = amp_dtype(amp, dev)
    loss_fn = loss_fn or cross_entropy  # the guarded function: a module's call costs more per step
    params = [p for p in model.parameters() if p.requires_grad]
    step = OptimizerStep(optimizer, params, accumulate=accumulate, max_grad_norm=max_grad_norm,
                         scaler=scaler or grad_scaler(dev, dtype), scheduler=scheduler)  # fmt: skip
    meter = Meter(dev)
    run = callbacks if isinstance(callbacks, Callbacks) else Callbacks(callbacks)
    model.train()
    batches = ProgressReport(progress).bar(match_memory_format(data, dev, fmt), desc=f"epoch {epoch + 1}")
    for batch, (x, y) in enumerate(batches):
        x, y = move_batch(x, y, dev, fmt)  # images (B, 3, H, W) float, labels (B,) int64
        if step.pending == 0:
            optimizer.zero_grad(set_to_none=True)  # 1. forget the previous step's gradients
        with autocast(dev, dtype):
            out = model(x)  # 2. forward: logits (B, C)
            loss = loss_fn(out, y)  # 3. loss: one number for the batch
        value = _finite(loss, epoch, batch)  # before backward: a NaN never reaches the weights
        step.backward(loss)  # 4. backward: every parameter's .grad (÷ accumulate, fp16-scaled)
        if step.ready:
            meter.add_grad_norm(step.step())  # 5. step: SGD does w -= lr * w.grad
            if run.hears_steps:  # a callback's on_step_end: what the step knows, the loss not yet read
                run.on_step_end(StepEnd(epoch, batch, step.optimizer_steps, optimizer, loss.detach(), x, out, y))
        meter.add(value, out, y)  # the loss as read; the rest detached, counted once per epoch
    if step.pending:  # a last group of fewer than `accumulate` batches
        meter.add_grad_norm(step.step())
        if run.hears_steps:
            run.on_step_end(StepEnd(epoch, batch, step.optimizer_steps, optimizer, loss.detach(), x, out, y))
    return _epoch_stats(meter, epoch, optimizer, dist or DistContext.single(dev))


def _finite(loss: torch.Tensor, epoch: int, batch: int) -> float:
    """The loss as a number, refused when NaN or infinite. One host read per batch: the price of
    refusing a NaN update (on the CPU it is free; on CUDA it waits for the forward pass)."""
    value = loss.item()
    if not math.isfinite(value):
        msg = (
            f"loss is {value} at epoch {epoch + 1}, batch {batch + 1}: training diverged. "
            "Lower the learning rate, set max_grad_norm, or check the data for NaN/inf. "
            "The weights were not updated with it."
        )
        raise NonFiniteLossError(msg)
    return value


def _epoch_stats(meter: Meter, epoch: int, optimizer: torch.optim.Optimizer, ctx: DistContext) -> EpochStats:
    if meter.batches == 0:
        msg = (
            f"training data yielded no batches in epoch {epoch + 1} (a one-shot iterator or "
            "generator is used up after one epoch: pass a list, a DataLoader or a TensorLoader)"
        )
        raise EmptyDataError(msg)
    t = meter.totals(ctx)
    return EpochStats(
        epoch=epoch + 1,
        loss_sum=t.loss_sum,
        loss_mean=t.loss_mean,
        train_accuracy=t.accuracy,
        images=t.images,
        seconds=t.seconds,
        images_per_second=t.images / t.seconds if t.seconds > 0 else math.inf,
        lr=[float(g["lr"]) for g in optimizer.param_groups],
        grad_norm=t.grad_norm,
        first_step_seconds=t.first_step_seconds,
    )


def clip_or_measure(
    params: Sequence[torch.Tensor], max_norm: float | None, *, rows: bool | None = None
) -> torch.Tensor:
    """The gradients' L2 norms (before clipping): with ``max_norm``, the global norm (0-d) after
    clipping to it; without, a vector of partial norms ``(P,)`` whose vector norm is the global
    one (one per tensor, and one per row of :data:`NORM_ROW` elements for tensors of at least
    :data:`NORM_ROWS_FROM`). Measuring costs a few ops per step (one fused ``_foreach_norm``,
    one row-wise norm per large tensor, one ``cat``); the global norm is taken once per epoch, by
    :class:`~cifarkit.evaluation.metrics.Meter`. ``rows`` says whether any tensor is that large
    (default: looked up; :class:`OptimizerStep` knows it once for all its steps).

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([3.0, 4.0])
        >>> clip_or_measure([w], None).tolist()
        [5.0]
        >>> float(clip_or_measure([w], 1.0)), [round(g, 4) for g in w.grad.tolist()]
        (5.0, [0.6, 0.8])
    """
    norms = _clip_or_measure(params, max_norm, rows=rows)
    return norms if isinstance(norms, torch.Tensor) else torch.stack(norms)


def _clip_or_measure(
    params: Sequence[torch.Tensor], max_norm: float | None, *, rows: bool | None = None
) -> torch.Tensor | list[torch.Tensor]:
    """:func:`clip_or_measure`, less the ``stack`` of small models' per-tensor norms: a list of
    at most :data:`UNSTACKED_UP_TO` goes to :meth:`Meter.add_grad_norm
    <cifarkit.evaluation.metrics.Meter.add_grad_norm>` as it is, which stacks 256 steps' at once
    (a ``stack`` per step cost ~8 us of an ~800 us step). More are stacked per step: 256 steps of
    ResNet-50's 161 would keep 41,216 small tensors (22 MB) until the fold, for a step of seconds."""
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(1)
    if rows is None:
        rows = _any_large(grads)
    try:
        if rows:
            return _partial_norms(grads)
        norms = torch._foreach_norm(grads)
        return list(norms) if len(norms) <= UNSTACKED_UP_TO else torch.stack(norms)
    except RuntimeError:  # gradients on several devices (or dtypes the fused kernel refuses)
        return torch.nn.utils.get_total_norm(grads).reshape(1)


#: A step's per-tensor norms are handed over unstacked up to this many gradients.
UNSTACKED_UP_TO = 32
#: Tensors of at least this many elements are measured by rows (:func:`clip_or_measure`).
NORM_ROWS_FROM = 1 << 20
#: The elements of one row.
NORM_ROW = 1 << 14


def _partial_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """Why rows: torch's norm of one large fp32 tensor runs on about one core and sums in float
    along a long chain: over VGG16's 102.8M-element first linear layer it is 1.1% off a float64
    sum, and the 134.3M gradients take 38 ms on a 2-core AVX2 EPYC. One norm per row is spread
    over the threads and sums short chains: 27 ms, and within 1e-6 of float64."""
    whole, parts = [], []
    for g in grads:
        flat = _flat(g) if g.numel() >= NORM_ROWS_FROM else None
        if flat is None:
            whole.append(g)
            continue
        rows = flat.numel() // NORM_ROW
        parts.append(torch.linalg.vector_norm(flat[: rows * NORM_ROW].view(rows, NORM_ROW), dim=1))
        if flat.numel() > rows * NORM_ROW:
            whole.append(flat[rows * NORM_ROW :])
    if whole:
        parts.append(torch.stack(torch._foreach_norm(whole)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _any_large(tensors: Iterable[torch.Tensor]) -> bool:
    return any(t.numel() >= NORM_ROWS_FROM for t in tensors)


def _flat(t: torch.Tensor) -> torch.Tensor | None:
    """``t``'s elements as one vector without a copy (their order does not matter to a norm):
    any layout that is a permutation of a contiguous one (channels-last, a transpose); None for
    others (a slice with gaps)."""
    if t.is_contiguous():
        return t.view(-1)
    strides = t.stride()
    dense = t.permute(sorted(range(t.ndim), key=lambda d: -strides[d]))
    return dense.view(-1) if dense.is_contiguous() else None


class OptimizerStep:
    """Backward passes and optimizer steps for one epoch.

    ``backward(loss)`` adds ``loss / accumulate`` to the gradients (through the gradient scaler
    for fp16); once ``accumulate`` batches are in, ``step()`` unscales, measures and clips the
    gradient norm, steps the optimizer (the scaler skips a step whose gradients overflowed), and
    steps a per-batch scheduler. A last, partial group is stepped too, its gradients rescaled to
    the mean over the batches it has.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> step = OptimizerStep(opt, list(model.parameters()), accumulate=2)
        >>> step.backward(model(torch.ones(1, 2)).sum()); step.ready
        False
        >>> step.backward(model(torch.ones(1, 2)).sum()); step.ready
        True
        >>> norm = step.step(); step.pending, step.optimizer_steps
        (0, 1)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        *,
        accumulate: int = 1,
        max_grad_norm: float | None = None,
        scaler: torch.amp.GradScaler | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        check_positive_int("accumulate", accumulate, unit="batches per optimizer step")
        self.optimizer = optimizer
        self.params = list(params)
        self.accumulate = accumulate
        self.max_grad_norm = max_grad_norm
        self.scaler = scaler
        self.scheduler = scheduler
        self.pending = 0  # batches whose gradients are summed but not yet stepped
        self.optimizer_steps = 0
        self._rows = _any_large(self.params)  # the gradients' sizes are the parameters'

    @property
    def ready(self) -> bool:
        """True once ``accumulate`` batches are in: time to step."""
        return self.pending >= self.accumulate

    def backward(self, loss: torch.Tensor) -> None:
        """Add this batch's gradients: of ``loss / accumulate``, scaled up for fp16."""
        part = loss / self.accumulate if self.accumulate > 1 else loss
        (self.scaler.scale(part) if self.scaler is not None else part).backward()
        self.pending += 1

    def step(self) -> torch.Tensor | list[torch.Tensor]:
        """Step the optimizer with the gradients summed so far; return their norm (before
        clipping) as :meth:`Meter.add_grad_norm <cifarkit.evaluation.metrics.Meter.add_grad_norm>`
        takes it: the total (0-d) when clipping, else partial norms whose vector norm is the total
        (a vector, or one 0-d tensor per gradient)."""
        if 0 < self.pending < self.accumulate:  # the last, partial group: the mean over its batches
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(self.accumulate / self.pending)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip and measure the true gradients
        norm = _clip_or_measure(self.params, self.max_grad_norm, rows=self._rows)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the gradients overflowed fp16
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            with warnings.catch_warnings():  # a scaler's skipped first step makes torch warn: expected
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                self.scheduler.step()
        self.pending = 0
        self.optimizer_steps += 1
        return norm
