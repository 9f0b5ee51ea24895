"""Training: the lesson's step, the loop around it, its callbacks and schedules, fine-tuning a
pretrained network, the learning-rate finder, and the checks before and during a run.

==================================== ==============================================================
:mod:`~cifarkit.training.step`        :func:`train_one_epoch`: ``zero_grad -> forward -> loss ->
                                      backward -> step`` for every batch, read it first
:mod:`~cifarkit.training.loop`        :func:`train_loop`: epochs, evaluation, checkpoints, DDP
:mod:`~cifarkit.training.callbacks`   the hooks the loop calls, :class:`EarlyStopping`,
                                      :class:`TensorBoard`
:mod:`~cifarkit.training.averaging`   :class:`EMA`: the weights averaged over the steps
:mod:`~cifarkit.training.schedules`   one cycle, cosine, the two phases of fine-tuning
:mod:`~cifarkit.training.finetune`    :func:`fine_tune`: the head first, then every layer
:mod:`~cifarkit.training.finder`      :func:`lr_find`: the learning-rate range test
:mod:`~cifarkit.training.preflight`   :func:`doctor`: the lesson's traps, named before the run
:mod:`~cifarkit.training.grads`       :func:`grad_report`, :func:`watch_step`: gradients as tables
==================================== ==============================================================

What a run records (:class:`~cifarkit.history.History`) is :mod:`cifarkit.history`, shared with
the checkpoints.

Example:
    >>> from cifarkit import build_cnn, synthetic_cifar10
    >>> from cifarkit.training import train_loop
    >>> len(train_loop(build_cnn(), synthetic_cifar10(64).loader(seed=0), epochs=2, device="cpu", progress=False))
    2
"""

from __future__ import annotations

from cifarkit.training.averaging import EMA
from cifarkit.training.callbacks import Callbacks, EarlyStopping, StepEnd, TensorBoard
from cifarkit.training.finder import LRFindResult, lr_find, suggest_lr
from cifarkit.training.finetune import FineTune, fine_tune
from cifarkit.training.grads import GradReport, StepReport, grad_report, watch_step
from cifarkit.training.loop import train_loop
from cifarkit.training.preflight import DoctorReport, Finding, doctor
from cifarkit.training.schedules import cosine, one_cycle
from cifarkit.training.step import train_one_epoch

__all__ = [
    "EMA",
    "Callbacks",
    "DoctorReport",
    "EarlyStopping",
    "Finding",
    "FineTune",
    "GradReport",
    "LRFindResult",
    "StepEnd",
    "StepReport",
    "TensorBoard",
    "cosine",
    "doctor",
    "fine_tune",
    "grad_report",
    "lr_find",
    "one_cycle",
    "suggest_lr",
    "train_loop",
    "train_one_epoch",
    "watch_step",
]
