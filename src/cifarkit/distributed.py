"""Run the same loop on many processes with PyTorch's own ``torch.distributed`` (DDP).

Launch any script that calls :func:`cifarkit.train_loop` with ``torchrun``::

    torchrun --nproc_per_node=2 -m cifarkit train --epochs 3

``train_loop``/``evaluate`` then detect the launch from ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``,
initialise the process group once (gloo on CPU, nccl on CUDA; an existing group is reused),
wrap the model in ``DistributedDataParallel`` and give each rank its shard of the data. Metrics are
summed over ranks so every rank's ``History`` holds the same global figures.

A :class:`DistContext` is the collaborator the loop is handed: :meth:`DistContext.single` for an
ordinary run, :func:`context` under ``torchrun``.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import inspect
import os
import sys
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.distributed_c10d import PrefixStore
from torch.distributed.rendezvous import rendezvous
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from cifarkit.data.loader import Loader
from cifarkit.errors import CifarkitError, DistributedError, cut

__all__ = [
    "DistContext",
    "all_max",
    "all_sum",
    "all_sum_tensor",
    "context",
    "default_timeout",
    "form_group",
    "is_main_process",
    "launched_by_torchrun",
    "round_prefix",
    "shard_data",
    "shard_dataloader",
    "share_threads",
    "sync_buffers",
    "translate_error",
    "wrap_model",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``active`` is false for an ordinary single-process run."""

    active: bool
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @classmethod
    def single(cls, device: torch.device) -> DistContext:
        """An ordinary single-process run on ``device``.

        Example:
            >>> DistContext.single(torch.device("cpu")).is_main
            True
        """
        return cls(False, 0, 1, 0, device)

    @property
    def is_main(self) -> bool:
        """True on the rank that prints, logs and saves (rank 0; every single-process run)."""
        return self.rank == 0


def is_main_process() -> bool:
    """True in the process that prints, logs and saves: rank 0 of an initialised process group,
    and every ordinary single-process run (the one way cifarkit asks).

    Example:
        >>> is_main_process()
        True
    """
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def launched_by_torchrun() -> bool:
    """True when ``WORLD_SIZE`` (set by ``torchrun``) is above 1.

    Example:
        >>> import os
        >>> launched_by_torchrun() == (int(os.environ.get("WORLD_SIZE", "1")) > 1)
        True
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_timeout() -> timedelta:
    """How long forming the group and every collective wait: ``CIFARKIT_DIST_TIMEOUT`` seconds
    (default 300), so a dead or missing peer cannot hang the others for ever."""
    return timedelta(seconds=float(os.environ.get("CIFARKIT_DIST_TIMEOUT", "300")))


def share_threads(local_world_size: int) -> int:
    """Give this process its share of the CPU cores (at least one thread) and return it.

    Several processes with a full thread pool each on a few cores oversubscribe them and run
    many times slower. ``OMP_NUM_THREADS``, when set (torchrun sets it to 1), wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        threads = max(1, (os.cpu_count() or 1) // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads


def _destroy() -> None:
    """Tear down the group this process formed, at exit, while the interpreter is whole.

    The ``DistributedDataParallel`` wrapper of a run sits in reference cycles that hold its
    reducer and the process group; only the garbage collector frees them. Left to the
    interpreter's shutdown, gloo's worker threads were torn down with Python half gone and a
    rank whose peer had died could abort ("terminate called without an active exception",
    exit -6) instead of exiting with its own code. Collecting first frees them here.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def context(distributed: bool | None, device: torch.device) -> DistContext:
    """Detect (or force) a distributed run and initialise the process group once.

    Args:
        distributed: ``None`` detects ``torchrun`` or an initialised group; ``True`` requires one;
            ``False`` never uses DDP.
        device: The requested device; under CUDA each rank takes ``cuda:LOCAL_RANK``.

    Raises:
        DistributedError: ``distributed=True`` without a launcher, or initialisation failed.
    """
    initialised = dist.is_available() and dist.is_initialized()
    wanted = (
        (launched_by_torchrun() or (initialised and dist.get_world_size() > 1)) if distributed is None else distributed
    )
    if not wanted:
        return DistContext.single(device)
    if not dist.is_available():
        msg = "this PyTorch build has no torch.distributed; pass distributed=False"
        raise DistributedError(msg)
    if not initialised:
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            msg = (
                "distributed=True but no process group is initialised and RANK/WORLD_SIZE are not "
                "set: launch with torchrun --nproc_per_node=N your_script.py, or pass distributed=False"
            )
            raise DistributedError(msg)
        share_threads(int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
        form_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)  # we created the group: we tear it down
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return DistContext(True, dist.get_rank(), dist.get_world_size(), local_rank, device)


def round_prefix() -> str:
    """The keys of this process group in the rendezvous store: ``cifarkit/<run>/round<n>/``.

    Under ``torchrun`` (torchelastic) the agent's store outlives a restart: torch 2.6 to 2.14 share
    the rendezvous' ``TCPStore`` with the workers (unless ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``),
    and the process group of every round writes the same keys in it. A restarted round would read
    the dead round's addresses and wait on them ("Gloo connectFullMesh failed ... Connection
    refused"). Named by ``TORCHELASTIC_RUN_ID`` and ``TORCHELASTIC_RESTART_COUNT``, each round
    keeps its own keys.

    Example:
        >>> import os
        >>> round_prefix() == f"cifarkit/{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/round" + (
        ...     os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") + "/")
        True
    """
    run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return f"cifarkit/{run}/round{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


def form_group(backend: str) -> None:
    """Initialise the default process group from the launcher's ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT``, in this restart round's own keys (:func:`round_prefix`),
    giving up after :func:`default_timeout`.

    The store comes from torch's own ``env://`` rendezvous (a client of the agent's store under
    torchelastic, else rank 0 hosts it); only its keys are prefixed. Every step that waits (the
    store's connection, the peers' addresses, gloo's connections) has the timeout; a watchdog
    ends the process with the same message should one of them not return, so that ``torchrun``
    can restart or stop the group instead of waiting without end.

    Raises:
        DistributedError: the group did not form within the timeout: the message names the rank,
            the address it waited on, and what to try.
    """
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = default_timeout()
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    msg = (
        f"rank {rank} of {world_size}: the {backend} process group did not form within "
        f"{timeout.total_seconds():.0f} s, waiting for the other processes at {where} (the rendezvous store). "
        "Check that every process was started (torchrun --nproc_per_node / --nnodes), that this address is "
        "reachable from every node, or raise CIFARKIT_DIST_TIMEOUT (seconds)"
    )
    watchdog = threading.Timer(timeout.total_seconds() + 30, _give_up, args=(msg,))
    watchdog.daemon = True
    watchdog.start()
    try:
        store, _, _ = next(rendezvous("env://", rank=rank, world_size=world_size, timeout=timeout))
        store.set_timeout(timeout)
        dist.init_process_group(
            backend, store=PrefixStore(round_prefix(), store), rank=rank, world_size=world_size, timeout=timeout
        )
    except Exception as exc:
        raise DistributedError(f"{msg}: {type(exc).__name__}: {cut(str(exc), 300)}") from exc
    finally:
        watchdog.cancel()


def _give_up(msg: str) -> None:
    """The watchdog's last word: a C++ call that ignored its timeout cannot be interrupted."""
    sys.stderr.write(f"cifarkit: error: DistributedError: {msg}\n")
    sys.stderr.flush()
    os._exit(1)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` (rank 0's weights are broadcast to all)."""
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics): DDP sends them at the
    start of each forward pass, so after an epoch's last step every rank holds its own."""
    if ctx.active:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def shard_data(data: Iterable[Any], ctx: DistContext, *, pad: bool) -> Iterable[Any]:
    """Give this rank its shard: a :class:`~cifarkit.data.loader.Loader`'s own ``shard``, or a
    ``DataLoader`` rebuilt around a ``DistributedSampler`` with all its other options kept.

    ``pad=True`` (training) pads every shard to the same length as ``DistributedSampler`` does;
    ``pad=False`` (evaluation) splits without duplicates (a ``DataLoader``'s sampler always pads).
    """
    if not ctx.active:
        return data
    if isinstance(data, Loader):
        return data.shard(ctx.rank, ctx.world_size, pad=pad)
    if isinstance(data, DataLoader):
        return shard_dataloader(data, ctx.rank, ctx.world_size)
    warnings.warn(
        f"cannot shard a {type(data).__name__} across ranks; every rank uses it as given "
        "(shard it yourself, or pass a TensorLoader or DataLoader)",
        stacklevel=3,
    )
    return data


#: DataLoader arguments that the sharded copy sets itself.
_SAMPLING_ARGS = frozenset({"self", "dataset", "sampler", "batch_sampler", "shuffle"})


def shard_dataloader(loader: DataLoader[Any], rank: int, world_size: int) -> DataLoader[Any]:
    """The same ``DataLoader`` with a ``DistributedSampler`` for ``rank``: every other constructor
    option (workers, ``collate_fn``, ``worker_init_fn``, ``generator``, ``persistent_workers``,
    ``prefetch_factor``, pinning...) is carried over as it was.

    A loader that already has a ``DistributedSampler`` is returned as it is.

    Raises:
        DistributedError: the loader batches with a custom ``batch_sampler`` (no safe way to shard it).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=2, shuffle=True, drop_last=True)
        >>> shard = shard_dataloader(loader, 1, 2)
        >>> type(shard.sampler).__name__, shard.batch_size, shard.drop_last, len(shard.sampler)
        ('DistributedSampler', 2, True, 5)
    """
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        msg = (
            "cannot shard a DataLoader built with a custom batch_sampler across ranks; give it a "
            "DistributedSampler yourself (torch.utils.data.DistributedSampler), or pass batch_size="
        )
        raise DistributedError(msg)
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        drop_last=loader.drop_last,
    )
    names = inspect.signature(DataLoader.__init__).parameters
    options = {name: getattr(loader, name) for name in names if name not in _SAMPLING_ARGS and hasattr(loader, name)}
    return DataLoader(loader.dataset, sampler=sampler, **options)


def _all_reduce(ctx: DistContext, values: list[float], op: Any) -> list[float]:
    # nccl reduces device tensors only; gloo works on CPU tensors.
    device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return [float(v) for v in tensor.cpu()]


def all_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (float64, one collective); identity when not active."""
    return _all_reduce(ctx, values, dist.ReduceOp.SUM) if ctx.active else values


def all_sum_tensor(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all ranks, returned on the CPU (one collective); a CPU copy when not active."""
    if not ctx.active:
        return tensor.cpu()
    device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    summed = tensor.to(device).clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.cpu()


def all_max(ctx: DistContext, value: float) -> float:
    """The largest ``value`` over all ranks (e.g. the slowest rank's seconds)."""
    return _all_reduce(ctx, [value], dist.ReduceOp.MAX)[0] if ctx.active else value


def translate_error(exc: BaseException, ctx: DistContext) -> BaseException:
    """Turn a failed collective into a :class:`DistributedError` naming the rank and the cause."""
    if not ctx.active or isinstance(exc, CifarkitError) or not isinstance(exc, RuntimeError):
        return exc
    msg = (
        f"rank {ctx.rank} of {ctx.world_size}: a collective operation failed, most likely because "
        f"another rank died or stalled (timeout {default_timeout().total_seconds():.0f} s, set "
        f"CIFARKIT_DIST_TIMEOUT to change it): {type(exc).__name__}: {exc}"
    )
    return DistributedError(msg)
