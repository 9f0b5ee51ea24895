"""Weight averaging: :class:`EMA`, an exponential moving average of the weights over the optimizer
steps, built on ``torch.optim.swa_utils`` (``AveragedModel`` with ``get_ema_multi_avg_fn`` and
``use_buffers=True``, so batch-norm statistics are averaged too).

The average is what the epoch's evaluation sees (``history.eval_weights == "ema"``) and what the
model holds when training ends; the raw weights keep training in between, so a checkpoint always
holds the raw weights as the model and the average in the callback's state: there is never a
doubt which is which, and a resumed run ends bit-identical. A model that holds the average says
so in its preprocessing record (``"averaged"``), which every file keeps and ``cifarkit inspect``
shows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cifarkit.errors import InvalidOptionError, check_positive_int
from cifarkit.history import History
from cifarkit.preprocess import make_record, preprocessing_of, set_preprocessing
from cifarkit.training.callbacks import StepEnd

__all__ = ["EMA"]


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


class EMA:
    """Average the weights (and buffers) over the optimizer steps: ``ema = decay * ema + (1 -
    decay) * weights`` after every ``every``-th step once ``start`` steps have passed (the first
    update copies the weights).

    Args:
        decay: The weight of the past, in (0, 1); 0.999 averages over about 1,000 steps. For a short
            run, a smaller decay (or a later ``start``) keeps the early, untrained weights out.
        start: Optimizer steps before the first update.
        every: Update every this many steps.
        restore_raw: Leave the raw weights in the model at the end, instead of the average.

    Example:
        >>> from cifarkit import build_cnn, synthetic_cifar10, train_loop
        >>> data = synthetic_cifar10(128)
        >>> ema = EMA(0.9)
        >>> history = train_loop(build_cnn(), data.loader(seed=0), epochs=2, eval_data=data.loader(seed=1),
        ...                      device="cpu", progress=False, callbacks=[ema])
        >>> history.eval_weights, ema.updates
        ('ema', 4)
    """

    def __init__(self, decay: float = 0.999, *, start: int = 0, every: int = 1, restore_raw: bool = False) -> None:
        if not (isinstance(decay, (int, float)) and not isinstance(decay, bool) and 0 < decay < 1):
            msg = f"EMA decay must be a number between 0 and 1 (exclusive), e.g. 0.999; got {decay!r}"
            raise InvalidOptionError(msg)
        self.decay = float(decay)
        self.start = check_positive_int("start", start, minimum=0, unit="optimizer steps before the first update")
        self.every = check_positive_int("every", every, unit="optimizer steps between updates")
        self.restore_raw = restore_raw
        self.steps = 0  # optimizer steps seen, over the whole run
        self._model: nn.Module | None = None
        self._average: AveragedModel | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's state, until the model is known
        self._raw: list[torch.Tensor] | None = None  # the raw weights while evaluation sees the average

    @property
    def updates(self) -> int:
        """How many steps went into the average."""
        return 0 if self._average is None else int(self._average.n_averaged)

    @property
    def module(self) -> nn.Module:
        """The averaged copy of the model.

        Raises:
            InvalidOptionError: training has not started (no model yet).
        """
        if self._average is None:
            msg = "the EMA has no average yet: train_loop creates it when training starts"
            raise InvalidOptionError(msg)
        return self._average.module

    def set_model(self, model: nn.Module) -> None:
        """The model whose weights are averaged."""
        self._model = model

    def on_train_start(self, history: History) -> None:
        """Create the average (on the model's device) and, after a resume, restore it."""
        if self._model is None:
            msg = "EMA has no model: train_loop calls set_model(model) before training"
            raise InvalidOptionError(msg)
        if self._average is None:
            self._average = AveragedModel(self._model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        if self._pending is not None:
            self._average.module.load_state_dict(self._pending["average"])
            self._average.n_averaged.fill_(int(self._pending["updates"]))
            self.steps = int(self._pending["steps"])
            self._pending = None
        history.eval_weights = "ema"

    def on_step_end(self, step: StepEnd) -> None:
        """Count the step; fold the weights into the average when it is due."""
        self.steps += 1
        if self._average is not None and self.steps > self.start and (self.steps - self.start - 1) % self.every == 0:
            self._average.update_parameters(self._model)  # type: ignore[arg-type]

    def _agree_across_ranks(self) -> None:
        # Each rank's batch norms update on its own batches between DDP's broadcasts: average
        # rank 0's statistics everywhere, so every rank evaluates and saves the same average.
        if self._average is not None and dist.is_available() and dist.is_initialized():
            for tensor in _tensors(self._average.module):
                dist.broadcast(tensor.data, src=0)

    def _swap_in_average(self) -> None:
        assert self._model is not None and self._average is not None  # on_train_start made them
        with torch.no_grad():
            self._raw = [t.detach().clone() for t in _tensors(self._model)]
            for mine, averaged in zip(_tensors(self._model), _tensors(self._average.module), strict=True):
                mine.copy_(averaged)

    def on_validation_start(self, epoch: int, history: History) -> None:
        """Evaluation sees the averaged weights (the raw ones once nothing was averaged yet)."""
        self._agree_across_ranks()
        if self.updates:
            self._swap_in_average()

    def on_validation_end(self, epoch: int, history: History) -> None:
        """Give training back its raw weights, however evaluation ended."""
        if self._raw is not None and self._model is not None:
            with torch.no_grad():
                for mine, raw in zip(_tensors(self._model), self._raw, strict=True):
                    mine.copy_(raw)
            self._raw = None

    def on_train_end(self, history: History) -> None:
        """The model keeps the average (unless ``restore_raw``, or the run raised), and says so
        in its record."""
        self.on_validation_end(-1, history)  # an interrupted evaluation: raw weights back first
        if self.restore_raw or not self.updates or (history.stop_reason or "").startswith("raised"):
            return
        self._agree_across_ranks()
        self._swap_in_average()
        self._raw = None
        assert self._model is not None
        record = preprocessing_of(self._model) or make_record(input_size=None)
        averaged = {"kind": "ema", "decay": self.decay, "updates": self.updates}
        set_preprocessing(self._model, {**record, "averaged": averaged})

    def state_dict(self) -> dict[str, Any]:
        """The average, how many steps it holds and how many were seen (checkpoints keep it)."""
        if self._average is None:
            return dict(self._pending or {"decay": self.decay, "start": self.start, "every": self.every,
                                          "steps": self.steps, "updates": 0, "average": None})  # fmt: skip
        average = {k: v.detach().to("cpu", copy=True) for k, v in self._average.module.state_dict().items()}
        return {"decay": self.decay, "start": self.start, "every": self.every, "steps": self.steps,
                "updates": self.updates, "average": average}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the average of a checkpoint written with the same ``decay``, ``start``, ``every``.

        Raises:
            InvalidOptionError: the checkpoint's EMA had other settings.
        """
        settings = {k: state.get(k) for k in ("decay", "start", "every")}
        mine = {"decay": self.decay, "start": self.start, "every": self.every}
        if not (math.isclose(float(settings["decay"] or 0), self.decay) and settings["start"] == self.start
                and settings["every"] == self.every):  # fmt: skip
            msg = f"the checkpoint's EMA had {settings}, this run's has {mine}: resume with the same EMA settings"
            raise InvalidOptionError(msg)
        if state.get("average") is not None:
            self._pending = dict(state)
        self.steps = int(state.get("steps", 0))
