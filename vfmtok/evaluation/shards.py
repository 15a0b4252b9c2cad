"""Ordered, resumable shards: one process or many, killed and rerun, the same final files.

Items ``0 .. n-1`` are split into fixed shards of ``shard_size`` consecutive items (a multiple of the batch
size, so every batch is the same whoever computes it). Shard ``s`` belongs to rank ``s % world``; it is written
atomically to ``OUT/shards/{s:05d}.npz`` (images and per-item side data). A rerun skips every complete shard, so
a killed run continues where it stopped. ``OUT/shards/plan.json`` records the plan and the run's settings; a
rerun with other settings refuses to mix its shards with the old ones (nothing is deleted).

Rank 0 then streams the shards in order into the final ADM npz (:class:`vfmtok.metrics.reference.NpzWriter`,
bounded memory), so the final file does not depend on the number of processes and never passes through memory
whole.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vfmtok.distributed import barrier, rank_world
from vfmtok.fileio import atomic_write, atomic_write_json, sha256_json

SHARD_DIR = "shards"
PLAN_FILE = "plan.json"
DEFAULT_SHARD_BATCHES = 8  # shard size = this many batches unless given


@dataclass(frozen=True)
class ShardPlan:
    """``n`` items in shards of ``shard_size`` (a multiple of ``batch_size``)."""

    n: int
    batch_size: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.n <= 0 or self.batch_size <= 0 or self.shard_size <= 0:
            raise ValueError(f"need n, batch_size and shard_size > 0, got {self.n}, {self.batch_size}, "
                             f"{self.shard_size}")
        if self.shard_size % self.batch_size:
            raise ValueError(f"shard_size ({self.shard_size}) must be a multiple of batch_size ({self.batch_size})")

    @classmethod
    def make(cls, n: int, batch_size: int, shard_size: int | None = None) -> ShardPlan:
        """A plan with ``shard_size`` defaulting to :data:`DEFAULT_SHARD_BATCHES` batches."""
        return cls(n, batch_size, shard_size or batch_size * DEFAULT_SHARD_BATCHES)

    @property
    def num_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def items(self, s: int) -> range:
        """The items of shard ``s``."""
        return range(s * self.shard_size, min((s + 1) * self.shard_size, self.n))

    def owned(self, rank: int, world: int) -> list[int]:
        """The shards rank ``rank`` of ``world`` computes."""
        return list(range(rank, self.num_shards, world))


def shard_path(out_dir: str | Path, s: int) -> Path:
    """``OUT/shards/{s:05d}.npz``."""
    return Path(out_dir) / SHARD_DIR / f"{s:05d}.npz"


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an uncompressed npz, atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def read_shard(path: Path) -> dict[str, np.ndarray]:
    """Every array of a shard file (one shard: bounded memory)."""
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable shard ({e}); delete it and rerun to recompute it") from e


def shard_complete(path: Path, items: range) -> bool:
    """True when ``path`` is a readable shard holding exactly ``items``."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as f:
            return "items" in f.files and f["items"].tolist() == [items.start, items.stop]
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def _check_plan(out_dir: Path, plan: ShardPlan, settings: dict[str, Any]) -> None:
    """Raise if ``OUT/shards`` belongs to a run with another plan or other settings."""
    path = out_dir / SHARD_DIR / PLAN_FILE
    want = {"n": plan.n, "batch_size": plan.batch_size, "shard_size": plan.shard_size, "settings": settings,
            "settings_sha256": sha256_json(settings)}
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is unreadable ({e}); delete {path.parent} to start over") from e
        if have.get("settings_sha256") != want["settings_sha256"] or \
                [have.get(k) for k in ("n", "batch_size", "shard_size")] != [plan.n, plan.batch_size, plan.shard_size]:
            old = {"n": have.get("n"), "batch_size": have.get("batch_size"), "shard_size": have.get("shard_size"),
                   **(have.get("settings") or {})}
            new = {"n": plan.n, "batch_size": plan.batch_size, "shard_size": plan.shard_size, **settings}
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(f"{out_dir} holds shards of another run (differing: {', '.join(diff) or 'settings'}); "
                             f"pass another output folder, or delete {path.parent} to start over")
    return None


def pending_shards(out_dir: str | Path, plan: ShardPlan, max_shards: int | None = None) -> list[int]:
    """The shards this rank still has to compute, in order (at most ``max_shards``)."""
    rank, world = rank_world()
    todo = [s for s in plan.owned(rank, world) if not shard_complete(shard_path(out_dir, s), plan.items(s))]
    return todo if max_shards is None else todo[:max_shards]


def run_shards(out_dir: str | Path, plan: ShardPlan, compute: Callable[[range], dict[str, np.ndarray]], *,
               settings: dict[str, Any], max_shards: int | None = None,
               on_shard: Callable[[int, int], None] | None = None) -> bool:
    """Compute this rank's missing shards; return True when every shard of the plan is complete (on all ranks).

    ``compute(items)`` returns the arrays of one shard (``items`` is added); it is called for the shards of
    :func:`pending_shards`, in that order (so a caller may stream their items from one loader). ``settings``
    (plain data) must equal those of the run that wrote existing shards. ``max_shards``: compute at most that
    many shards in this call (per rank), then stop; a rerun continues. ``on_shard(done, total)`` reports progress.
    """
    out_dir = Path(out_dir)
    rank, _ = rank_world()
    _check_plan(out_dir, plan, settings)
    barrier()
    if rank == 0 and not (out_dir / SHARD_DIR / PLAN_FILE).is_file():
        atomic_write_json(out_dir / SHARD_DIR / PLAN_FILE,
                          {"n": plan.n, "batch_size": plan.batch_size, "shard_size": plan.shard_size,
                           "settings": settings, "settings_sha256": sha256_json(settings)})
    todo = pending_shards(out_dir, plan, max_shards)
    for done, s in enumerate(todo):
        items = plan.items(s)
        arrays = compute(items)
        write_shard(shard_path(out_dir, s), {**arrays, "items": np.asarray([items.start, items.stop], np.int64)})
        if on_shard is not None:
            on_shard(done + 1, len(todo))
    barrier()
    return all(shard_complete(shard_path(out_dir, s), plan.items(s)) for s in range(plan.num_shards))


def iter_shards(out_dir: str | Path, plan: ShardPlan) -> Iterator[tuple[range, dict[str, np.ndarray]]]:
    """(items, arrays) of every shard, in order; a missing shard raises."""
    for s in range(plan.num_shards):
        path, items = shard_path(out_dir, s), plan.items(s)
        if not shard_complete(path, items):
            raise FileNotFoundError(f"shard {path} is missing or incomplete; rerun the command to compute it")
        yield items, read_shard(path)


class RunningMoments:
    """Mean and covariance (N - 1 denominator) of float vectors added in blocks, in float64.

    Blocks are merged with Chan et al.'s pairwise update of (n, mean, M2 = sum of centred outer products), which
    stays accurate where the naive sum of x x^T loses digits to cancellation.
    """

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None  # type: ignore[var-annotated]

    def add(self, x: np.ndarray) -> None:
        """Add float [B, D] vectors."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or not len(x):
            raise ValueError(f"expected float vectors [B > 0, D], got shape {x.shape}")
        mean_b = x.mean(0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self.n == 0:
            self.n, self.mean, self.m2 = len(x), mean_b, m2_b
            return
        n_a, n_b = self.n, len(x)
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.n = n

    def covariance(self) -> np.ndarray:
        """float64 [D, D] covariance with the N - 1 denominator (as :meth:`GaussianStats.of`)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 vectors, got {self.n}")
        return self.m2 / (self.n - 1)
