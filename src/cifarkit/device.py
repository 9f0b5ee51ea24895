"""Where and how a model runs: device choice, memory format, autocast, train/eval mode
(:func:`eval_mode`), the CPU allocator, and seeing through the wrappers a model runs in
(``DistributedDataParallel``'s ``module.``, ``torch.compile``'s ``_orig_mod.``), for modules and
for the keys of their ``state_dict``.

``device="auto"`` is resolved here and nowhere else. The memory-format helpers put a model and
its batches in the same layout once, so the training step itself never converts anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import sys
from collections.abc import Iterator, Mapping
from typing import Literal

import torch
from torch import nn

from cifarkit.errors import InvalidOptionError

__all__ = [
    "WRAPPER_PREFIXES",
    "Amp",
    "amp_dtype",
    "autocast",
    "cpu_has_int8_instructions",
    "cpu_supports_bf16",
    "eval_mode",
    "grad_scaler",
    "memory_format_for",
    "move_batch",
    "move_images",
    "place_model",
    "resolve_device",
    "retain_cpu_memory",
    "strip_wrapper_prefix",
    "unwrap_model",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else MPS, else CPU; anything else as ``torch.device``.

    Raises:
        InvalidOptionError: not a device name, or a CUDA/MPS device this machine does not have.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        msg = f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'"
        raise InvalidOptionError(msg) from exc
    _check_present(resolved)
    return resolved


def _check_present(device: torch.device) -> None:
    """Refuse a CUDA device (or index) or MPS that this machine does not have, with what it has."""
    mps = getattr(torch.backends, "mps", None)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            msg = f"device='{device}' is not available: this machine has {count} CUDA device(s); use 'auto' or 'cpu'"
            raise InvalidOptionError(msg)
    elif device.type == "mps" and not (mps is not None and mps.is_available()):
        msg = "device='mps' is not available (it needs Apple silicon and a torch built for it); use 'auto' or 'cpu'"
        raise InvalidOptionError(msg)


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX), so ``amp=True`` pays off.

    Example:
        >>> isinstance(cpu_supports_bf16(), bool)
        True
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def cpu_has_int8_instructions() -> bool:
    """True when this CPU has int8 dot-product instructions (AVX-512 VNNI or AMX), which
    an int8 program needs to run faster than fp32 (without them int8 is often slower).

    Example:
        >>> isinstance(cpu_has_int8_instructions(), bool)
        True
    """
    checks = ("_is_vnni_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


#: ``amp=``: ``False`` (fp32), ``True`` (the device's best), or a precision by name.
Amp = bool | Literal["bf16", "fp16"]


def amp_dtype(amp: Amp, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that ``amp`` means on ``device`` (``None``: no autocast).

    ``True`` picks bf16 where it is native (CUDA GPUs from Ampere on; CPUs, where it is at least
    correct) and fp16 on CUDA GPUs without bf16 (T4, V100), which then needs a gradient scaler.

    Raises:
        InvalidOptionError: an unknown value (e.g. ``"fp8"``).

    Example:
        >>> amp_dtype("fp16", torch.device("cpu")), amp_dtype(False, torch.device("cpu"))
        (torch.float16, None)
    """
    if amp is False:
        return None
    if amp is True:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        msg = f"amp={amp!r} is not valid; choose False, True, 'bf16' or 'fp16'"
        raise InvalidOptionError(msg)
    return dtypes[amp]


def autocast(device: torch.device, dtype: torch.dtype | bool | None) -> contextlib.AbstractContextManager[object]:
    """Autocast to ``dtype`` on ``device`` (``True``: bf16); no context at all for ``None``/``False``.

    Example:
        >>> with autocast(torch.device("cpu"), torch.bfloat16):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if dtype is None or dtype is False:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype is True else dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A ``torch.amp.GradScaler`` for fp16 (its small range needs loss scaling), else ``None``.

    Example:
        >>> grad_scaler(torch.device("cpu"), torch.float16).get_scale()
        65536.0
    """
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block, and give every module back its own mode after
    it, however the block ends (an exception, ``KeyboardInterrupt``, a generator closed early).

    Each module's ``training`` flag is restored as it was, not the top module's for all: a
    batch norm that a caller keeps in eval mode inside a training model stays so.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> net[1].eval()  # doctest: +ELLIPSIS
        Dropout(...)
        >>> with eval_mode(net):
        ...     net.training, net[0].training
        (False, False)
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def memory_format_for(model: nn.Module, channels_last: bool | None = None) -> torch.memory_format:
    """``torch.channels_last`` for models with ``Conv2d`` (or when asked), else contiguous.

    Example:
        >>> memory_format_for(nn.Conv2d(3, 8, 3)), memory_format_for(nn.Linear(2, 2))
        (torch.channels_last, torch.contiguous_format)
    """
    use = any(isinstance(m, nn.Conv2d) for m in model.modules()) if channels_last is None else channels_last
    return torch.channels_last if use else torch.contiguous_format


def place_model(model: nn.Module, device: torch.device, channels_last: bool | None = None) -> torch.memory_format:
    """Move ``model`` to ``device`` in its memory format (see :func:`memory_format_for`); return it.

    Idempotent: a model already in place is left as it is (parameters keep their identity, so an
    optimizer built on them stays valid).

    Example:
        >>> conv = nn.Conv2d(3, 8, 3)
        >>> place_model(conv, torch.device("cpu"))
        torch.channels_last
        >>> conv.weight.is_contiguous(memory_format=torch.channels_last)
        True
    """
    fmt = memory_format_for(model, channels_last)
    if not _in_place(model, device, fmt):  # two passes of Module.to cost more than a look
        model.to(device).to(memory_format=fmt)
    return fmt


def _in_place(model: nn.Module, device: torch.device, fmt: torch.memory_format) -> bool:
    """Every parameter and buffer on ``device`` (an index-less ``cuda`` never matches: moved to
    be sure) and every 4-d one in ``fmt``, as ``Module.to(memory_format=fmt)`` makes them."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.device != device or (tensor.ndim == 4 and not tensor.is_contiguous(memory_format=fmt)):
            return False
    return True


def move_images(x: torch.Tensor, device: torch.device, fmt: torch.memory_format) -> torch.Tensor:
    """Put images on ``device`` in ``fmt``; a tensor already there is not copied.

    Example:
        >>> move_images(torch.zeros(2, 3, 4, 4), torch.device("cpu"), torch.channels_last).is_contiguous(
        ...     memory_format=torch.channels_last)
        True
    """
    if x.ndim == 4 and not x.is_contiguous(memory_format=fmt):
        return x.to(device, non_blocking=True, memory_format=fmt)
    return x.to(device, non_blocking=True) if x.device != device else x


def move_batch(
    x: torch.Tensor, y: torch.Tensor, device: torch.device, fmt: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put a batch on ``device``, images in ``fmt`` (:func:`move_images`); tensors already there
    are not copied.

    Example:
        >>> x, y = move_batch(torch.zeros(2, 3, 4, 4), torch.zeros(2), torch.device("cpu"), torch.channels_last)
        >>> x.is_contiguous(memory_format=torch.channels_last)
        True
    """
    return move_images(x, device, fmt), y.to(device, non_blocking=True) if y.device != device else y


_ALLOCATOR_TUNED = False


def retain_cpu_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (Linux only).

    A conv net frees and re-allocates the same multi-MB activation buffers every step. By default
    glibc hands large freed blocks back to the OS (``munmap``/heap trimming), so every step
    page-faults them in again. Raising ``M_MMAP_THRESHOLD`` to its maximum (32 MiB) and
    ``M_TRIM_THRESHOLD`` to 1 GiB keeps them in the heap. The setting is **process-wide** and
    lasts until the process ends; the cost is that the process keeps its peak heap. Library
    calls never apply it (a library call changes nothing outside the objects it is given); call
    it yourself in a script you own. The ``cifarkit`` command, which owns its process, turns it
    on. ``benchmarks/README.md`` has the measured gain. Returns whether it was applied.

    Example:
        >>> isinstance(retain_cpu_memory(), bool)
        True
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
        ok = bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    _ALLOCATOR_TUNED = ok
    return ok


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
