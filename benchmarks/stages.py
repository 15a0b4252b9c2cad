"""Content-addressed, resumable pipeline stages.

A stage's output lives in ``<work_dir>/<stage>/<key>/`` where ``key`` hashes the stage name, its version
and its inputs (configuration, upstream results, data fingerprints). ``result.json`` is written last and
atomically: its presence means the stage finished, and a re-run with the same inputs returns it
without recomputing. A killed stage leaves no ``result.json``; its own checkpoints in the same
folder let it resume.

Under ``torchrun`` a *collective* stage (training, token extraction, sampling) runs on every rank; any other
stage runs on rank 0 while the others wait. Rank 0 alone writes ``result.json``, and every rank returns it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vfmtok.distributed import barrier, is_main
from vfmtok.fileio import atomic_write_json, sha256_json

log = logging.getLogger("benchmarks")

#: bump a stage's version when its semantics change, so old cached results are not reused
STAGE_VERSIONS: dict[str, int] = {
    "train_tokenizer": 1,
    "eval_recon": 1,
    "probe": 1,
    "tokens": 1,
    "train_ar": 1,
    "generate": 1,
    "throughput": 1,
    "reference": 1,
}


def stage_key(stage: str, inputs: dict[str, Any]) -> str:
    """Short content hash naming a stage's output folder."""
    if stage not in STAGE_VERSIONS:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGE_VERSIONS)}")
    return sha256_json({"stage": stage, "version": STAGE_VERSIONS[stage], "inputs": inputs})[:16]


class StageRunner:
    """Runs stages through the cache and keeps a log of what was computed and what was reused."""

    def __init__(self, work_dir: str | Path) -> None:
        self.work_dir = Path(work_dir)
        self.history: list[dict[str, Any]] = []

    def path(self, stage: str, inputs: dict[str, Any]) -> Path:
        """Folder of a stage's output."""
        return self.work_dir / stage / stage_key(stage, inputs)

    def run(self, stage: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]], label: str = "",
            collective: bool = False) -> dict:
        """Return the cached result of ``stage`` for ``inputs``, computing ``fn(folder)`` if absent.

        ``collective``: ``fn`` takes part in collectives, so every rank calls it (else rank 0 alone does).
        """
        folder = self.path(stage, inputs)
        done = folder / "result.json"
        if done.is_file():
            result = json.loads(done.read_text())
            self.history.append({"stage": stage, "label": label, "cached": True, "key": folder.name})
            if is_main():
                log.info("%-16s %-28s cached (%s)", stage, label, folder.name)
            return result
        if is_main():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / "inputs.json", inputs)
            log.info("%-16s %-28s running (%s)", stage, label, folder.name)
        barrier()  # the folder exists, and every rank has seen that the stage must run
        if collective or is_main():
            start = time.perf_counter()
            result = fn(folder)
            if is_main():
                atomic_write_json(done, {**result, "seconds": round(time.perf_counter() - start, 3)})
        barrier()
        self.history.append({"stage": stage, "label": label, "cached": False, "key": folder.name})
        return json.loads(done.read_text())
