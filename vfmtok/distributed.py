"""One code path for one process and for ``torchrun``: ranks, process group, DDP wrapping, ordered gathers.

Nothing here is home-made communication: it is ``torch.distributed`` (gloo on CPU, NCCL on CUDA) started from
the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
Without a process group every helper degenerates to the one-process case, so callers never branch.

Work over ``n`` items is split into *chunks* of ``batch_size`` consecutive items; chunk ``c`` goes to rank
``c % world``. :func:`ordered_map` runs a function over a rank's chunks and returns every rank's results in
item order, so a cache or a sample set built by N processes is identical to the one-process one, provided
the function's result for a chunk depends on the chunk alone (seed its randomness with :func:`derive_seed`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

#: how long ranks wait for each other (rank 0 may run a long single-process stage meanwhile)
TIMEOUT = datetime.timedelta(hours=2)


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files."""
    return rank_world()[0] == 0


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes in the environment; return whether one is in use.

    The backend is NCCL for CUDA devices (each rank on ``cuda:LOCAL_RANK``) and gloo otherwise. A no-op when
    ``WORLD_SIZE`` is unset or 1, or when a group already exists.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is set but {missing} are not: launch with torchrun")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return True


def local_device(device: str) -> str:
    """``device`` with CUDA pinned to this rank's GPU (``cuda:LOCAL_RANK``) under torchrun."""
    if torch.device(device).type == "cuda" and is_distributed():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def wrap_ddp(model: nn.Module, device: torch.device | str, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` inside a process group, else ``model`` itself."""
    if not is_distributed():
        return model
    device = torch.device(device)
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def sync_on_last(model: nn.Module, micro_batch: int, micro_batches: int) -> contextlib.AbstractContextManager:
    """Gradient accumulation: DDP's ``no_sync()`` for every micro-batch but the last (a no-op when unwrapped)."""
    wrapped = isinstance(model, nn.parallel.DistributedDataParallel)
    return model.no_sync() if wrapped and micro_batch < micro_batches - 1 else contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mix64(*values: int) -> int:
    """A 64-bit integer hash (splitmix64 steps) of ``values``."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks (for logging the global-batch loss); ``values`` in one process."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.cpu())}


def derive_seed(*values: int) -> int:
    """A seed for ``torch.Generator.manual_seed`` from integers: independent streams per (seed, chunk, ...)."""
    return mix64(*values) >> 1


def _gather_padded(part: torch.Tensor, rows: int, world: int) -> list[torch.Tensor]:
    """All ranks' ``part`` (first dim padded to ``rows`` for the collective), in rank order."""
    padded = part.new_zeros((rows, *part.shape[1:]))
    padded[:len(part)] = part
    if part.device.type == "cpu" and dist.get_backend() == "nccl":
        padded = padded.cuda()
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [t.cpu() for t in out]


def ordered_rounds(fn: Callable[[range], Sequence[torch.Tensor]], n: int,
                   batch_size: int) -> Iterator[tuple[range, list[torch.Tensor]]]:
    """Run ``fn`` over this rank's chunks of ``range(n)``; yield each round's items and every rank's results.

    ``fn(items)`` gets a range of at most ``batch_size`` consecutive items and returns a sequence of tensors whose
    first dimension is ``len(items)``. A round covers ``batch_size * world`` consecutive items (one chunk per
    rank); every rank receives the round's results in item order, on the CPU. Ranks step through the rounds in
    lockstep; a rank without a chunk in the last round computes a one-item chunk that is discarded.
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"need n > 0 and batch_size > 0, got {n} and {batch_size}")
    rank, world = rank_world()
    for first in range(0, n, batch_size * world):
        starts = [min(first + r * batch_size, n) for r in range(world)]
        chunks = [range(s, min(s + batch_size, n)) for s in starts]
        mine = chunks[rank] if len(chunks[rank]) else range(0, 1)
        outputs = [torch.as_tensor(t).detach() for t in fn(mine)]
        if any(len(t) != len(mine) for t in outputs):
            raise ValueError(f"fn returned first dimensions {[len(t) for t in outputs]} for {len(mine)} items")
        merged = []
        for out in outputs:
            gathered = [out.cpu()] if world == 1 else _gather_padded(out, batch_size, world)
            merged.append(torch.cat([g[:len(c)] for g, c in zip(gathered, chunks) if len(c)]))
        yield range(first, min(first + batch_size * world, n)), merged


def ordered_map(fn: Callable[[range], Sequence[torch.Tensor]], n: int, batch_size: int) -> list[torch.Tensor]:
    """All of :func:`ordered_rounds`' results, concatenated in item order (on every rank)."""
    rounds = [outputs for _, outputs in ordered_rounds(fn, n, batch_size)]
    return [torch.cat(parts) for parts in zip(*rounds)]
