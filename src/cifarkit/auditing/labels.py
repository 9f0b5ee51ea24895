"""Likely label errors: out-of-fold probabilities (each picture's, from a model trained by cifarkit
on the other folds, never on it), ranked by cleanlab's confident learning
(``cleanlab.filter.find_label_issues``, the ``cifarkit[audit]`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cifarkit.data.tensors import ImageTensors
from cifarkit.device import resolve_device
from cifarkit.errors import InvalidOptionError, MissingExtraError
from cifarkit.evaluation.inference import class_probabilities
from cifarkit.models.cnn import build_cnn
from cifarkit.models.rebuilding import rebuild
from cifarkit.models.records import get_build_record
from cifarkit.training.loop import train_loop

__all__ = ["LabelIssue", "find_label_errors", "out_of_fold_probabilities"]


@dataclass(frozen=True)
class LabelIssue:
    """A picture whose label the models trained without it doubt."""

    index: int
    given: int
    suggested: int
    probability: float  # the out-of-fold probability of the suggested class


def _folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold of each picture, stratified: every class spread evenly over the folds."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    fold = torch.empty(len(labels), dtype=torch.int64)
    for c in labels.unique().tolist():
        members = order[labels[order] == c]
        fold[members] = torch.arange(len(members)) % folds
    return fold


def _fresh(model: nn.Module | None, classes: int) -> nn.Module:
    if model is None:
        return build_cnn(classes, activation="relu")
    record = get_build_record(model)
    if record is None:
        msg = (
            "label errors need models trained from scratch on the other folds: pass a model cifarkit built "
            "(build_cnn, adapt: its build record says how to build another), or model=None for the tutorial CNN"
        )
        raise InvalidOptionError(msg)
    return rebuild(record)


def out_of_fold_probabilities(
    data: ImageTensors,
    *,
    model: nn.Module | None = None,
    folds: int = 5,
    epochs: int = 8,
    device: str | torch.device = "auto",
    seed: int = 0,
) -> torch.Tensor:
    """``(N, C)`` probabilities of each picture from a model that never saw it: ``folds`` models,
    each trained ``epochs`` epochs (AdamW at 2e-3, batches of 32, no augmentation) on the
    other folds."""
    dev = resolve_device(device)
    labels = data.labels
    classes = len(data.classes) if data.classes else int(labels.max()) + 1
    fold = _folds(labels, folds, seed)
    probs = torch.zeros(len(labels), classes)
    for k in range(folds):
        held = fold == k
        torch.manual_seed(seed + k)
        net = _fresh(model, classes)
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=2e-3)
        train = data.subset(~held)
        train_loop(net, train.loader(batch_size=32, seed=seed + k, device=dev), epochs=epochs, optimizer=optimizer,
                   device=dev, progress=False)  # fmt: skip
        probs[held] = class_probabilities(net, data.images[held], device=dev)
    return probs


def find_label_errors(labels: torch.Tensor, probs: torch.Tensor) -> list[LabelIssue]:
    """The pictures cleanlab's confident learning flags, most doubtful first.

    Raises:
        MissingExtraError: cleanlab is not installed (``pip install 'cifarkit[audit]'``).
    """
    try:
        from cleanlab.filter import find_label_issues
    except ImportError as exc:
        msg = "finding label errors needs cleanlab: pip install 'cifarkit[audit]' (or pass label_errors=False)"
        raise MissingExtraError(msg) from exc
    given = labels.numpy()
    ranked = find_label_issues(given, probs.double().numpy(), return_indices_ranked_by="self_confidence")
    suggested = probs.argmax(1)
    return [
        LabelIssue(int(i), int(given[i]), int(suggested[i]), float(probs[i, suggested[i]]))
        for i in ranked.tolist()
        if int(suggested[i]) != int(given[i])
    ]
