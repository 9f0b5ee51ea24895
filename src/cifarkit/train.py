"""Training: the tutorial's step over one epoch (:func:`train_one_epoch`), and the run around it
(:func:`train_loop`: epochs, evaluation, checkpoints, logging, stopping, distributed training).

Read :func:`train_one_epoch` first: it is the lesson, ``zero_grad -> forward -> loss -> backward
-> step`` for every batch, top to bottom. Everything a real run needs besides that lives in
:func:`train_loop`, in the callbacks it calls (:mod:`cifarkit.callbacks`) and in the
collaborators it hands over (a :class:`~cifarkit.distributed.DistContext`).

May import: cifarkit.callbacks, cifarkit.device, cifarkit.display, cifarkit.distributed,
cifarkit.errors, cifarkit.evaluation, cifarkit.files, cifarkit.files.checkpoints, cifarkit.history,
cifarkit.loader, cifarkit.losses, cifarkit.preprocess, cifarkit.schedules, cifarkit.steps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarkit.callbacks import Callbacks, TensorBoard
from cifarkit.device import (
    Amp,
    amp_dtype,
    autocast,
    cpu_supports_bf16,
    grad_scaler,
    move_batch,
    place_model,
    resolve_device,
    unwrap_model,
)
from cifarkit.display import Progress, ProgressReport
from cifarkit.distributed import DistContext, context, shard_data, sync_buffers, translate_error, wrap_model
from cifarkit.errors import EmptyDataError, InvalidOptionError, NonFiniteLossError, check_positive_int
from cifarkit.evaluation import evaluate
from cifarkit.files import PathLike
from cifarkit.files.checkpoints import load_checkpoint, save_checkpoint
from cifarkit.history import EVAL_FIGURES, TRAIN_FIGURES, EpochStats, History
from cifarkit.loader import Batch, check_not_empty, match_memory_format, set_epoch
from cifarkit.losses import CrossEntropyLoss, LossFn
from cifarkit.preprocess import set_preprocessing
from cifarkit.schedules import Scheduler, check_scheduler, interval_of
from cifarkit.steps import Meter, OptimizerStep, check_accumulate

__all__ = ["train_loop", "train_one_epoch"]


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
    logger: TensorBoard | None = None,
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
        data: A :class:`~cifarkit.loader.TensorLoader`, a ``DataLoader`` or any iterable of
            ``(x, y)`` batches.
        optimizer: Built on ``model``'s parameters.
        loss_fn: Default: cifarkit's guarded :class:`~cifarkit.losses.CrossEntropyLoss`.
        device: ``"auto"`` (CUDA, else MPS, else CPU) or a device; the model moves there once.
        amp: ``True`` (the device's best), ``"bf16"`` or ``"fp16"`` autocast for forward and loss;
            fp16 steps through a ``torch.amp.GradScaler``.
        max_grad_norm: Clip the global gradient norm to this value before each step.
        epoch: The epoch's index from 0 (for messages and the progress bar).
        accumulate: Sum the gradients of this many batches (each loss divided by it) before one
            optimizer step: the step of one batch ``accumulate`` times larger, in less memory.
        scheduler: Stepped after every optimizer step (a per-batch schedule such as
            :func:`~cifarkit.schedules.one_cycle`; :func:`train_loop` steps per-epoch ones itself).
        scaler: The fp16 gradient scaler to use (and keep across epochs); default: a new one.
        channels_last: Memory format; default: channels-last for models with ``Conv2d``.
        progress: ``True`` shows a bar where someone watches (a terminal, or a widget in Jupyter);
            ``"bar"`` also into a file; ``False`` (the default here) none.
        logger: A :class:`~cifarkit.callbacks.TensorBoard`: the first batch and the learning rate
            of every step go to it.
        dist: Under ``torchrun``: the :class:`~cifarkit.distributed.DistContext` whose ranks' figures
            are summed (``data`` must already be this rank's shard; :func:`train_loop` does both).

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
    loss_fn = loss_fn or CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    step = OptimizerStep(optimizer, params, accumulate=accumulate, max_grad_norm=max_grad_norm,
                         scaler=scaler or grad_scaler(dev, dtype), scheduler=scheduler)  # fmt: skip
    meter = Meter(dev)
    model.train()
    batches = ProgressReport(progress).bar(match_memory_format(data, dev, fmt), desc=f"epoch {epoch + 1}")
    for x, y in batches:
        x, y = move_batch(x, y, dev, fmt)  # images (B, 3, H, W) float, labels (B,) int64
        if logger is not None and meter.batches == 0:
            logger.log_first_batch(unwrap_model(model), x)
        if step.pending == 0:
            optimizer.zero_grad(set_to_none=True)  # 1. forget the previous step's gradients
        with autocast(dev, dtype):
            out = model(x)  # 2. forward: logits (B, C)
            loss = loss_fn(out, y)  # 3. loss: one number for the batch
        _check_finite(loss, epoch, meter.batches)  # before backward: a NaN never reaches the weights
        step.backward(loss)  # 4. backward: every parameter's .grad (÷ accumulate, fp16-scaled)
        if step.ready:
            meter.add_grad_norm(step.step())  # 5. step: SGD does w -= lr * w.grad
            if logger is not None:
                logger.log_lr(optimizer)
        meter.add(loss, out, y)  # detached, on the device: no graph kept, no sync
    if step.pending:  # a last group of fewer than `accumulate` batches
        meter.add_grad_norm(step.step())
    return _epoch_stats(meter, epoch, optimizer, dist or DistContext.single(dev))


def _check_finite(loss: torch.Tensor, epoch: int, batch: int) -> None:
    # One host read per batch: the price of refusing a NaN update (on CPU it is free).
    if not bool(torch.isfinite(loss)):
        msg = (
            f"loss is {float(loss.detach())} at epoch {epoch + 1}, batch {batch + 1}: training diverged. "
            "Lower the learning rate, set max_grad_norm, or check the data for NaN/inf. "
            "The weights were not updated with it."
        )
        raise NonFiniteLossError(msg)


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


def train_loop(
    model: nn.Module,
    data: Iterable[Batch],
    *,
    epochs: int = 1,
    loss_fn: LossFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
    device: str | torch.device = "auto",
    eval_data: Iterable[Batch] | None = None,
    amp: Amp = False,
    accumulate: int = 1,
    max_grad_norm: float | None = None,
    scheduler: Scheduler | None = None,
    checkpoint: PathLike | None = None,
    progress: Progress = True,
    callbacks: Sequence[object] = (),
    compile: bool = False,
) -> History:
    """Train ``model`` on ``data`` for ``epochs`` epochs and return the per-epoch :class:`History`.

    Each epoch is one :func:`train_one_epoch`; around it this function resumes from and writes
    ``checkpoint``, evaluates ``eval_data``, steps per-epoch schedules, calls the ``callbacks``
    (which may stop the run) and, under ``torchrun``, wraps the model in DDP and shards the data.
    Training policies are callback objects (see :mod:`cifarkit.callbacks`):
    :class:`~cifarkit.callbacks.EarlyStopping` keeps the best weights and stops early,
    :class:`~cifarkit.callbacks.TensorBoard` logs the run. Every option, the callbacks' included,
    is checked before the first epoch. The model is switched to channels-last when it has
    convolutions (same results up to float rounding).

    The model's preprocessing record (input size, normalization, class names: see
    :mod:`cifarkit.preprocess`) is taken from the loader (``TensorLoader.preprocessing()``), so
    the model's files say how to feed it.

    Args:
        model: Any ``nn.Module`` classifier producing ``(N, C)`` logits.
        data: A :class:`~cifarkit.loader.TensorLoader`, a ``DataLoader`` or any iterable of
            ``(x, y)`` batches. Loaders with ``set_epoch`` are told the epoch.
        epochs: Total number of epochs (with ``checkpoint``, including those already done).
        loss_fn: Default: cifarkit's guarded :class:`~cifarkit.losses.CrossEntropyLoss`.
        optimizer: Default: ``torch.optim.SGD(trainable parameters, lr=lr)`` as in the tutorial.
        lr: Learning rate of the default optimizer (0.01 when not given); an error with ``optimizer``.
        device: ``"auto"`` (CUDA, else MPS, else CPU) or a device; model and batches move once.
        eval_data: Evaluated after every epoch (``eval_loss``, ``eval_accuracy``).
        amp: ``True``: the device's best mixed precision (bf16 where native; fp16 with a gradient
            scaler on CUDA GPUs without bf16); ``"bf16"`` or ``"fp16"`` by name. The scaler's
            state is checkpointed.
        accumulate: Batches whose gradients are summed (losses divided by it) before one step.
        max_grad_norm: Clip the global gradient norm to this value.
        scheduler: A ``torch.optim.lr_scheduler`` scheduler built on ``optimizer`` (see
            :func:`~cifarkit.schedules.one_cycle`, :func:`~cifarkit.schedules.cosine`). It is
            stepped per batch for ``OneCycleLR``, ``CyclicLR``, cifarkit's builders and those
            marked with :func:`~cifarkit.schedules.step_every`, per epoch otherwise;
            ``ReduceLROnPlateau`` steps on ``eval_loss`` (``loss_mean`` without ``eval_data``).
        checkpoint: A file saved atomically after every epoch and resumed from if it exists: the
            model, optimizer, scheduler, scaler, epoch, history, every callback's state, every
            random state and the loader's seed and epoch, so a resumed run matches an
            uninterrupted one bit for bit on CPU. A run that a callback stopped stays stopped.
        progress: ``True`` (or ``"auto"``): a live bar per epoch where someone watches (a
            terminal; a widget in Jupyter) and one summary line per epoch on stdout that stays.
            ``"lines"``: the lines alone. ``"bar"``: the bar even into a file. ``False``: nothing.
            Only rank 0 shows anything under DDP.
        callbacks: Objects with any of the hooks of :mod:`cifarkit.callbacks`, or functions
            ``f(epoch, history)`` called after each epoch; one returning ``True`` stops training.
            A callback may freeze or unfreeze parameters between epochs: under DDP the model is
            wrapped again, so the parameters that train are the ones kept in sync.
        compile: Wrap the model in ``torch.compile`` (the first step's time, compile included,
            is recorded as ``History.compile_seconds``).

    Raises:
        InvalidOptionError: ``lr`` together with ``optimizer``; a scheduler built on another
            optimizer; a callback watching a figure that is not recorded; ``accumulate < 1``;
            an unknown ``amp``; ``epochs`` not a whole number.
        EmptyDataError: ``data`` is empty or yields no batches.
        NonFiniteLossError: the loss became NaN/inf; it is checked before ``backward()``, so
            no step with a non-finite loss changes the weights (an fp16 scaler's deliberately
            skipped steps are not that: their loss is finite). On CUDA this check reads the
            loss on the host every step (one sync per step), the price of that guarantee.
        KeyboardInterrupt: re-raised after restoring the model's train/eval mode; the
            checkpoint of the last completed epoch stays valid.

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10
        >>> data = synthetic_cifar10(128)
        >>> history = train_loop(build_cnn(), data.loader(seed=0), epochs=2, device="cpu", progress=False)
        >>> len(history), history.epochs[0].images
        (2, 128)
    """
    check_positive_int("epochs", epochs, minimum=0)
    if lr is not None and optimizer is not None:
        msg = f"lr={lr!r} would be ignored: the optimizer given has its own learning rate. Pass lr= or optimizer="
        raise InvalidOptionError(msg)
    dev = resolve_device(device)
    dtype = amp_dtype(amp, dev)  # checks amp= before anything runs
    _warn_if_amp_is_emulated(dev, dtype)
    check_not_empty(data, "training data")
    check_accumulate(accumulate)
    run = Callbacks(callbacks)
    ctx = context(None, dev)
    report = ProgressReport(progress, enabled=ctx.is_main)
    inner = unwrap_model(model)
    _attach_preprocessing(inner, data)
    fmt = place_model(inner, ctx.device, None)
    loss_fn = loss_fn or CrossEntropyLoss()
    if optimizer is None:
        optimizer = torch.optim.SGD([p for p in inner.parameters() if p.requires_grad], lr=0.01 if lr is None else lr)
    if scheduler is not None:
        check_scheduler(scheduler, optimizer)
    per_batch = scheduler if scheduler is not None and interval_of(scheduler) == "batch" else None
    scaler = grad_scaler(ctx.device, dtype)
    start, history = 0, History()
    if checkpoint is not None and Path(checkpoint).exists():
        start, history = _resume(checkpoint, inner, optimizer, scheduler, scaler, run, data)
    history.figures = TRAIN_FIGURES + (EVAL_FIGURES if eval_data is not None else ())
    tensorboard = next(iter(run.of_type(TensorBoard)), None)
    train_data = shard_data(match_memory_format(data, ctx.device, fmt), ctx, pad=True)
    net: nn.Module = inner
    wrapped_for: list[bool] | None = None  # which parameters trained when `net` was wrapped
    was_training = inner.training
    if history.stop_reason not in (None, "completed"):  # a resumed run that a callback had stopped
        start = epochs
    history.stop_reason = None if start < epochs else history.stop_reason
    try:
        run.set_model(inner)
        run.on_train_start(history)  # callbacks refuse what they cannot honour, before any epoch
        for epoch in range(start, epochs):
            trainable = [p.requires_grad for p in inner.parameters()]
            if trainable != wrapped_for:  # the first epoch, or a callback froze or unfroze layers:
                net, wrapped_for = _wrap(inner, ctx, compile), trainable  # DDP syncs what trains now
            set_epoch(train_data, epoch)
            stats = train_one_epoch(
                net, train_data, optimizer, loss_fn=loss_fn, device=ctx.device, amp=amp, epoch=epoch,
                max_grad_norm=max_grad_norm, accumulate=accumulate, scheduler=per_batch, scaler=scaler,
                channels_last=fmt == torch.channels_last, progress=progress if ctx.is_main else False,
                logger=tensorboard, dist=ctx,
            )  # fmt: skip
            sync_buffers(inner, ctx)  # every rank evaluates and saves rank 0's batch-norm statistics
            if compile and history.compile_seconds is None:
                history.compile_seconds = stats.first_step_seconds
            if eval_data is not None:
                result = evaluate(inner, eval_data, loss_fn=loss_fn, device=ctx.device, amp=amp,
                                  channels_last=fmt == torch.channels_last, distributed=ctx.active)  # fmt: skip
                stats.eval_loss, stats.eval_accuracy = result.loss, result.accuracy
            history.epochs.append(stats)
            if scheduler is not None and per_batch is None:
                _step_per_epoch(scheduler, stats)
            report.line(stats.summary(epochs))
            if epoch + 1 == epochs:
                history.stop_reason = "completed"  # unless a callback says otherwise
            if run.on_epoch_end(epoch, history) and history.stop_reason in (None, "completed"):
                history.stop_reason = "stopped by a callback"
            if checkpoint is not None and ctx.is_main:
                save_checkpoint(checkpoint, model=inner, optimizer=optimizer, epoch=epoch + 1, history=history,
                                scheduler=scheduler, scaler=scaler, callbacks=run.state_dict(),
                                loader=_loader_state(data))  # fmt: skip
            if history.stop_reason is not None:
                break
        history.stop_reason = history.stop_reason or "completed"
        run.on_train_end(history)
    except Exception as exc:
        translated = translate_error(exc, ctx)
        if translated is exc:
            raise
        raise translated from exc
    finally:
        inner.train(was_training)
        for board in run.of_type(TensorBoard):  # closed even when training failed
            board.on_train_end(history)
    return history


def _wrap(model: nn.Module, ctx: DistContext, compile: bool) -> nn.Module:
    net = wrap_model(model, ctx) if ctx.active else model
    return torch.compile(net) if compile else net  # type: ignore[return-value]


def _attach_preprocessing(model: nn.Module, data: Iterable[Batch]) -> None:
    """Record what the model is trained on: the loader's record (input size, normalization, classes)."""
    from_loader = getattr(data, "preprocessing", None)
    if callable(from_loader):
        set_preprocessing(model, from_loader())


def _step_per_epoch(scheduler: Scheduler, stats: EpochStats) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(stats.eval_loss if stats.eval_loss is not None else stats.loss_mean)
    else:
        scheduler.step()


def _loader_state(data: Iterable[Batch]) -> dict[str, Any] | None:
    state = getattr(data, "state_dict", None)
    return state() if callable(state) else None


def _resume(
    checkpoint: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler | None,
    scaler: torch.amp.GradScaler | None,
    callbacks: Callbacks,
    data: Iterable[Batch],
) -> tuple[int, History]:
    """Restore a run from ``checkpoint``: everything :func:`save_checkpoint` wrote."""
    resumed = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    callbacks.load_state_dict(resumed.callbacks or {})
    restore = getattr(data, "load_state_dict", None)
    if resumed.loader is not None and callable(restore):
        restore(resumed.loader)  # the seed of a loader built without seed= is the checkpoint's
    return resumed.epoch, resumed.history or History()


def _warn_if_amp_is_emulated(device: torch.device, dtype: torch.dtype | None) -> None:
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_supports_bf16():
        warnings.warn(
            "amp=True on a CPU without native bf16 (no AVX-512 BF16/AMX): bf16 is emulated and "
            "usually slower than fp32 here",
            stacklevel=3,
        )
