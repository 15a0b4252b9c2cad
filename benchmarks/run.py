"""The benchmark pipeline: ``python -m benchmarks.run [hydra overrides]`` (default preset ``quick``).

For each tokenizer of the preset: train it, evaluate reconstruction, probe its features, measure its
throughput; for discrete tokenizers also extract tokens, train a class-conditional GPT on them and
score samples with and without classifier-free guidance. Every stage is cached by a content hash of
its inputs (``benchmarks/stages.py``); re-running an unchanged preset recomputes nothing. The run
ends by writing its record and regenerating every table and figure.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any

import torch

from benchmarks import pipeline
from benchmarks.config import BenchConfig, load_config, to_dict
from benchmarks.records import Row, build_record, make_run_id, write_record
from benchmarks.stages import StageRunner
from vfmtok import __version__
from vfmtok.checkpoint import code_version
from vfmtok.distributed import barrier, init_from_env, is_main

log = logging.getLogger("benchmarks")


def _configure(cfg: BenchConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={cfg.device!r} requested but CUDA is not available; use device=cpu")


def run_benchmark(overrides: list[str] | None = None, write_results: bool = True) -> dict[str, Any]:
    """Run (or fetch from the cache) every stage of a preset; return the run record."""
    cfg = load_config(overrides)
    _configure(cfg)
    init_from_env(cfg.device)
    started = time.perf_counter()
    runner = StageRunner(cfg.work_dir)
    data = pipeline.prepare_data(cfg)
    plan = pipeline.Plan(cfg, runner, data)
    rows: list[Row] = []
    specs: dict[str, dict[str, Any]] = {}
    artifacts: dict[str, Any] = {}
    for alias in cfg.tokenizers:
        result = plan.tokenizer(alias)
        specs[result.spec["name"]] = result.spec
        rows += result.rows
        artifacts[result.spec["name"]] = result.artifacts
    rows += pipeline.convergence_rows(rows)
    config = to_dict(cfg)
    record = build_record(
        run_id=make_run_id(config, __version__, data.fingerprints), preset=cfg.preset, config=config,
        code=code_version(), seeds={"seed": cfg.seed}, data=data.describe(), fid=plan.fid_info(), tokenizers=specs,
        rows=rows, notes=pipeline.notes(cfg, specs, rows), artifacts=artifacts)
    if write_results and is_main():
        from benchmarks.figures import render_figures
        from benchmarks.tables import render

        write_record(cfg.results_dir, record)
        render(cfg.results_dir)
        render_figures(cfg.results_dir, record, cfg.work_dir)
    barrier()  # the record and tables exist for every rank
    computed = sum(not h["cached"] for h in runner.history)
    log.info("done in %.1f s: %d stages computed, %d from cache", time.perf_counter() - started, computed,
             len(runner.history) - computed)
    return record


def torchrun_command(overrides: list[str], nproc: int, module: str = "benchmarks.run") -> list[str]:
    """The command that runs ``module`` with ``overrides`` under ``torchrun`` on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", module,
            *overrides]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; ``launcher=torchrun nproc=N`` re-launches itself under torchrun."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    overrides = sys.argv[1:] if argv is None else list(argv)
    cfg = load_config(overrides)
    if cfg.launcher == "torchrun" and cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return subprocess.call(torchrun_command(overrides, cfg.nproc))
    run_benchmark(overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
