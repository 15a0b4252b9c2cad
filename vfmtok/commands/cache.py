"""``vfmtok cache verify`` and ``vfmtok cache gc``: check every cache entry against its manifest, and remove the
stage entries no run record refers to.

``verify`` walks the stage cache (``--work-dir``) and the shared caches (decoded arrays, reference statistics,
probe features, converted weights under ``VFMTOK_WORK_CACHE`` / ``VFMTOK_CACHE``), re-hashes every file of every
complete entry and prints one line per damaged or incomplete entry; ``--fix`` moves damaged entries to
``.quarantine``. Exit status 1 when an entry is damaged.

``gc`` keeps the entries listed in ``<work-dir>/.refs/<run_id>.json`` for every record under
``<results-dir>/runs`` (each run writes that list next to its record) and removes every other entry of the work
dir. It refuses to run while a stage lock is held (a run in progress) and skips entries younger than
``--min-age`` minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from vfmtok import store
from vfmtok.assets import cache_dir, work_cache_dir
from vfmtok.errors import UserError

SHARED_KINDS = ("arrays", "features", "fid_reference", "probe_features", "fid_inception_converted")
REFS = ".refs"


def _roots(work_dir: Path) -> list[tuple[Path, tuple[str, ...] | None]]:
    """(root, kinds to look at; None = every kind) of each cache."""

    roots: list[tuple[Path, tuple[str, ...] | None]] = [(work_dir, None)]
    for root in (work_cache_dir("x").parent, cache_dir()):
        if all(root.resolve() != r.resolve() for r, _ in roots):
            roots.append((root, SHARED_KINDS))
    return roots


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def verify_all(work_dir: Path, fix: bool = False, out=sys.stdout) -> dict[str, int]:
    """Verify every entry; print one line per problem and a summary; return the counts."""
    counts = {"intact": 0, "incomplete": 0, "damaged": 0, "bytes": 0}
    start = time.perf_counter()
    for root, kinds in _roots(work_dir):
        for kind, folder in store.Store(root).entries():
            if kinds is not None and kind not in kinds:
                continue
            problems = store.verify(folder)
            if problems is None:
                counts["incomplete"] += 1
                print(f"incomplete {kind}/{folder.name} ({folder}): no {store.MANIFEST} (in progress or interrupted; "
                      "the next run resumes or rebuilds it)", file=out)
            elif problems:
                counts["damaged"] += 1
                where = f"moved to {store.quarantine(folder, root, kind)}" if fix else "run with --fix to move it aside"
                print(f"damaged {kind}/{folder.name}: {problems[0]}"
                      f"{f' (+{len(problems) - 1} more)' if len(problems) > 1 else ''}; {where}", file=out)
            else:
                counts["intact"] += 1
                counts["bytes"] += _size(folder)
    seconds = time.perf_counter() - start
    print(f"{counts['intact']} intact ({counts['bytes'] / 2**20:.1f} MiB hashed in {seconds:.1f} s), "
          f"{counts['incomplete']} incomplete, {counts['damaged']} damaged", file=out)
    return counts


def gc(work_dir: Path, results_dir: Path, *, dry_run: bool = False, force: bool = False, min_age_s: float = 600.0,
       quarantine: bool = False, out=sys.stdout) -> list[Path]:
    """Remove the entries of ``work_dir`` that no record of ``results_dir`` refers to; return them."""
    locks = work_dir / store.LOCKS
    held = [p for p in locks.rglob("*.lock") if store.is_locked(p)] if locks.is_dir() else []
    if held:
        raise UserError(f"a run is in progress ({held[0]} is locked): run `vfmtok cache gc` when it has ended")
    live: set[str] = set()
    run_ids = sorted(p.parent.name for p in results_dir.glob("runs/*/record.json"))
    for run_id in run_ids:
        refs = work_dir / REFS / f"{run_id}.json"
        if not refs.is_file():
            if force:
                continue
            raise UserError(f"record {results_dir / 'runs' / run_id} has no list of cache entries ({refs} is "
                            "missing): re-run its preset once (everything is served from the cache) or pass --force")
        live.update(json.loads(refs.read_text())["entries"])
    removed: list[Path] = []
    now = time.time()
    for kind, folder in store.Store(work_dir).entries():
        rel = f"{kind}/{folder.name}"
        if rel in live or now - folder.stat().st_mtime < min_age_s:
            continue
        removed.append(folder)
    if quarantine and (work_dir / store.QUARANTINE).is_dir():
        removed += sorted(p for p in (work_dir / store.QUARANTINE).glob("*/*"))
    total = 0
    for folder in removed:
        total += _size(folder) if folder.is_dir() else folder.stat().st_size
        print(f"{'would remove' if dry_run else 'removing'} {folder}", file=out)
        if not dry_run:
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    if not dry_run:
        for refs in (work_dir / REFS).glob("*.json"):
            if refs.stem not in run_ids:
                refs.unlink()
    print(f"{'would free' if dry_run else 'freed'} {total / 2**20:.1f} MiB in {len(removed)} entries; "
          f"kept {len(live)} entries of {len(run_ids)} records", file=out)
    return removed


def _verify(args: argparse.Namespace) -> int:
    counts = verify_all(Path(args.work_dir), fix=args.fix)
    return 1 if counts["damaged"] and not args.fix else 0


def _gc(args: argparse.Namespace) -> int:
    gc(Path(args.work_dir), Path(args.results_dir), dry_run=args.dry_run, force=args.force,
       min_age_s=60.0 * args.min_age, quarantine=args.quarantine)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cache verify`` and ``cache gc`` to the ``vfmtok`` parser."""
    p = subparsers.add_parser("cache", help="verify or clean the caches (stage results, arrays, features, ...)")
    sub = p.add_subparsers(dest="cache_command", required=True)
    v = sub.add_parser("verify", help="re-hash every cache entry against its manifest")
    v.add_argument("--work-dir", default="results/work", help="the stage cache (default: results/work)")
    v.add_argument("--fix", action="store_true", help="move damaged entries to .quarantine")
    v.set_defaults(func=_verify)
    g = sub.add_parser("gc", help="remove stage entries that no run record refers to")
    g.add_argument("--work-dir", default="results/work", help="the stage cache (default: results/work)")
    g.add_argument("--results-dir", default="results", help="where the run records are (default: results)")
    g.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    g.add_argument("--force", action="store_true", help="ignore records that have no list of cache entries")
    g.add_argument("--min-age", type=float, default=10.0, help="keep entries younger than this many minutes")
    g.add_argument("--quarantine", action="store_true", help="also empty .quarantine")
    g.set_defaults(func=_gc)
