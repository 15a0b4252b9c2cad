"""Throughput measurement: warm-up, device synchronisation, images/s and tokens/s."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Throughput:
    """Result of :func:`measure`: rates over the timed calls (warm-up excluded)."""

    items_per_s: float  # images per second
    tokens_per_s: float | None  # items/s x tokens per item, when given
    seconds_per_iter: float
    batch_items: int
    iters: int
    warmup: int
    device: str

    @property
    def images_per_s(self) -> float:
        """Alias of ``items_per_s`` for image workloads."""
        return self.items_per_s


def synchronize(device: str | torch.device) -> None:
    """Wait for queued work on ``device`` (CUDA/MPS); a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(fn: Callable[[], object], *, batch_items: int, tokens_per_item: int | None = None, warmup: int = 2,
            iters: int = 5, device: str | torch.device = "cpu") -> Throughput:
    """Call ``fn`` ``warmup`` times, then time ``iters`` calls between device synchronisations.

    ``batch_items``: images processed per call; ``tokens_per_item``: tokens per image (e.g. ``spec.num_tokens``)
    to also report tokens/s.
    """
    if batch_items < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch_items >= 1, iters >= 1, warmup >= 0; got {batch_items}, {iters}, {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    per_iter = (time.perf_counter() - start) / iters
    rate = batch_items / per_iter
    return Throughput(rate, rate * tokens_per_item if tokens_per_item else None, per_iter, batch_items, iters,
                      warmup, str(torch.device(device)))
