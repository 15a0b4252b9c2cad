"""What every throughput benchmark shares: the device and the peak-memory reading."""

from __future__ import annotations

import os
import resource
import sys

import torch

#: ``VFMTOK_BENCH_DEVICE`` (``nox -s perf -- device=cuda``), else the GPU when there is one
DEVICE = torch.device(os.environ.get("VFMTOK_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def reset_peak_memory() -> None:
    """Start a new GPU high-water mark (on CPU the peak RSS cannot be reset: it only grows)."""
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> tuple[str, float]:
    """``torch.cuda.max_memory_allocated`` on GPU, else the process's peak RSS, in MiB, with its name."""
    if DEVICE.type == "cuda":
        return "cuda_max_memory_allocated_mb", torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return "peak_rss_mb", rss / (2**20 if sys.platform == "darwin" else 2**10)


def synchronize() -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def device_info() -> dict[str, object]:
    """The device a benchmark ran on (GPU model, else CPU threads)."""
    name = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu"
    return {"device": DEVICE.type, "device_name": name, "threads": torch.get_num_threads()}
