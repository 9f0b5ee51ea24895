"""Seeing through model wrappers: ``DistributedDataParallel`` (``module.``) and ``torch.compile``
(``_orig_mod.``), for modules and for the keys of their ``state_dict``.

May import: nothing from cifarkit.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["WRAPPER_PREFIXES", "strip_wrapper_prefix", "unwrap_model"]

#: Prefixes added by wrappers, and who adds them.
WRAPPER_PREFIXES = {
    "module.": "DistributedDataParallel (or DataParallel)",
    "_orig_mod.": "torch.compile",
}


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside ``torch.compile`` and ``DistributedDataParallel`` wrappers.

    Example:
        >>> from torch import nn
        >>> inner = nn.Linear(2, 2)
        >>> unwrap_model(torch.nn.DataParallel(inner)) is inner
        True
    """
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def strip_wrapper_prefix(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip ``module.`` / ``_orig_mod.`` when *every* key carries it (repeatedly).

    Returns the new dict and the prefixes removed, outermost first.

    Example:
        >>> sd, removed = strip_wrapper_prefix({"module.w": torch.zeros(1)})
        >>> list(sd), removed
        (['w'], ['module.'])
    """
    result = dict(state_dict)
    removed: list[str] = []
    changed = True
    while changed and result:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in result):
                result = {k[len(prefix) :]: v for k, v in result.items()}
                removed.append(prefix)
                changed = True
    return result, removed
