"""Throughput measurement: warm-up, device synchronisation, items per second."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Throughput:
    """Result of :func:`measure`."""

    items_per_s: float
    seconds_per_iter: float
    batch_items: int
    iters: int


def measure(fn: Callable[[], object], *, batch_items: int, warmup: int = 2, iters: int = 5,
            device: str | torch.device = "cpu") -> Throughput:
    """Call ``fn`` ``warmup`` times, then time ``iters`` calls (CUDA-synchronised); ``batch_items`` per call."""
    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    per_iter = (time.perf_counter() - start) / iters
    return Throughput(batch_items / per_iter, per_iter, batch_items, iters)
