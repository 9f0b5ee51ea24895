"""Training: the tutorial's step over one epoch (:func:`train_one_epoch`), and the run around it
(:func:`train_loop`: epochs, evaluation, checkpoints, logging, stopping, distributed training).

Read :func:`train_one_epoch` first: it is the lesson, ``zero_grad -> forward -> loss -> backward
-> step`` for every batch, top to bottom. Everything a real run needs besides that lives in
:func:`train_loop` or in the collaborators it hands over (a :class:`~cifarkit.monitor.RunLogger`,
a :class:`~cifarkit.distributed.DistContext`).

May import: cifarkit.errors, cifarkit.device, cifarkit.wrappers, cifarkit.losses, cifarkit.loader,
cifarkit.history, cifarkit.checkpoints, cifarkit.monitor, cifarkit.distributed, cifarkit.progress,
cifarkit.meters, cifarkit.schedules, cifarkit.steps, cifarkit.stopping, cifarkit.evaluation,
cifarkit.preprocess, and
(re-exported for older imports) cifarkit.prediction.

Names that lived here before 0.2 (``History``, ``EpochStats``, ``evaluate``, ``EvalResult``,
``predict``, ``Prediction``, ``resolve_device``, ``cpu_supports_bf16``, ``retain_cpu_memory``)
remain importable from ``cifarkit.train``; their homes are the modules named in the API reference.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarkit.checkpoints import load_checkpoint, save_checkpoint
from cifarkit.device import (
    Amp,
    amp_dtype,
    autocast,
    cpu_supports_bf16,
    grad_scaler,
    move_batch,
    place_model,
    resolve_device,
    retain_cpu_memory,
)
from cifarkit.distributed import DistContext, context, shard_data, translate_error, wrap_model
from cifarkit.errors import EmptyDataError, NonFiniteLossError, check_positive_int
from cifarkit.evaluation import EvalResult as EvalResult
from cifarkit.evaluation import evaluate
from cifarkit.history import EpochStats, History
from cifarkit.loader import Batch, check_not_empty, match_memory_format, set_epoch
from cifarkit.losses import CrossEntropyLoss, LossFn
from cifarkit.meters import Meter
from cifarkit.monitor import RunLogger
from cifarkit.prediction import Prediction as Prediction
from cifarkit.prediction import predict as predict
from cifarkit.preprocess import Preprocess, preprocessing_of, set_preprocessing
from cifarkit.progress import Progress, ProgressReport
from cifarkit.schedules import Interval, Scheduler, check_scheduler, interval_of
from cifarkit.steps import OptimizerStep, check_accumulate
from cifarkit.stopping import BestWeights, Mode
from cifarkit.wrappers import unwrap_model

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
    logger: RunLogger | None = None,
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
        logger: A :class:`~cifarkit.monitor.RunLogger`: the first batch and the learning rate of
            every step go to TensorBoard.
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
        if logger is not None and meter.steps == 0:
            logger.log_first_batch(unwrap_model(model), x)
        if step.pending == 0:
            optimizer.zero_grad(set_to_none=True)  # 1. forget the previous step's gradients
        with autocast(dev, dtype):
            out = model(x)  # 2. forward: logits (B, C)
            loss = loss_fn(out, y)  # 3. loss: one number for the batch
        _check_finite(loss, epoch, meter.steps)  # before backward: a NaN never reaches the weights
        step.backward(loss)  # 4. backward: every parameter's .grad (÷ accumulate, fp16-scaled)
        if step.ready:
            meter.add_grad_norm(step.step())  # 5. step: SGD does w -= lr * w.grad
            if logger is not None:
                logger.log_lr(optimizer)
        meter.add(loss, out, y)  # detached, on the device: no graph kept, no sync
    if step.pending:  # a last group of fewer than `accumulate` batches
        meter.add_grad_norm(step.step())
    return _epoch_stats(meter, epoch, optimizer, dist or DistContext.single(dev))


def _check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    # One host read per step: the price of refusing a NaN update (on CPU it is free).
    if not bool(torch.isfinite(loss)):
        msg = (
            f"loss is {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}: training diverged. "
            "Lower the learning rate, set max_grad_norm, or check the data for NaN/inf. "
            "The weights were not updated with it."
        )
        raise NonFiniteLossError(msg)


def _epoch_stats(meter: Meter, epoch: int, optimizer: torch.optim.Optimizer, ctx: DistContext) -> EpochStats:
    if meter.steps == 0:
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
    lr: float = 0.01,
    device: str | torch.device = "auto",
    eval_data: Iterable[Batch] | None = None,
    max_grad_norm: float | None = None,
    amp: Amp = False,
    progress: Progress = True,
    on_epoch_end: Callable[[int, History], bool | None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    distributed: bool | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    retain_memory: bool = False,
    scheduler: Scheduler | None = None,
    scheduler_interval: Interval = "auto",
    monitor: str | None = None,
    mode: Mode | None = None,
    patience: int | None = None,
    restore_best: bool = True,
    best_checkpoint: str | os.PathLike[str] | None = None,
    accumulate: int = 1,
    classes: list[str] | None = None,
    preprocess: Preprocess | None = None,
) -> History:
    """Train ``model`` on ``data`` for ``epochs`` epochs and return the per-epoch :class:`History`.

    Each epoch is one :func:`train_one_epoch`; around it this function resumes from and writes
    ``checkpoint``, evaluates ``eval_data``, steps per-epoch schedules, keeps the best weights,
    stops early, logs to ``log_dir``, calls ``on_epoch_end`` (which may stop the run) and, under
    ``torchrun``, wraps the model in DDP and shards the data. Every option is checked before the
    first epoch.

    Args:
        model: Any ``nn.Module`` classifier producing ``(N, C)`` logits.
        data: A :class:`~cifarkit.loader.TensorLoader`, a ``DataLoader`` or any iterable of
            ``(x, y)`` batches. Loaders with ``set_epoch`` are told the epoch.
        epochs: Total number of epochs (with ``checkpoint``, including those already done).
        loss_fn: Default: cifarkit's guarded :class:`~cifarkit.losses.CrossEntropyLoss`.
        optimizer: Default: ``torch.optim.SGD(model.parameters(), lr=lr)`` as in the tutorial.
        lr: Learning rate of the default optimizer.
        device: ``"auto"`` (CUDA, else MPS, else CPU) or a device; model and batches move once.
        eval_data: Evaluated after every epoch (``eval_loss``, ``eval_accuracy``).
        max_grad_norm: Clip the global gradient norm to this value.
        amp: ``True``: the device's best mixed precision (bf16 where native; fp16 with a gradient
            scaler on CUDA GPUs without bf16); ``"bf16"`` or ``"fp16"`` by name (fp16 runs on a CPU
            too: slowly, but correctly). The scaler's state is checkpointed.
        progress: ``True`` (or ``"auto"``): a live bar per epoch where someone watches (a
            terminal; a widget in Jupyter) and, whatever the medium, one summary line per epoch
            on stdout that stays (``epoch 3/5  loss sum ...  train acc ...  eval acc ...  img/s``;
            into a file or pipe, only the lines). ``"lines"``: the lines alone. ``"bar"``: the
            bar even into a file. ``False``: nothing. Only rank 0 shows anything under DDP.
        on_epoch_end: ``f(epoch, history)`` after each epoch; returning ``True`` stops training.
        checkpoint: A file saved atomically after every epoch and resumed from if it exists: the
            model, optimizer, scheduler, scaler, epoch, history, best weights and counter, every
            random state and the loader's seed and epoch, so a resumed run matches an
            uninterrupted one bit for bit on CPU.
        compile: Wrap the model in ``torch.compile`` (the first step's time, compile included,
            is recorded as ``History.compile_seconds``).
        channels_last: Use the channels-last memory format; default: for models with Conv2d.
        distributed: Force (``True``) or forbid (``False``) DDP; default: detect ``torchrun``.
        log_dir: Write TensorBoard scalars, an image grid, the graph and ``history.json`` there
            (needs ``pip install 'cifarkit[tensorboard]'``).
        retain_memory: On CPU under Linux, call :func:`~cifarkit.device.retain_cpu_memory` so
            activation buffers are reused instead of page-faulted in again every step. It changes
            glibc's settings for the whole process, so it is off unless asked for (the
            ``cifarkit`` command turns it on).
        scheduler: A ``torch.optim.lr_scheduler`` scheduler built on ``optimizer`` (see
            :func:`~cifarkit.schedules.one_cycle` and :func:`~cifarkit.schedules.cosine`).
            ``ReduceLROnPlateau`` is stepped each epoch on ``monitor`` (default: ``eval_loss``
            with ``eval_data``, else ``loss_mean``).
        scheduler_interval: ``"batch"`` (after every optimizer step), ``"epoch"``, or ``"auto"``:
            per batch for ``OneCycleLR``, ``CyclicLR`` and cifarkit's builders, per epoch otherwise.
        monitor: A recorded figure (``"eval_loss"``, ``"eval_accuracy"``, ``"loss_mean"``,
            ``"loss_sum"``, ``"train_accuracy"``) to keep the best weights of. Nothing changes
            without it.
        mode: ``"max"`` or ``"min"``; default: ``"max"`` for accuracies, ``"min"`` otherwise.
        patience: Stop once ``monitor`` has not improved (strictly) for this many epochs in a row.
        restore_best: With ``monitor``, the model holds the best epoch's weights when this
            returns, whether or not training stopped early.
        best_checkpoint: A model file (``cifarkit.load``-able) rewritten each time ``monitor``
            improves.
        accumulate: Batches whose gradients are summed (losses divided by it) before one step.
        classes: Class names, kept in the model's preprocessing record (and so in its files).
        preprocess: The preprocessing record to attach to the model (see
            :mod:`cifarkit.preprocess`); default: the loader's (``TensorLoader.preprocessing()``:
            input size and ``normalize=`` as given), so the model's files say how to feed it.

    Raises:
        InvalidOptionError: a scheduler built on another optimizer, ``monitor`` naming a figure
            that is not recorded, ``patience < 1``, ``accumulate < 1``, an unknown ``amp``.
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
    dev = resolve_device(device)
    dtype = amp_dtype(amp, dev)  # checks amp= before anything runs
    _warn_if_amp_is_emulated(dev, dtype)
    check_not_empty(data, "training data")
    check_accumulate(accumulate)
    tracker = BestWeights(monitor, mode=mode, patience=patience, best_checkpoint=best_checkpoint,
                          has_eval=eval_data is not None) if monitor is not None else None  # fmt: skip
    if retain_memory and dev.type == "cpu":
        retain_cpu_memory()
    ctx = context(distributed, dev)
    report = ProgressReport(progress, enabled=ctx.is_main)
    logger = RunLogger(log_dir, enabled=ctx.is_main) if log_dir is not None else None  # fails before training
    inner = unwrap_model(model)
    _attach_preprocessing(inner, data, preprocess, classes)
    fmt = place_model(inner, ctx.device, channels_last)
    loss_fn = loss_fn or CrossEntropyLoss()
    if optimizer is None:
        optimizer = torch.optim.SGD([p for p in inner.parameters() if p.requires_grad], lr=lr)
    if scheduler is not None:
        check_scheduler(scheduler, optimizer)
    per_batch = scheduler if scheduler is not None and interval_of(scheduler, scheduler_interval) == "batch" else None
    scaler = grad_scaler(ctx.device, dtype)
    start, history = 0, History()
    if checkpoint is not None and Path(checkpoint).exists():
        start, history = _resume(checkpoint, inner, optimizer, scheduler, scaler, tracker, data)
    train_data = shard_data(match_memory_format(data, ctx.device, fmt), ctx, pad=True)
    net = wrap_model(inner, ctx) if ctx.active else inner
    if compile:
        net = torch.compile(net)  # type: ignore[assignment]
    was_training = inner.training
    history.stop_reason = None
    if tracker is not None and tracker.should_stop:  # a resumed run that had already stopped early
        history.stop_reason, start = f"early stopping: {monitor} did not improve for {patience} epochs", epochs
    try:
        for epoch in range(start, epochs):
            set_epoch(train_data, epoch)
            stats = train_one_epoch(
                net, train_data, optimizer, loss_fn=loss_fn, device=ctx.device, amp=amp, epoch=epoch,
                max_grad_norm=max_grad_norm, accumulate=accumulate, scheduler=per_batch, scaler=scaler,
                channels_last=fmt == torch.channels_last, progress=progress if ctx.is_main else False,
                logger=logger, dist=ctx,
            )  # fmt: skip
            if compile and history.compile_seconds is None:
                history.compile_seconds = stats.first_step_seconds
            if eval_data is not None:
                result = evaluate(inner, eval_data, loss_fn=loss_fn, device=ctx.device, amp=amp,
                                  channels_last=fmt == torch.channels_last, distributed=ctx.active)  # fmt: skip
                stats.eval_loss, stats.eval_accuracy = result.loss, result.accuracy
            history.epochs.append(stats)
            if scheduler is not None and per_batch is None:
                _step_per_epoch(scheduler, stats, monitor)
            if tracker is not None:
                tracker.update(stats, inner, classes=classes if ctx.is_main else None)
                history.best_epoch = tracker.best_epoch
            report.line(stats.summary(epochs))
            if tracker is not None and tracker.should_stop:
                history.stop_reason = f"early stopping: {monitor} did not improve for {patience} epochs"
            elif epoch + 1 == epochs:
                history.stop_reason = "completed"
            if checkpoint is not None and ctx.is_main:
                save_checkpoint(checkpoint, model=inner, optimizer=optimizer, epoch=epoch + 1, history=history,
                                scheduler=scheduler, scaler=scaler, best=tracker.state_dict() if tracker else None,
                                loader=_loader_state(data))  # fmt: skip
            if logger is not None:
                logger.log_epoch(stats, history)
            if on_epoch_end is not None and on_epoch_end(epoch, history) and history.stop_reason is None:
                history.stop_reason = "on_epoch_end"
            if history.stop_reason is not None:
                break
        history.stop_reason = history.stop_reason or "completed"
        if tracker is not None and restore_best:
            tracker.restore(inner)
    except Exception as exc:
        translated = translate_error(exc, ctx)
        if translated is exc:
            raise
        raise translated from exc
    finally:
        inner.train(was_training)
        if logger is not None:
            logger.close()
    return history


def _attach_preprocessing(
    model: nn.Module, data: Iterable[Batch], record: Preprocess | None, classes: list[str] | None
) -> None:
    """Record what the model is trained on: the given record, else the loader's; class names too."""
    from_loader = getattr(data, "preprocessing", None)
    if record is None and callable(from_loader):
        record = from_loader(classes)
    if record is None:
        record = preprocessing_of(model)
        if record is None or classes is None:
            return
        record["classes"] = list(classes)
    set_preprocessing(model, record)


def _step_per_epoch(scheduler: Scheduler, stats: EpochStats, monitor: str | None) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        figure = monitor or ("eval_loss" if stats.eval_loss is not None else "loss_mean")
        scheduler.step(getattr(stats, figure))
    else:
        scheduler.step()


def _loader_state(data: Iterable[Batch]) -> dict[str, Any] | None:
    state = getattr(data, "state_dict", None)
    return state() if callable(state) else None


def _resume(
    checkpoint: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler | None,
    scaler: torch.amp.GradScaler | None,
    tracker: BestWeights | None,
    data: Iterable[Batch],
) -> tuple[int, History]:
    """Restore a run from ``checkpoint``: everything :func:`save_checkpoint` wrote."""
    resumed = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    if tracker is not None and resumed.best is not None:
        tracker.load_state_dict(resumed.best)
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
