"""Tests of cifarkit.device."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from cifarkit import build_cnn
from cifarkit.device import (
    autocast,
    memory_format_for,
    move_batch,
    place_model,
    resolve_device,
    strip_wrapper_prefix,
    unwrap_model,
)
from cifarkit.errors import InvalidOptionError


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(InvalidOptionError, match="not a device"):
        resolve_device("gpu0")


def test_memory_format_follows_the_model_and_placing_is_idempotent() -> None:
    assert memory_format_for(build_cnn()) == torch.channels_last
    assert memory_format_for(nn.Linear(3, 3)) == torch.contiguous_format
    assert memory_format_for(build_cnn(), channels_last=False) == torch.contiguous_format
    model = build_cnn()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    assert place_model(model, torch.device("cpu")) == torch.channels_last
    assert place_model(model, torch.device("cpu")) == torch.channels_last
    assert all(a is b for a, b in zip(params, model.parameters()))  # the optimizer still holds them
    assert optimizer.param_groups[0]["params"][0] is model.sequential[0].weight
    assert model.sequential[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_placing_converts_a_model_whose_last_conv_was_left_behind() -> None:
    model = build_cnn()
    place_model(model, torch.device("cpu"))
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    last.weight.data = last.weight.data.contiguous()  # one tensor out of place: the look must see it
    assert not last.weight.is_contiguous(memory_format=torch.channels_last)
    place_model(model, torch.device("cpu"))
    assert last.weight.is_contiguous(memory_format=torch.channels_last)
    place_model(model, torch.device("cpu"), channels_last=False)
    assert all(p.is_contiguous() for p in model.parameters())


def test_move_batch_copies_only_what_must_move() -> None:
    x = torch.rand(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(2, dtype=torch.long)
    moved_x, moved_y = move_batch(x, y, torch.device("cpu"), torch.channels_last)
    assert moved_x is x and moved_y is y
    converted, _ = move_batch(x.contiguous(), y, torch.device("cpu"), torch.channels_last)
    assert converted.is_contiguous(memory_format=torch.channels_last) and torch.equal(converted, x)


def test_autocast_is_bf16_only_when_asked() -> None:
    cpu = torch.device("cpu")
    with autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


_ALLOCATOR_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import cifarkit, cifarkit.device as device
    from cifarkit.cli import main
    data = cifarkit.synthetic_cifar10(64).loader(seed=0)
    seen = {}
    cifarkit.train_loop(cifarkit.build_cnn(), data, device="cpu", progress=False)
    seen["library_default"] = device._ALLOCATOR_TUNED
    if sys.argv[1] == "library":
        device.retain_cpu_memory()  # the library applies it only when asked
    else:
        main(["train", "--epochs", "1", "--train-count", "64", "--quiet", "--out", sys.argv[2]])
    seen["after"] = device._ALLOCATOR_TUNED
    print(json.dumps(seen))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("who", ["library", "cli"])
def test_memory_retention_is_opt_in_for_the_library_and_on_for_the_command(who: str, tmp_path: Path) -> None:
    args = [sys.executable, "-c", _ALLOCATOR_SCRIPT, who, str(tmp_path / "m.pt")]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"library_default": False, "after": True}


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
