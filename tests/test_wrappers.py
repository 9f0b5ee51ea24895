"""Seeing through DDP and torch.compile wrappers."""

from __future__ import annotations

import torch
from torch import nn

from cifarkit.wrappers import strip_wrapper_prefix, unwrap_model


def test_unwrap_nested_wrappers() -> None:
    inner = nn.Linear(2, 2)
    compiled = torch.compile(nn.DataParallel(inner), backend="eager")
    assert unwrap_model(compiled) is inner  # type: ignore[arg-type]
    assert unwrap_model(inner) is inner


def test_strip_only_when_every_key_has_the_prefix() -> None:
    t = torch.zeros(1)
    assert strip_wrapper_prefix({"_orig_mod.module.w": t}) == ({"w": t}, ["_orig_mod.", "module."])
    mixed = {"module.w": t, "b": t}
    assert strip_wrapper_prefix(mixed) == (mixed, [])
    assert strip_wrapper_prefix({}) == ({}, [])
