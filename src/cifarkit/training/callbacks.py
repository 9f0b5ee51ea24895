"""Training policies as objects: what ``train_loop(..., callbacks=[...])`` calls, and when.

A callback is any object with any of these hooks; one it does not define is skipped (as in
Lightning Fabric), so a callback writes only what it needs. The loop calls nothing else and
looks for no particular class: the built-in callbacks use these hooks and no others.

========================================== ========================================================
``set_model(model)``                       before training: the model being trained (wrappers
                                           removed), as Keras hands it over
``on_train_start(history)``                before the first epoch (after a resume: with the resumed
                                           history); the place to refuse options that cannot be
                                           honoured
``on_epoch_start(epoch, history)``         before each epoch (``epoch`` from 0); a callback may
                                           freeze or unfreeze parameters here
``on_step_end(step)``                      after every optimizer step: a :class:`StepEnd` (epoch,
                                           batch, step, learning rate, the loss as a tensor not yet
                                           read, the batch and its outputs). Reading a number from
                                           it waits for the device: that is the callback's choice
``on_validation_start(epoch, history)``    before the epoch's evaluation (with ``eval_data``): what
                                           evaluation should see (the averaged weights of
                                           :class:`EMA`) is put in here
``on_validation_end(epoch, history)``      after it, even when it raised, last callback first: and
                                           taken out here
``on_epoch_end(epoch, history)``           after each epoch, its evaluation included; returning
                                           ``True`` stops training (set ``history.stop_reason`` to
                                           say why)
``on_train_end(history)``                  at the end, **however training ended**: completed,
                                           stopped by a callback, raised, or interrupted
                                           (``KeyboardInterrupt``); ``history.stop_reason`` says
                                           which. Every callback's runs, in reverse order (the last
                                           one set up is the first torn down), even when another's
                                           raised
========================================== ========================================================

A plain function ``f(epoch, history)`` is an epoch-end callback. A callback with
``state_dict()`` and ``load_state_dict(state)`` has its state saved in every checkpoint and
restored on resume (as in Lightning), so a resumed run ends bit-identical.

The built-in policies, one object each (as Keras's ``EarlyStopping``): :class:`EarlyStopping`
(best weights, with or without stopping) and :class:`TensorBoard` (the run's scalars, the
learning rate of every step, the first batch, the graph and ``history.json``);
:class:`~cifarkit.training.finetune.FineTune` is the one of :func:`cifarkit.fine_tune`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cifarkit.device import eval_mode
from cifarkit.distributed import is_main_process
from cifarkit.errors import InvalidOptionError, MissingExtraError, check_choice, check_positive_int
from cifarkit.files.modelfiles import save
from cifarkit.history import EVAL_FIGURES, TRAIN_FIGURES, EpochStats, History
from cifarkit.preprocess import preprocessing_of
from cifarkit.writing import PathLike, atomic_write

__all__ = ["FIGURES", "HOOKS", "Callbacks", "EarlyStopping", "Mode", "StepEnd", "TensorBoard"]

Mode = Literal["min", "max"]
#: The figures a run records and :class:`EarlyStopping` can watch; the ``eval_*`` ones need
#: ``eval_data``.
FIGURES = EVAL_FIGURES + TRAIN_FIGURES


#: Every hook the loop calls, in the order a run calls them.
HOOKS = (
    "set_model",
    "on_train_start",
    "on_epoch_start",
    "on_step_end",
    "on_validation_start",
    "on_validation_end",
    "on_epoch_end",
    "on_train_end",
)


@dataclass(frozen=True)
class StepEnd:
    """What an optimizer step knows when it ends: what ``on_step_end(step)`` receives.

    Nothing here has been read from the device: ``loss`` is the batch's loss as a tensor (detached:
    keeping it keeps no graph). ``float(step.loss)`` waits for the device to finish the step; a
    callback that reads it every step pays that wait, the loop never does.

    Attributes:
        epoch: The epoch, from 0.
        batch: The batch within the epoch, from 0 (with ``accumulate``, the last batch of the step).
        step: Optimizer steps in this epoch so far, from 1.
        optimizer: The optimizer that stepped (its ``param_groups`` hold the rates).
        loss: The batch's loss (a 0-d tensor, detached, on the device).
        inputs: The batch as the model saw it ``(B, 3, H, W)``.
        outputs: The model's logits ``(B, C)`` (part of the autograd graph until the next step).
        targets: The labels ``(B,)``.
    """

    epoch: int
    batch: int
    step: int
    optimizer: torch.optim.Optimizer
    loss: torch.Tensor
    inputs: torch.Tensor
    outputs: torch.Tensor
    targets: torch.Tensor

    @property
    def lr(self) -> float:
        """The first parameter group's learning rate after the step (and a per-batch schedule)."""
        return float(self.optimizer.param_groups[0]["lr"])


class EarlyStopping:
    """Keep the best epoch's weights of a recorded figure and, with ``patience``, stop when it
    stops improving.

    Improvement means strictly better. With ``patience``, training stops once the figure has not
    improved for ``patience`` epochs in a row (so ``patience=2`` on a flat figure stops after 3
    epochs); ``patience=None`` keeps the best weights and never stops. The best weights are a CPU
    copy; ``save_to`` is rewritten (atomically, a ``cifarkit.load``-able model file, by the first
    process only under ``torchrun``) each time the figure improves. Its state (best figure, epoch,
    weights, counter) travels in checkpoints.

    Args:
        monitor: A figure of :data:`FIGURES`.
        mode: ``"max"`` or ``"min"``; default: ``"max"`` for accuracies, ``"min"`` otherwise.
        patience: Epochs without improvement before stopping; ``None`` never stops.
        restore_best: The model holds the best epoch's weights when training ends.
        save_to: A model file to write the best weights to.

    Raises:
        InvalidOptionError: an unknown figure or mode, ``patience < 1`` (at once); a figure the
            run does not record, such as ``"eval_loss"`` without ``eval_data`` (before the first
            epoch).

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10, train_loop
        >>> data = synthetic_cifar10(64)
        >>> best = EarlyStopping("eval_accuracy", patience=2)
        >>> history = train_loop(build_cnn(), data.loader(seed=0), epochs=2, eval_data=data.loader(seed=1),
        ...                      device="cpu", progress=False, callbacks=[best])
        >>> history.best_epoch == best.best_epoch in (1, 2)
        True
    """

    def __init__(
        self,
        monitor: str,
        *,
        mode: Mode | None = None,
        patience: int | None = None,
        restore_best: bool = True,
        save_to: PathLike | None = None,
    ) -> None:
        check_choice("monitor", monitor, FIGURES)
        if mode is not None:
            check_choice("mode", mode, ("min", "max"))
        if patience is not None:
            check_positive_int("patience", patience, unit="epochs without improvement")
        self.monitor = monitor
        self.mode: Mode = mode or ("max" if "accuracy" in monitor else "min")
        self.patience = patience
        self.restore_best = restore_best
        self.save_to = Path(save_to) if save_to is not None else None
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.weights: dict[str, torch.Tensor] | None = None
        self._model: nn.Module | None = None

    def set_model(self, model: nn.Module) -> None:
        """The model whose weights are kept."""
        self._model = model

    def on_train_start(self, history: History) -> None:
        """Refuse a figure the run does not record."""
        if self.monitor not in history.figures:
            hint = ": pass eval_data= to train_loop" if self.monitor.startswith("eval_") else ""
            msg = f"EarlyStopping(monitor={self.monitor!r}) watches a figure this run does not record{hint}"
            raise InvalidOptionError(msg)

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def update(self, stats: EpochStats, model: nn.Module) -> bool:
        """Count one epoch; return whether it is the new best (then its weights are kept)."""
        value = getattr(stats, self.monitor)
        if value is None or not self._better(float(value)):
            self.bad_epochs += 1
            return False
        self.best_value, self.best_epoch, self.bad_epochs = float(value), stats.epoch, 0
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if self.save_to is not None and is_main_process():
            save(model, self.save_to, classes=(preprocessing_of(model) or {}).get("classes"))
        return True

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row brought no improvement."""
        return self.patience is not None and self.bad_epochs >= self.patience

    def on_epoch_end(self, epoch: int, history: History) -> bool:
        """Track the epoch just recorded; ``True`` (stop) once patience ran out."""
        if self._model is None:
            msg = "EarlyStopping has no model: train_loop calls set_model(model) before training"
            raise InvalidOptionError(msg)
        self.update(history.epochs[-1], self._model)
        history.best_epoch = self.best_epoch
        if self.should_stop:
            history.stop_reason = f"early stopping: {self.monitor} did not improve for {self.patience} epochs"
            return True
        return False

    def on_train_end(self, history: History) -> None:
        """Put the best weights back into the model (with ``restore_best``)."""
        history.best_epoch = self.best_epoch
        if self.restore_best and self.weights is not None and self._model is not None:
            self._model.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors (``torch.load(weights_only=True)``-safe), for checkpoints."""
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "weights": self.weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same ``monitor`` and ``mode``)."""
        if state.get("monitor") != self.monitor or state.get("mode") != self.mode:
            msg = (
                f"the checkpoint tracked monitor={state.get('monitor')!r}, mode={state.get('mode')!r}; this run "
                f"tracks monitor={self.monitor!r}, mode={self.mode!r}. Resume with the same EarlyStopping"
            )
            raise InvalidOptionError(msg)
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.bad_epochs, self.weights = int(state["bad_epochs"]), state["weights"]


class TensorBoard:
    """Write the run's TensorBoard events and ``history.json`` into ``log_dir``; view them with
    ``tensorboard --logdir DIR``. Only the first process writes under ``torchrun``.

    Scalar tags, one point per epoch (the step is the epoch number, from 1):

    =========================== ===============================================================
    ``loss/sum``                 the tutorial's ``sum_loss``: the sum of the batch losses
    ``loss/mean``                mean training loss per image
    ``loss/eval``                mean eval loss per image (with ``eval_data``)
    ``accuracy/train``           training accuracy (0-1)
    ``accuracy/eval``            eval accuracy (0-1, with ``eval_data``)
    ``speed/images_per_second``  training throughput (global under torchrun)
    ``speed/seconds``            epoch wall time
    ``optim/lr``                 learning rate (``optim/lr_group{i}`` for further param groups)
    ``grad/total_norm``          mean over the epoch's steps of the global gradient L2 norm
    ``optim/lr_step``            learning rate of the first parameter group after every optimizer
                                 step (the step is the optimizer-step count): schedules show here
    =========================== ===============================================================

    It is a callback like any other: ``on_step_end`` logs the learning rate of every step (and,
    after the first, that batch as an image grid and the model's graph); ``on_train_end`` closes
    the event file however the run ended.

    Raises:
        MissingExtraError: TensorBoard is not installed (at once, before training).

    Example:
        >>> import tempfile
        >>> from cifarkit import build_cnn, synthetic_cifar10, train_loop
        >>> folder = tempfile.mkdtemp()
        >>> _ = train_loop(build_cnn(), synthetic_cifar10(64).loader(seed=0), epochs=1, device="cpu",
        ...                progress=False, callbacks=[TensorBoard(folder)])
        >>> (Path(folder) / "history.json").is_file()
        True
    """

    def __init__(self, log_dir: PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            msg = "TensorBoard(log_dir) needs TensorBoard: pip install 'cifarkit[tensorboard]'"
            raise MissingExtraError(msg) from exc
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self._writer: Any = None
        self._model: nn.Module | None = None
        self._first_batch_done = False
        self._optimizer_steps = 0

    def on_train_start(self, history: History) -> None:
        """Open the event file (on the first process only)."""
        if self._writer is None and is_main_process():
            self._writer = self._writer_class(str(self.log_dir))
        self._first_batch_done = False

    def set_model(self, model: nn.Module) -> None:
        """The model whose graph is drawn."""
        self._model = model

    def on_step_end(self, step: StepEnd) -> None:
        """After every optimizer step: its learning rate (a Python float: no device sync); after
        the run's first, an image grid of that batch and the model's graph."""
        self._optimizer_steps += 1
        if self._writer is None:
            return
        self._writer.add_scalar("optim/lr_step", step.lr, self._optimizer_steps)
        if not self._first_batch_done:
            self._first_batch_done = True
            self._log_first_batch(step.inputs)

    def _log_first_batch(self, x: torch.Tensor) -> None:
        from torchvision.utils import make_grid

        images = x[:64].detach().float().cpu().contiguous()
        if images.min() < 0 or images.max() > 1:  # normalised input: rescale for display
            images = (images - images.min()) / (images.max() - images.min()).clamp_min(1e-12)
        self._writer.add_image("data/first_batch", make_grid(images, nrow=8), 0)
        if self._model is None:
            return
        # eval mode: no dropout RNG draws, no BatchNorm statistics updates while tracing
        with eval_mode(self._model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self._writer.add_graph(self._model, x[:1].detach())
            except Exception as exc:  # tracing fails for some models: the graph is optional
                warnings.warn(f"TensorBoard graph skipped: tracing the model failed ({exc})", stacklevel=2)

    def on_epoch_end(self, epoch: int, history: History) -> None:
        """Write the epoch's scalars and rewrite ``history.json`` atomically."""
        if self._writer is None:
            return
        stats = history.epochs[-1]
        scalars: dict[str, float | None] = {
            "loss/sum": stats.loss_sum,
            "loss/mean": stats.loss_mean,
            "loss/eval": stats.eval_loss,
            "accuracy/train": stats.train_accuracy,
            "accuracy/eval": stats.eval_accuracy,
            "speed/images_per_second": stats.images_per_second,
            "speed/seconds": stats.seconds,
            "grad/total_norm": stats.grad_norm,
        }
        for i, lr in enumerate(stats.lr):
            scalars["optim/lr" if i == 0 else f"optim/lr_group{i}"] = lr
        for tag, value in scalars.items():
            if value is not None:
                self._writer.add_scalar(tag, value, stats.epoch)
        self._writer.flush()
        self._write_history(history)

    def _write_history(self, history: History) -> None:
        text = json.dumps(history.to_dict(), indent=2).encode()
        atomic_write(self.log_dir / "history.json", lambda f: f.write(text))

    def on_train_end(self, history: History) -> None:
        """Write the final ``history.json`` (why the run ended, the best epoch), close the events."""
        if self._writer is not None:
            self._write_history(history)
            self._writer.close()
            self._writer = None


class _EpochFunction:
    """A plain ``f(epoch, history)`` as an epoch-end callback."""

    def __init__(self, fn: Callable[[int, History], bool | None]) -> None:
        self.fn = fn

    def on_epoch_end(self, epoch: int, history: History) -> bool | None:
        return self.fn(epoch, history)


class Callbacks:
    """The callbacks of one run, called in the order given (``on_train_end``: in reverse): what
    ``train_loop`` drives, and ``train_one_epoch`` for ``on_step_end``.

    Raises:
        InvalidOptionError: an object with none of the hooks that is not a function either.

    Example:
        >>> seen = []
        >>> run = Callbacks([lambda epoch, history: seen.append(epoch)])
        >>> run.on_epoch_end(0, History()), seen, run.hears_steps
        (False, [0], False)
    """

    def __init__(self, callbacks: Iterable[object] = ()) -> None:
        self.items: list[Any] = []
        for callback in callbacks:
            if any(callable(getattr(callback, hook, None)) for hook in HOOKS):
                self.items.append(callback)
            elif callable(callback):
                self.items.append(_EpochFunction(callback))
            else:
                msg = (
                    f"callbacks must be objects with any of {', '.join(HOOKS)} or functions f(epoch, history); "
                    f"got {type(callback).__name__}"
                )
                raise InvalidOptionError(msg)
        self._step_hooks = [c.on_step_end for c in self.items if callable(getattr(c, "on_step_end", None))]

    @property
    def hears_steps(self) -> bool:
        """True when a callback has ``on_step_end`` (the step builds a :class:`StepEnd` only then)."""
        return bool(self._step_hooks)

    def _call(self, hook: str, *args: Any) -> list[Any]:
        return [getattr(c, hook)(*args) for c in self.items if callable(getattr(c, hook, None))]

    def set_model(self, model: nn.Module) -> None:
        """Hand every callback that asks for it the model."""
        self._call("set_model", model)

    def on_train_start(self, history: History) -> None:
        """Before the first epoch."""
        self._call("on_train_start", history)

    def on_epoch_start(self, epoch: int, history: History) -> None:
        """Before each epoch."""
        self._call("on_epoch_start", epoch, history)

    def on_step_end(self, step: StepEnd) -> None:
        """After every optimizer step."""
        for hook in self._step_hooks:
            hook(step)

    def on_validation_start(self, epoch: int, history: History) -> None:
        """Before the epoch's evaluation."""
        self._call("on_validation_start", epoch, history)

    def on_validation_end(self, epoch: int, history: History) -> None:
        """After the epoch's evaluation (also when it raised), last callback first."""
        for callback in reversed(self.items):
            hook = getattr(callback, "on_validation_end", None)
            if callable(hook):
                hook(epoch, history)

    def on_epoch_end(self, epoch: int, history: History) -> bool:
        """Call every callback (all of them, even after one asked to stop); ``True``: stop."""
        return any(bool(answer) for answer in self._call("on_epoch_end", epoch, history))

    def on_train_end(self, history: History) -> None:
        """Every callback's ``on_train_end``, last first, each one even when another raised; then
        the first error (if any) is raised."""
        errors: list[BaseException] = []
        for callback in reversed(self.items):
            hook = getattr(callback, "on_train_end", None)
            if callable(hook):
                try:
                    hook(history)
                except Exception as exc:  # the others still tear down; the first error is reported
                    errors.append(exc)
        if errors:
            raise errors[0]

    def _stateful(self) -> dict[str, Any]:
        return {
            f"{i}:{type(c).__qualname__}": c
            for i, c in enumerate(self.items)
            if callable(getattr(c, "state_dict", None)) and callable(getattr(c, "load_state_dict", None))
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"<position>:<class name>": state}`` of each callback with ``state_dict()``."""
        return {key: c.state_dict() for key, c in self._stateful().items()}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Give each stateful callback its saved state (one without any starts afresh, with a warning)."""
        for key, callback in self._stateful().items():
            if key in states:
                callback.load_state_dict(states[key])
            else:
                warnings.warn(f"the checkpoint holds no state for callback {key}: it starts afresh", stacklevel=3)
