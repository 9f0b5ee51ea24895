"""Watch a run as it happens: TensorBoard scalars, an image grid, the graph, and history.json.

Used by ``train_loop(..., log_dir=DIR)``; view the run with ``tensorboard --logdir DIR``.

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

May import: cifarkit.errors, cifarkit.files, cifarkit.history.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarkit.errors import MissingExtraError
from cifarkit.files import atomic_write
from cifarkit.history import EpochStats, History

__all__ = ["RunLogger"]


class RunLogger:
    """Write one training run's TensorBoard events and ``history.json`` into ``log_dir``.

    Args:
        log_dir: The run folder (created).
        enabled: ``False`` on ranks other than 0: nothing is written.

    Raises:
        MissingExtraError: TensorBoard is not installed (raised at once, before training).
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, enabled: bool = True) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            msg = "log_dir= needs TensorBoard: pip install 'cifarkit[tensorboard]'"
            raise MissingExtraError(msg) from exc
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer: Any = SummaryWriter(str(self.log_dir)) if enabled else None
        self._first_batch_done = False
        self._optimizer_steps = 0

    def log_first_batch(self, model: nn.Module, x: torch.Tensor) -> None:
        """Once per run: an image grid of the first training batch and the model graph."""
        if self._first_batch_done or self._writer is None:
            return
        self._first_batch_done = True
        from torchvision.utils import make_grid

        images = x[:64].detach().float().cpu().contiguous()
        if images.min() < 0 or images.max() > 1:  # normalised input: rescale for display
            images = (images - images.min()) / (images.max() - images.min()).clamp_min(1e-12)
        self._writer.add_image("data/first_batch", make_grid(images, nrow=8), 0)
        was_training = model.training
        model.eval()  # no dropout RNG draws, no BatchNorm statistics updates while tracing
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._writer.add_graph(model, x[:1].detach())
        except Exception as exc:  # tracing fails for some models: the graph is optional
            warnings.warn(f"TensorBoard graph skipped: tracing the model failed ({exc})", stacklevel=2)
        finally:
            model.train(was_training)

    def log_lr(self, optimizer: torch.optim.Optimizer) -> None:
        """After an optimizer step: its learning rate (a Python float: no device sync)."""
        self._optimizer_steps += 1
        if self._writer is not None:
            self._writer.add_scalar("optim/lr_step", float(optimizer.param_groups[0]["lr"]), self._optimizer_steps)

    def log_epoch(self, stats: EpochStats, history: History) -> None:
        """Write the epoch's scalars and rewrite ``history.json`` atomically."""
        if self._writer is None:
            return
        step = stats.epoch
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
                self._writer.add_scalar(tag, value, step)
        self._writer.flush()
        text = json.dumps(history.to_dict(), indent=2).encode()
        atomic_write(self.log_dir / "history.json", lambda f: f.write(text))

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
