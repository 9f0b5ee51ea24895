"""Keeping the best epoch's weights and stopping early when a monitored figure stops improving.

May import: cifarkit.errors, cifarkit.persist, cifarkit.history.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cifarkit.errors import InvalidOptionError, check_choice, check_positive_int
from cifarkit.history import EpochStats
from cifarkit.persist import save

__all__ = ["FIGURES", "BestWeights", "Mode"]

Mode = Literal["min", "max"]
#: The figures ``monitor=`` can name; the ``eval_*`` ones need ``eval_data``.
FIGURES = ("eval_loss", "eval_accuracy", "loss_mean", "loss_sum", "train_accuracy")


class BestWeights:
    """Track ``monitor`` over epochs: the best value, its epoch and weights, and the epochs since.

    Improvement means strictly better. With ``patience``, :attr:`should_stop` turns true once the
    figure has not improved for ``patience`` consecutive epochs (so ``patience=2`` on a flat
    figure stops after 3 epochs). The best weights are kept as a CPU copy; ``best_checkpoint``
    is rewritten (atomically, a ``cifarkit.load``-able model file) each time the figure improves.

    Args:
        monitor: A figure of :data:`FIGURES`.
        mode: ``"max"`` or ``"min"``; default: ``"max"`` for accuracies, ``"min"`` otherwise.
        patience: Epochs without improvement before stopping; ``None`` never stops.
        best_checkpoint: A model file to write the best weights to.
        has_eval: Whether the run evaluates (``eval_*`` figures exist).

    Raises:
        InvalidOptionError: an unknown figure, an eval figure without eval data, ``patience < 1``.

    Example:
        >>> tracker = BestWeights("eval_loss", patience=1, has_eval=True)
        >>> model = nn.Linear(2, 2)
        >>> for epoch, value in enumerate([0.9, 0.5, 0.7], start=1):
        ...     _ = tracker.update(EpochStats(epoch, 1.0, 1.0, 0.5, 2, 1.0, 2.0, eval_loss=value), model)
        >>> tracker.best_epoch, tracker.best_value, tracker.should_stop
        (2, 0.5, True)
    """

    def __init__(
        self,
        monitor: str,
        *,
        mode: Mode | None = None,
        patience: int | None = None,
        best_checkpoint: str | os.PathLike[str] | None = None,
        has_eval: bool,
    ) -> None:
        check_choice("monitor", monitor, FIGURES)
        if monitor.startswith("eval_") and not has_eval:
            msg = f"monitor={monitor!r} is an evaluation figure, but no eval_data was given: pass eval_data="
            raise InvalidOptionError(msg)
        if mode is not None:
            check_choice("mode", mode, ("min", "max"))
        if patience is not None:
            check_positive_int("patience", patience, unit="epochs without improvement")
        self.monitor = monitor
        self.mode: Mode = mode or ("max" if "accuracy" in monitor else "min")
        self.patience = patience
        self.best_checkpoint = Path(best_checkpoint) if best_checkpoint is not None else None
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.weights: dict[str, torch.Tensor] | None = None

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def update(self, stats: EpochStats, model: nn.Module, *, classes: list[str] | None = None) -> bool:
        """Count one epoch; return whether it is the new best (then its weights are kept)."""
        value = getattr(stats, self.monitor)
        if value is None or not self._better(float(value)):
            self.bad_epochs += 1
            return False
        self.best_value, self.best_epoch, self.bad_epochs = float(value), stats.epoch, 0
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if self.best_checkpoint is not None:
            save(model, self.best_checkpoint, classes=classes)
        return True

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row brought no improvement."""
        return self.patience is not None and self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights into ``model``; return whether there were any."""
        if self.weights is None:
            return False
        model.load_state_dict(self.weights)
        return True

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
                f"tracks monitor={self.monitor!r}, mode={self.mode!r}. Resume with the same monitor and mode"
            )
            raise InvalidOptionError(msg)
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.bad_epochs, self.weights = int(state["bad_epochs"]), state["weights"]
