"""Content-addressed, verified, resumable pipeline stages.

A stage's output is an entry of the store (:mod:`vfmtok.store`) under ``work_dir``: ``<work_dir>/<stage>/<key>/``
where ``key`` hashes the stage name, its version and its inputs (configuration, upstream results, data
fingerprints). ``result.json`` and the stage's files are written atomically, then ``MANIFEST.json`` (sha256 and
size of every file) last: its presence means the stage finished. A re-run with the same inputs verifies the
manifest and returns the result without recomputing; a damaged entry is moved to ``<work_dir>/.quarantine`` with
one warning line and recomputed. A killed stage leaves no manifest; its own checkpoints in the same folder let it
resume.

Each stage runs under a file lock on its entry: a second run of the same preset waits for the stage, then reuses
its result (and says so), so every stage is computed once.

Under ``torchrun`` a *collective* stage (training, token extraction, sampling) runs on every rank; any other
stage runs on rank 0 while the others wait. Rank 0 alone verifies, locks and writes the entry, and every rank
returns its result.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.records import machine
from vfmtok import store
from vfmtok.distributed import barrier, is_main
from vfmtok.fileio import atomic_write_json
from vfmtok.progress import heartbeat

log = logging.getLogger("benchmarks")

#: bump a stage's version when its semantics change, so old cached results are not reused
STAGE_VERSIONS: dict[str, int] = {
    "train_tokenizer": 1,
    "eval_recon": 2,
    "probe": 1,
    "tokens": 1,
    "train_ar": 1,
    "generate": 2,
    "throughput": 1,
    "reference": 1,
}
REFS = ".refs"  # <work_dir>/.refs/<run_id>.json: the entries a run used (kept alive by `vfmtok cache gc`)


def stage_key(stage: str, inputs: dict[str, Any]) -> str:
    """Short content hash naming a stage's output folder."""
    if stage not in STAGE_VERSIONS:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGE_VERSIONS)}")
    return store.entry_key(stage, STAGE_VERSIONS[stage], inputs)


class StageRunner:
    """Runs stages through the store and keeps a log of what was computed and what was reused."""

    def __init__(self, work_dir: str | Path, heartbeat_s: float = 30.0) -> None:
        self.work_dir = Path(work_dir)
        self.store = store.Store(self.work_dir)
        self.heartbeat_s = heartbeat_s
        self.history: list[dict[str, Any]] = []

    def entry(self, stage: str, inputs: dict[str, Any], label: str = "") -> store.Entry:
        """The store entry of a stage."""
        if stage not in STAGE_VERSIONS:
            raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGE_VERSIONS)}")
        return self.store.entry(stage, STAGE_VERSIONS[stage], inputs, f"{stage} {label}".strip())

    def path(self, stage: str, inputs: dict[str, Any]) -> Path:
        """Folder of a stage's output."""
        return self.entry(stage, inputs).path

    def run(self, stage: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]], label: str = "",
            collective: bool = False) -> dict:
        """Return the verified cached result of ``stage`` for ``inputs``, computing ``fn(folder)`` if absent.

        ``collective``: ``fn`` takes part in collectives, so every rank calls it (else rank 0 alone does).
        A ``KeyboardInterrupt`` (SIGINT, or SIGTERM in ``benchmarks.run``) passes through with ``.stage`` set;
        the entry then has no manifest and is never served.
        """
        entry = self.entry(stage, inputs, label)
        folder = entry.path

        def waiting() -> None:
            log.info("%-16s %-28s waiting: another run holds %s", stage, label, entry.lock_path)

        lock = entry.lock(waiting) if is_main() else contextlib.nullcontext(False)
        try:
            with lock as waited:
                if is_main():
                    entry.check()  # verify; a damaged entry is quarantined and so recomputed below
                barrier()  # rank 0 has verified (and possibly quarantined) before any rank looks
                if entry.complete():
                    result = store.read_json(folder, "result.json")
                    self._log(stage, label, folder, result, cached=True)
                    if is_main():
                        how = "reused the result of the other run" if waited else "cached"
                        log.info("%-16s %-28s %s (%s)", stage, label, how, folder.name)
                    return result
                if is_main():
                    folder.mkdir(parents=True, exist_ok=True)
                    atomic_write_json(folder / "inputs.json", inputs)
                    log.info("%-16s %-28s running (%s)", stage, label, folder.name)
                barrier()  # the folder exists, and every rank has seen that the stage must run
                if collective or is_main():
                    start = time.perf_counter()
                    with heartbeat(f"{stage} {label}".strip(), self.heartbeat_s, enabled=is_main()):
                        result = fn(folder)
                    if is_main():
                        atomic_write_json(folder / "result.json", {**result, "machine": machine(),
                                                                   "seconds": round(time.perf_counter() - start, 3)})
                        entry.commit()
                barrier()
        except KeyboardInterrupt as e:
            if not getattr(e, "stage", None):
                e.stage = f"{stage} {label}".strip()  # type: ignore[attr-defined]
            raise
        result = store.read_json(folder, "result.json")
        self._log(stage, label, folder, result, cached=False)
        return result

    def _log(self, stage: str, label: str, folder: Path, result: dict[str, Any], cached: bool) -> None:
        self.history.append({"stage": stage, "label": label, "cached": cached, "key": folder.name,
                             "seconds": result.get("seconds"), "machine": result.get("machine")})

    def timings(self) -> list[dict[str, Any]]:
        """Each stage's wall time and machine as measured when it was computed (the same from the cache)."""
        return [{k: h[k] for k in ("stage", "label", "seconds", "machine")} for h in self.history]

    def write_refs(self, run_id: str) -> Path | None:
        """Record which complete entries under ``work_dir`` this process used, for run ``run_id`` (rank 0)."""
        if not is_main():
            return None
        root = self.work_dir.resolve()
        used = sorted(p.relative_to(root).as_posix() for p in store.touched
                      if p.is_relative_to(root) and len(p.relative_to(root).parts) == 2)
        return atomic_write_json(self.work_dir / REFS / f"{run_id}.json", {"run_id": run_id, "entries": used})
