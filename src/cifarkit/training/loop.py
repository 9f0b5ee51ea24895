"""The run around the lesson's step: :func:`train_loop` runs
:func:`~cifarkit.training.step.train_one_epoch` once per epoch, and between epochs resumes from and
writes a checkpoint, evaluates, steps per-epoch schedules, calls the callbacks
(:mod:`cifarkit.training.callbacks`, which may stop the run) and, under ``torchrun``, wraps the
model in DDP and gives each rank its shard (a :class:`~cifarkit.distributed.DistContext`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarkit.data.loader import Batch, check_not_empty, match_memory_format, set_epoch
from cifarkit.device import Amp, amp_dtype, cpu_supports_bf16, grad_scaler, place_model, resolve_device, unwrap_model
from cifarkit.display import Progress, ProgressReport
from cifarkit.distributed import DistContext, context, shard_data, sync_buffers, translate_error, wrap_model
from cifarkit.errors import InvalidOptionError, check_positive_int, cut
from cifarkit.evaluation.metrics import evaluate
from cifarkit.files.checkpoints import load_checkpoint, save_checkpoint
from cifarkit.history import EVAL_FIGURES, TRAIN_FIGURES, EpochStats, History
from cifarkit.losses import LossFn, cross_entropy
from cifarkit.preprocess import set_preprocessing
from cifarkit.training.callbacks import Callbacks
from cifarkit.training.schedules import Scheduler, check_scheduler, interval_of
from cifarkit.training.step import train_one_epoch
from cifarkit.writing import PathLike

__all__ = ["train_loop"]


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

    Each epoch is one :func:`~cifarkit.training.step.train_one_epoch`; around it this function resumes from and writes
    ``checkpoint``, evaluates ``eval_data``, steps per-epoch schedules, calls the ``callbacks``
    (which may stop the run) and, under ``torchrun``, wraps the model in DDP and shards the data.
    Training policies are callback objects (see :mod:`cifarkit.training.callbacks`):
    :class:`~cifarkit.training.callbacks.EarlyStopping` keeps the best weights and stops early,
    :class:`~cifarkit.training.callbacks.TensorBoard` logs the run. Every option, the callbacks' included,
    is checked before the first epoch. The model is switched to channels-last when it has
    convolutions (same results up to float rounding).

    The model's preprocessing record (input size, normalization, class names: see
    :mod:`cifarkit.preprocess`) is taken from the loader (``TensorLoader.preprocessing()``), so
    the model's files say how to feed it.

    Args:
        model: Any ``nn.Module`` classifier producing ``(N, C)`` logits.
        data: A :class:`~cifarkit.data.loader.TensorLoader`, a ``DataLoader`` or any iterable of
            ``(x, y)`` batches. Loaders with ``set_epoch`` are told the epoch.
        epochs: Total number of epochs (with ``checkpoint``, including those already done).
        loss_fn: Default: cifarkit's guarded :func:`~cifarkit.losses.cross_entropy`.
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
            :func:`~cifarkit.training.schedules.one_cycle`, :func:`~cifarkit.training.schedules.cosine`). It is
            stepped per batch for ``OneCycleLR``, ``CyclicLR``, cifarkit's builders and those
            marked with :func:`~cifarkit.training.schedules.step_every`, per epoch otherwise;
            ``ReduceLROnPlateau`` steps on ``eval_loss`` (``loss_mean`` without ``eval_data``).
        checkpoint: A file saved atomically after every epoch and resumed from if it exists: the
            model, optimizer, scheduler, scaler, epoch, history, every callback's state, every
            random state and the loader's seed and epoch, so a resumed run matches an
            uninterrupted one bit for bit on CPU. A run that a callback stopped stays stopped.
        progress: ``True`` (or ``"auto"``): a live bar per epoch where someone watches (a
            terminal; a widget in Jupyter) and one summary line per epoch on stdout that stays.
            ``"lines"``: the lines alone. ``"bar"``: the bar even into a file. ``False``: nothing.
            Only rank 0 shows anything under DDP.
        callbacks: Objects with any of the hooks of :mod:`cifarkit.training.callbacks`, or functions
            ``f(epoch, history)`` called after each epoch; one returning ``True`` stops training.
            A callback may freeze or unfreeze parameters between epochs: under DDP the model is
            wrapped again, so the parameters that train are the ones kept in sync.
        compile: Wrap the model in ``torch.compile`` (the first step's time, compile included,
            is recorded as ``History.compile_seconds``). Compiling takes tens of seconds (on an
            H200 for the tutorial CNN: 11 s, and about 7 s more for the last, smaller batch) and
            happens once per process and shape: later epochs, later calls and new models of the
            same class reuse it. Use it for long runs of larger models at fixed shapes; for the
            tutorial CNN it did not beat eager on a CPU (0.56-0.69x) and read 0.82-1.1x eager on
            the H200 (``benchmarks/README.md``; ``nox -s bench`` measures it on the machine at
            hand): leave it off there.

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
    check_positive_int("accumulate", accumulate, unit="batches per optimizer step")
    run = Callbacks(callbacks)
    ctx = context(None, dev)
    report = ProgressReport(progress, enabled=ctx.is_main)
    inner = unwrap_model(model)
    _attach_preprocessing(inner, data)
    fmt = place_model(inner, ctx.device, None)
    loss_fn = loss_fn or cross_entropy  # the guarded function: a module's call costs more per step
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
    train_data = shard_data(match_memory_format(data, ctx.device, fmt), ctx, pad=True)
    net: nn.Module = inner
    wrapped_for: list[bool] | None = None  # which parameters trained when `net` was wrapped
    modes = [(module, module.training) for module in inner.modules()]
    if history.stop_reason not in (None, "completed"):  # a resumed run that a callback had stopped
        start = epochs
    history.stop_reason = None if start < epochs else history.stop_reason
    failure: BaseException | None = None  # what ended the run, if it did not end well
    try:
        run.set_model(inner)
        run.on_train_start(history)  # callbacks refuse what they cannot honour, before any epoch
        for epoch in range(start, epochs):
            run.on_epoch_start(epoch, history)  # a callback may freeze or unfreeze layers here
            trainable = [p.requires_grad for p in inner.parameters()]
            if trainable != wrapped_for:  # the first epoch, or a callback froze or unfroze layers:
                net, wrapped_for = _wrap(inner, ctx, compile), trainable  # DDP syncs what trains now
            set_epoch(train_data, epoch)
            stats = train_one_epoch(
                net, train_data, optimizer, loss_fn=loss_fn, device=ctx.device, amp=amp, epoch=epoch,
                max_grad_norm=max_grad_norm, accumulate=accumulate, scheduler=per_batch, scaler=scaler,
                channels_last=fmt == torch.channels_last, progress=progress if ctx.is_main else False,
                callbacks=run, dist=ctx,
            )  # fmt: skip
            sync_buffers(inner, ctx)  # every rank evaluates and saves rank 0's batch-norm statistics
            if compile and history.compile_seconds is None:
                history.compile_seconds = stats.first_step_seconds
            if eval_data is not None:
                run.on_validation_start(epoch, history)  # e.g. EMA puts its averaged weights in
                try:
                    result = evaluate(inner, eval_data, loss_fn=loss_fn, device=ctx.device, amp=amp,
                                      channels_last=fmt == torch.channels_last, distributed=ctx.active)  # fmt: skip
                finally:
                    run.on_validation_end(epoch, history)  # ... and takes them out, however it ended
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
    except KeyboardInterrupt as exc:
        history.stop_reason, failure = "interrupted", exc
        raise
    except Exception as exc:
        history.stop_reason = f"raised {type(exc).__name__}: {cut(str(exc), 200)}"
        failure = translate_error(exc, ctx)
        if failure is exc:
            raise
        raise failure from exc
    finally:
        for module, mode in modes:  # the model's own train/eval modes, whatever happened
            module.training = mode
        _end(run, history, failure)  # every callback, last first, however the run ended
    return history


def _end(run: Callbacks, history: History, failure: BaseException | None) -> None:
    """``on_train_end`` of every callback. When training itself failed, that error is the one
    raised, and a callback's error in ``on_train_end`` is attached to it as a note."""
    try:
        run.on_train_end(history)
    except Exception as exc:
        if failure is None:
            raise
        note = f"also, a callback's on_train_end raised {type(exc).__name__}: {exc}"
        if hasattr(failure, "add_note"):  # Python 3.11+
            failure.add_note(note)


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
