"""Trust the data before the model: :func:`audit`, every check of :mod:`cifarkit.auditing.checks`
and, with ``label_errors``, likely label errors (:mod:`cifarkit.auditing.labels`), in one
:class:`~cifarkit.auditing.findings.AuditReport`. The folders are only read, never written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cifarkit.auditing.checks import (
    Picture,
    balance,
    clusters,
    exact_key,
    grey_small,
    near_pairs,
    odd_pictures,
    pictures_of,
    read_pictures,
    wrong_extension,
)
from cifarkit.auditing.findings import KINDS, AuditFinding, AuditReport
from cifarkit.auditing.labels import find_label_errors, out_of_fold_probabilities
from cifarkit.data.folders import image_files
from cifarkit.data.images import resize_pixels
from cifarkit.data.tensors import ImageTensors
from cifarkit.errors import EmptyDataError, InvalidOptionError, check_positive_int
from cifarkit.preprocess import preprocessing_of
from cifarkit.writing import PathLike

__all__ = ["Split", "audit"]

#: What ``audit`` takes as a split: an image folder, or pictures in memory.
Split = PathLike | ImageTensors


def _read(split: Split, index: int) -> tuple[list[Picture], list[str]]:
    if isinstance(split, ImageTensors):
        return pictures_of(split, index), list(split.classes) or [str(c) for c in range(int(split.labels.max()) + 1)]
    if not isinstance(split, (str, Path)) and not hasattr(split, "__fspath__"):
        msg = f"audit takes image folders or ImageTensors, got {type(split).__name__}"
        raise InvalidOptionError(msg)
    names, files = image_files(split)
    return read_pictures(files, index), names


def _input_side(model: nn.Module | None) -> int:
    size = (preprocessing_of(model) or {}).get("input_size") if model is not None else None
    return int(min(size)) if size else 32


def _exact(pictures: list[Picture], names: list[list[str]]) -> list[AuditFinding]:
    groups: dict[str, list[int]] = {}
    for i, picture in enumerate(pictures):
        if picture.pixels is not None:
            groups.setdefault(exact_key(picture.pixels), []).append(i)
    found = []
    for members in groups.values():
        if len(members) < 2:
            continue
        splits = {pictures[i].split for i in members}
        if len(splits) > 1 and 0 in splits:
            found.append(AuditFinding("leak", tuple(pictures[i].name for i in members),
                                      f"the same pixels in {len(splits)} splits"))  # fmt: skip
        mine = [i for i in members if pictures[i].split == 0]
        if len(mine) < 2:
            continue
        labels = sorted({names[0][pictures[i].label] for i in mine})
        if len(labels) > 1:
            found.append(AuditFinding("conflicting_labels", tuple(pictures[i].name for i in mine),
                                      f"the same pixels labelled {' and '.join(labels)}"))  # fmt: skip
        else:
            found.append(AuditFinding("duplicate", tuple(pictures[i].name for i in mine),
                                      f"the same pixels {len(mine)} times in {labels[0]}"))  # fmt: skip
    return found


def _near(pictures: list[Picture], blank: set[int]) -> list[AuditFinding]:
    """Near copies, grouped: every picture joined to another by the rule is in one finding with
    them (a picture and three resized copies: one finding of four files)."""
    usable = torch.tensor([p.pixels is not None and i not in blank for i, p in enumerate(pictures)])
    keys = [exact_key(p.pixels) if p.pixels is not None else "" for p in pictures]
    first, second, bits = near_pairs(grey_small(pictures), usable)
    differ = torch.tensor([keys[i] != keys[j] for i, j in zip(first.tolist(), second.tolist(), strict=True)],
                          dtype=torch.bool)  # exact copies are reported as such  # fmt: skip
    first, second, bits = first[differ], second[differ], bits[differ]
    found = []
    for group in clusters(len(pictures), first, second):
        splits = {pictures[i].split for i in group}
        if 0 not in splits:
            continue
        inside = [i for i in group if pictures[i].split == 0]
        members = torch.tensor(group)
        within = torch.isin(first, members) & torch.isin(second, members)
        closest = int(bits[within].min()) if bool(within.any()) else 0
        if len(splits) > 1:
            what = f"near copies in {len(splits)} splits (closest: {closest} of 63 bits apart)"
            found.append(AuditFinding("near_leak", tuple(pictures[i].name for i in group), what))
        elif len(inside) > 1:
            found.append(AuditFinding("near_duplicate", tuple(pictures[i].name for i in inside),
                                      f"{len(inside)} near copies (closest: {closest} of 63 bits apart)"))  # fmt: skip
    return found


def audit(
    data: Split,
    *,
    against: Split | Sequence[Split] | None = None,
    model: nn.Module | None = None,
    label_errors: bool = True,
    folds: int = 5,
    epochs: int = 8,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> AuditReport:
    """Check a set of pictures before training on it, each problem named by its files.

    It finds files that cannot be decoded (or are truncated) and files whose content is not what
    their extension says; exact duplicates (the same decoded pixels) within a class, across
    classes (one picture, two labels) and across splits (a leak); near duplicates within the
    split and across splits (the rule: :mod:`cifarkit.auditing.checks`); blank, too small,
    stretched and grey pictures; the class balance, with the weights to use; and, with
    ``label_errors``, the likely label errors: out-of-fold probabilities from ``folds`` models
    trained by cifarkit (``model``'s architecture, rebuilt from its record; by default the
    tutorial CNN with ReLU) ranked by cleanlab's confident learning (``cifarkit[audit]``).
    Nothing is fixed and nothing is written: the report says what to do.

    Args:
        data: An image folder (one sub-folder per class) or an :class:`ImageTensors` (with
            ``sources``, so that findings name files).
        against: Other splits (a validation or test set; folders or ``ImageTensors``) checked
            for leaks.
        model: The model to be trained: its input size judges "too small", its architecture is
            the one trained on the folds.
        label_errors: Look for likely label errors (``folds`` short trainings: the slow part).
        folds: Folds of the out-of-fold probabilities.
        epochs: Epochs of each fold's training.
        device: Where the folds train.
        progress: Kept for the command line (the checks print nothing).

    Raises:
        DatasetNotFoundError, DatasetFormatError: a folder that is not an image folder.
        EmptyDataError: no picture could be read.
        MissingExtraError: label errors without cleanlab (``pip install 'cifarkit[audit]'``).

    Example:
        >>> from cifarkit import synthetic_cifar10
        >>> report = audit(synthetic_cifar10(60), label_errors=False)
        >>> report.counts()["duplicate"], report.balance.ratio
        (0, 1.0)
    """
    check_positive_int("folds", folds, minimum=2)
    check_positive_int("epochs", epochs)
    splits = [data, *((against if isinstance(against, (list, tuple)) else [against]) if against is not None else [])]
    pictures: list[Picture] = []
    names: list[list[str]] = []
    for index, split in enumerate(splits):
        read, classes = _read(split, index)
        pictures += read
        names.append(classes)
    mine = [i for i, p in enumerate(pictures) if p.split == 0]
    if not any(pictures[i].pixels is not None for i in mine):
        msg = "audit found no picture it could read in the data"
        raise EmptyDataError(msg)
    findings = [AuditFinding("unreadable", (p.name,), p.error or "") for p in pictures if p.split == 0 and p.error]
    findings += [AuditFinding("wrong_extension", (p.name,), w) for p in pictures if p.split == 0
                 and (w := wrong_extension(p)) is not None]  # fmt: skip
    findings += _exact(pictures, names)
    odd = odd_pictures([pictures[i] for i in mine], _input_side(model))
    blank = {mine[i] for i, _ in odd["blank"]}
    findings += _near(pictures, blank)
    for kind in ("blank", "too_small", "odd_aspect", "grey"):
        findings += [AuditFinding(kind, (pictures[mine[i]].name,), what) for i, what in odd[kind]]
    readable = [i for i in mine if pictures[i].pixels is not None]
    classes = names[0]
    report_balance = balance([pictures[i].label for i in mine], classes)
    if label_errors:
        side = _input_side(model)
        images = torch.stack([resize_pixels(pictures[i].pixels, side) for i in readable])  # type: ignore[arg-type]
        labels = torch.tensor([pictures[i].label for i in readable], dtype=torch.int64)
        probs = out_of_fold_probabilities(ImageTensors(images, labels, classes), model=model, folds=folds,
                                          epochs=epochs, device=device)  # fmt: skip
        for issue in find_label_errors(labels, probs):
            picture = pictures[readable[issue.index]]
            given, suggested = classes[issue.given], classes[issue.suggested]
            what = f"labelled {given}, looks like {suggested} (p = {issue.probability:.2f})"
            findings.append(AuditFinding("label_error", (picture.name,), what, given, suggested, issue.probability))
    order = {kind: n for n, kind in enumerate(KINDS)}
    findings.sort(key=lambda f: order[f.kind])  # stable: within a kind, as found
    shown = {name for f in findings for name in f.files}
    thumbnails = {p.name: resize_pixels(p.pixels, 32) for p in pictures if p.name in shown and p.pixels is not None}
    counts = {"data": len(mine), **{f"against {k}": sum(p.split == k for p in pictures) for k in range(1, len(splits))}}
    return AuditReport(findings, report_balance, counts, label_errors, thumbnails)
