"""Why a ``state_dict`` does not fit a model, in plain words (the tutorial's "reason unknown"),
and loading one with that diagnosis attached (:func:`apply_state_dict`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from cifarkit.device import WRAPPER_PREFIXES, strip_wrapper_prefix, unwrap_model
from cifarkit.errors import StateDictMismatchError, cut

#: How much of a file's key a message quotes: key names can be arbitrarily long.
KEY_LIMIT = 80

__all__ = ["Diagnosis", "apply_state_dict", "diagnose_state_dict"]


@dataclass
class Diagnosis:
    """What differs between a model and a ``state_dict``, and what to do about it.

    ``str(diagnosis)`` is the full explanation; ``ok`` is true when the weights fit exactly.
    ``state_dict`` holds the weights after any wrapper prefix was stripped.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    stripped_prefixes: list[str] = field(default_factory=list)
    explanations: list[str] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """True when every key matches in name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def matching(self) -> dict[str, torch.Tensor]:
        """The entries of ``state_dict`` that fit the model (what ``strict=False`` loads)."""
        bad = set(self.unexpected) | {name for name, _, _ in self.mismatched}
        return {k: v for k, v in self.state_dict.items() if k not in bad}

    def __str__(self) -> str:
        if self.ok:
            lines = ["the state_dict fits the model: every key matches in name and shape."]
            lines += [f"note: {text}" for text in self.explanations]
            return "\n".join(lines)
        lines = [
            f"the state_dict does not fit the model: {len(self.missing)} missing key(s), "
            f"{len(self.unexpected)} unexpected key(s), {len(self.mismatched)} shape mismatch(es)."
        ]
        if self.missing:
            lines.append(f"  missing (in the model, not in the file): {_short(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (in the file, not in the model): {_short(self.unexpected)}")
        for name, file_shape, model_shape in self.mismatched[:8]:
            shapes = f"file has {list(file_shape)}, model has {list(model_shape)}"
            lines.append(f"  size mismatch for {cut(name, KEY_LIMIT)}: {shapes}")
        lines.append("Likely cause and fix:")
        lines += [f"  - {text}" for text in self.explanations]
        lines.append(
            "  - to load only the matching tensors anyway, pass strict=False "
            "(cifarkit.load(path, model=model, strict=False))."
        )
        return "\n".join(lines)


def _short(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(cut(k, KEY_LIMIT) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _explain(diag: Diagnosis, model_keys: set[str], file_keys: set[str]) -> list[str]:
    out: list[str] = []
    for prefix in diag.stripped_prefixes:
        out.append(
            f"every key in the file started with {prefix!r}: it was saved from a "
            f"{WRAPPER_PREFIXES[prefix]} wrapper; the prefix was stripped automatically "
            "(save model.module / the unwrapped model to avoid it)."
        )
    partial = [p for p in WRAPPER_PREFIXES if any(k.startswith(p) for k in diag.unexpected)]
    for prefix in partial:
        out.append(
            f"some keys start with {prefix!r} and some do not: the file mixes wrapped and "
            "unwrapped weights; re-save it from the unwrapped model."
        )
    file_cnn = any(k.startswith("sequential.") for k in file_keys)
    model_cnn = any(k.startswith("sequential.") for k in model_keys)
    file_vgg = any(k.startswith("features.") for k in file_keys)
    model_vgg = any(k.startswith("features.") for k in model_keys)
    if file_cnn and model_vgg:
        out.append(
            "the file holds the tutorial CNN's weights (sequential.*) but the model is a VGG: "
            "wrong architecture. Load it into cifarkit.build_cnn() (or use cifarkit.load(path), "
            "which rebuilds the saved architecture)."
        )
    elif file_vgg and model_cnn:
        out.append(
            "the file holds VGG weights (features.*, classifier.*) but the model is the tutorial "
            "CNN: wrong architecture. Load it into cifarkit.adapt_vgg16(...) with the same "
            "strategy as when it was saved."
        )
    elif file_cnn and model_cnn and diag.missing and diag.unexpected:
        out.append(
            "both are the tutorial CNN but its layers sit at different positions: the file and "
            "the model were built with different activation= or dropout= (ReLU and Dropout "
            "shift the layer numbers). Build the model with the same options as when saved."
        )
    out += _appended_heads(diag)
    for name, file_shape, model_shape in diag.mismatched:
        if not name.endswith(".weight") or len(file_shape) != 2 or len(model_shape) != 2:
            continue
        if file_shape[1] != model_shape[1] or file_shape[0] == model_shape[0]:
            continue
        layer = name.removesuffix(".weight")
        if file_shape[0] == 1000:
            out.append(
                f"{layer} has 1000 outputs in the file and {model_shape[0]} in the model: the file "
                "holds the un-adapted ImageNet head. Load it before adapting: "
                "adapt_vgg16(weights=path) or cifarkit.adapt(network, weights=path), which swap the "
                "head after loading."
            )
        elif model_shape[0] == 1000:
            out.append(
                f"{layer} has {file_shape[0]} outputs in the file and 1000 in the model: the file "
                "was saved after adapt_vgg16(strategy='replace') or cifarkit.adapt(...). Adapt the "
                f"model first (num_classes={file_shape[0]}), or use cifarkit.load(path)."
            )
        else:
            out.append(
                f"{layer} has {file_shape[0]} outputs in the file and {model_shape[0]} in the "
                f"model: the number of classes differs; build the model with "
                f"num_classes={file_shape[0]}."
            )
    if not diag.ok and len(out) == len(diag.stripped_prefixes):
        out.append(
            "the model's architecture was changed after the file was saved (layers added, removed "
            "or resized). Rebuild exactly the architecture that was saved; cifarkit.save() records "
            "it so that cifarkit.load(path) can rebuild it for you."
        )
    return out


def diagnose_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Diagnosis:
    """Compare ``state_dict`` with ``model`` key by key (see :func:`cifarkit.diagnose`)."""
    model = unwrap_model(model)
    target = model.state_dict()
    stripped, removed = strip_wrapper_prefix(state_dict)
    if removed and set(state_dict) & set(target):
        stripped, removed = dict(state_dict), []  # the model itself uses those names
    diag = Diagnosis(stripped_prefixes=removed, state_dict=stripped)
    model_keys, file_keys = set(target), set(stripped)
    diag.missing = sorted(model_keys - file_keys)
    diag.unexpected = sorted(file_keys - model_keys)
    for key in sorted(model_keys & file_keys):
        value = stripped[key]
        if not isinstance(value, torch.Tensor):
            diag.mismatched.append((key, (), tuple(target[key].shape)))
        elif tuple(value.shape) != tuple(target[key].shape):
            diag.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
    diag.explanations = _explain(diag, model_keys, file_keys)
    return diag


def apply_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool, source: str
) -> Diagnosis:
    """Load ``state_dict`` into ``model`` (wrappers and key prefixes handled) and return the diagnosis.

    ``strict=True`` raises :class:`~cifarkit.errors.StateDictMismatchError` carrying the diagnosis
    when anything differs; ``strict=False`` loads the matching tensors and warns. ``source`` names
    the weights in messages.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> apply_state_dict(model, {"module.weight": torch.ones(2, 2), "module.bias": torch.zeros(2)},
        ...                  strict=True, source="a DDP file").stripped_prefixes
        ['module.']
        >>> float(model.weight.detach().sum())
        4.0
    """
    diag = diagnose_state_dict(model, state_dict)
    inner = unwrap_model(model)
    if diag.ok:
        inner.load_state_dict(diag.state_dict)
    elif strict:
        msg = f"cannot load {source} into {type(inner).__name__}: {diag}"
        raise StateDictMismatchError(msg)
    else:
        inner.load_state_dict(diag.matching(), strict=False)
        warnings.warn(f"loaded {source} partially (strict=False): {diag}", stacklevel=3)
    return diag


def _appended_heads(diag: Diagnosis) -> list[str]:
    """An ``append``-adapted head on one side only: ``<block>.add_linear`` (in a classifier
    ``Sequential``) or ``<head>.0``/``<head>.1`` (where the head was a bare ``Linear``)."""
    out = []
    for side, other in ((diag.unexpected, diag.missing), (diag.missing, diag.unexpected)):
        appended = sorted({k.split(".add_linear.")[0] for k in side if ".add_linear." in k})
        appended += sorted({k[: -len(".1.weight")] for k in side if k.endswith(".1.weight")
                            and f"{k[: -len('.1.weight')]}.weight" in other})  # fmt: skip
        for head in appended:
            if side is diag.unexpected:
                out.append(
                    f"the file has an appended head at {head}: it was saved after "
                    "adapt_vgg16/adapt(strategy='append'). Adapt the model with strategy='append' "
                    "before loading, or call cifarkit.load(path) which rebuilds it."
                )
            else:
                out.append(
                    f"the model has an appended head at {head} (strategy='append') but the file "
                    "does not: the file was saved from a 'replace'-adapted or an un-adapted "
                    "network. Build the model the same way as the saved one."
                )
    return out
