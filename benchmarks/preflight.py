"""Checks run before any work of a benchmark run, so it fails in its first second, not after an hour.

In order: ``results_dir``, ``work_dir`` and the decoded-array cache are writable; the data set's files are
present; every weight file the selected tokenizers load is present; the disk holding ``work_dir`` has room for
the run's outputs. The first failing check raises :class:`PreflightError`, whose one-line message names the
path and the fix.

Disk estimate (coarse, an upper bound for the shipped presets): the decoded uint8 arrays of the train, eval and
probe sets; per tokenizer, stage folders of ``TOKENIZER_BUDGET`` (checkpoints, tokenizer weights, frozen-encoder
features bounded by 16 float32 values per pixel, and the two token copies); per discrete tokenizer, an AR folder
of ``AR_BUDGET``; plus 25 % margin. ``test_*`` models (the smoke tests) get ``TEST_BUDGET`` instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from benchmarks.config import BenchConfig
from benchmarks.weights import resolve_file
from vfmtok.assets import data_root, work_cache_dir
from vfmtok.errors import UserError

GIB = 1 << 30
TOKENIZER_BUDGET = 2 * GIB  # checkpoints (weights + optimizer moments, a few copies) and the saved tokenizer
AR_BUDGET = 2 * GIB  # GPT checkpoints of one tokenizer
TEST_BUDGET = 64 << 20  # tiny test_* models of the smoke preset
MARGIN = 1.25


class PreflightError(UserError, RuntimeError):
    """A precondition of the run does not hold; the message names the path and the fix (one line)."""


def _writable(path: Path, what: str, key: str) -> None:
    """Create ``path`` if needed and write a probe file into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".preflight.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise PreflightError(f"{what} {path} is not writable ({reason}): make it writable or choose another folder "
                             f"with {key}=PATH") from None


def estimate_bytes(cfg: BenchConfig) -> int:
    """Coarse upper bound of the bytes the run writes (see the module docstring)."""
    d = cfg.data
    pixels = 3 * d.image_size * d.image_size
    total = (d.train_n + d.eval_n + d.probe_train_n) * pixels  # decoded uint8 arrays
    for alias in cfg.tokenizers:
        run = cfg.catalog[alias]
        test = run.name.startswith("test_")
        features = d.train_n * pixels * 16 * 2  # float32 features of plain + flipped images, bounded
        total += (TEST_BUDGET if test else TOKENIZER_BUDGET) + features
        if cfg.suite.generation:
            total += TEST_BUDGET if cfg.ar.model.startswith("test_") else AR_BUDGET
            total += d.train_n * 4096 * 4 * 2  # tokens (plain + flipped), at most 4096 int32 per image
            total += cfg.ar.num_samples * pixels * len(cfg.ar.cfg_scales)  # samples
    return int(total * MARGIN)


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def _data(cfg: BenchConfig) -> None:

    try:
        root = data_root()
    except FileNotFoundError as e:
        raise PreflightError(str(e)) from None
    name = cfg.data.name
    if name == "cifar10":
        folder = root / "cifar10" if (root / "cifar10").is_dir() else root
        needed = [folder / "train.tar.gz", folder / "test.tar.gz", folder / "official_order.json"]
    else:
        needed = [root / name / "val"] if cfg.data.stream else [root / name / "train", root / name / "val"]
    for path in needed:
        if not path.exists():
            raise PreflightError(f"data file {path} not found: put the {name} data set under VFMTOK_DATA={root} "
                                 f"(expected {', '.join(p.name for p in needed)})")


def _weights(cfg: BenchConfig) -> None:

    for alias in cfg.tokenizers:
        run = cfg.catalog[alias]
        if run.official and not run.checkpoint:
            raise PreflightError(f"tokenizer {alias!r} loads an official {run.official} checkpoint but none is given: "
                                 f"set catalog.{alias}.checkpoint=PATH")
        if run.checkpoint and not resolve_file(run.checkpoint).is_file():  # relative names: under VFMTOK_WEIGHTS
            raise PreflightError(f"weights file {run.checkpoint} of tokenizer {alias!r} not found: download it there "
                                 f"or set catalog.{alias}.checkpoint=PATH")


def preflight(cfg: BenchConfig) -> int:
    """Run every check in order (see the module docstring); return the disk estimate in bytes."""

    _writable(Path(cfg.results_dir), "results_dir", "results_dir")
    _writable(Path(cfg.work_dir), "work_dir", "work_dir")
    _writable(work_cache_dir("arrays").parent, "the decoded-array cache", "the environment variable VFMTOK_WORK_CACHE")
    _data(cfg)
    _weights(cfg)
    need = estimate_bytes(cfg)
    where = _existing_ancestor(Path(cfg.work_dir))
    free = shutil.disk_usage(where).free
    if free < need:
        raise PreflightError(f"not enough free disk space under {where}: the run needs about {need / GIB:.2f} GiB "
                             f"(coarse estimate), {free / GIB:.2f} GiB are free; free some space or set "
                             "work_dir=PATH on a larger disk")
    return need
