"""The benchmark pipeline: ``python -m benchmarks.run [hydra overrides]`` (default preset ``quick``).

For each tokenizer of the preset: train it, evaluate reconstruction, probe its features, measure its
throughput; for discrete tokenizers also extract tokens, train a class-conditional GPT on them and
score samples with and without classifier-free guidance. Every stage is cached by a content hash of
its inputs (``benchmarks/stages.py``); re-running an unchanged preset recomputes nothing. The run
ends by writing its record and regenerating every table and figure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import OmegaConf

from benchmarks import context, pipeline
from benchmarks.config import (
    ARConfig,
    BenchConfig,
    DataConfig,
    SuiteConfig,
    TokenizerRunConfig,
    load_config,
    presets,
    run_label,
    to_dict,
)
from benchmarks.preflight import PreflightError, preflight
from benchmarks.records import Row, build_record, code_state, make_run_id, recorded_code, write_record
from benchmarks.stages import StageRunner
from benchmarks.tables import render
from benchmarks.weights import check_weights
from vfmtok import __version__
from vfmtok.distributed import barrier, init_from_env, is_main
from vfmtok.errors import ConfigError, debug_environment, debug_requested, run_guarded, strip_debug
from vfmtok.factory import describe_tokenizer, list_tokenizers
from vfmtok.fileio import clean_stale_tmp

log = logging.getLogger("benchmarks")


def _configure(cfg: BenchConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} requested but CUDA is not available; use device=cpu")


#: warnings every run on a machine without some optional weights shows, (text they contain, key): each is printed
#: once per process, not once per stage. The record keeps them where they matter: a missing LPIPS backbone is the
#: ``reason`` of every ``lpips`` row (also when the stage comes from the cache).
KNOWN_WARNINGS: tuple[tuple[str, str], ...] = (("perceptual loss disabled", "lpips"), ("LPIPS unavailable", "lpips"))
_known_seen: dict[str, str] = {}


def _collect_known_warnings() -> None:
    """Route :data:`KNOWN_WARNINGS` through a hook that prints each once and remembers it (idempotent)."""
    original = warnings.showwarning
    if getattr(original, "_vfmtok_known", False):
        return

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = str(message)
        for pattern, key in KNOWN_WARNINGS:
            if pattern in text:
                if key in _known_seen:
                    return
                _known_seen[key] = text
        original(message, category, filename, lineno, file, line)

    show._vfmtok_known = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def eta_line(done: int, total: int, elapsed_s: float, computed_s: list[float]) -> str:
    """Progress of the whole run after ``done`` of ``total`` tokenizers; the time left is estimated from the mean
    wall time of the tokenizers computed so far (cached ones take no time and are left out)."""
    line = f"run: {done}/{total} tokenizers done, {_duration(elapsed_s)} elapsed"
    if done < total and computed_s:
        line += f", about {_duration((total - done) * sum(computed_s) / len(computed_s))} left"
    return line


def run_benchmark(overrides: list[str] | None = None, write_results: bool = True) -> dict[str, Any]:
    """Run (or fetch from the cache) every stage of a preset; return the run record."""
    _collect_known_warnings()  # each known warning printed once per process
    cfg = load_config(overrides)
    _configure(cfg)
    check_weights(cfg)  # every released file the preset loads, all missing ones listed at once
    preflight(cfg)  # writable folders, data, weights, disk space: before any work
    init_from_env(cfg.device)
    started = time.perf_counter()
    runner = StageRunner(cfg.work_dir)
    data = context.prepare_data(cfg)
    plan = pipeline.Pipeline(cfg, runner, data)
    rows: list[Row] = []
    specs: dict[str, dict[str, Any]] = {}
    artifacts: dict[str, Any] = {}
    computed_s: list[float] = []  # wall time of each tokenizer that computed at least one stage
    for i, alias in enumerate(cfg.tokenizers):
        start, stages_before = time.perf_counter(), len(runner.history)
        result = plan.tokenizer(alias)
        if any(not h["cached"] for h in runner.history[stages_before:]):
            computed_s.append(time.perf_counter() - start)
        log.info(eta_line(i + 1, len(cfg.tokenizers), time.perf_counter() - started, computed_s))
        specs[result.spec["name"]] = result.spec
        rows += result.rows
        artifacts[result.spec["name"]] = result.artifacts
    rows += pipeline.convergence_rows(rows)
    config = to_dict(cfg)
    run_id = make_run_id(config, __version__, data.fingerprints)
    code = code_state(cfg.results_dir, cfg.work_dir)
    if all(h["cached"] for h in runner.history):  # the numbers are those of the code that computed them
        code = recorded_code(cfg.results_dir, run_id) or code
    record = build_record(
        run_id=run_id, preset=cfg.preset, config=config, code=code, seeds={"seed": cfg.seed}, data=data.describe(),
        fid=plan.fid_info(), tokenizers=specs, rows=rows, notes=pipeline.notes(cfg, specs, rows), artifacts=artifacts,
        label=run_label(cfg), stages=runner.timings())
    if write_results and is_main():
        from benchmarks.figures import render_figures  # heavy (matplotlib): only when results are written

        write_record(cfg.results_dir, record)
        runner.write_refs(record["run_id"])  # the cache entries this record depends on (`vfmtok cache gc`)
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


def help_text(prog: str = "python -m benchmarks.run") -> str:
    """Usage with the presets, the registered tokenizers (one line each) and the configuration defaults."""

    def defaults(prefix: str, node: Any) -> str:
        items = OmegaConf.to_container(OmegaConf.structured(node))
        return " ".join(f"{prefix}{k}={'REQUIRED' if v == '???' else str(v).replace(' ', '')}"  # ???: MISSING
                        for k, v in items.items() if not isinstance(v, dict))  # type: ignore[union-attr]

    names = list_tokenizers()
    width = max(map(len, names))
    lines = [
        f"usage: {prog} [--help] [--show] [--debug] [KEY=VALUE ...]",
        "",
        "Run the benchmark pipeline (same as `vfmtok bench` and `nox -s bench -- KEY=VALUE ...`): train each tokenizer",
        "of a preset, evaluate it, train a GPT on its tokens, and rewrite results/tables and results/figures.",
        "Arguments are hydra overrides, e.g. preset=smoke tokenizers=[vqgan] catalog.vqgan.steps=50 device=cuda.",
        "A run that differs from its preset is labelled preset+changes in every table row.",
        "",
        "options:",
        "  --help     this text",
        "  --show     print the composed configuration and the run's label, then exit without running",
        "  --debug    show the traceback of an error (also: VFMTOK_DEBUG=1)",
        "",
        "presets (preset=NAME, default quick):",
        *[f"  {name:<12} {text}" for name, text in presets().items()],
        "",
        "tokenizers (catalog.ALIAS.name=NAME; `vfmtok list -v NAME` prints a spec):",
        *[f"  {name:<{width}}  {describe_tokenizer(name).replace('``', '')}" for name in names],
        "",
        "defaults (every preset sets its own values; --show preset=NAME prints them):",
        *[textwrap.fill(defaults(prefix, node), width=118, initial_indent="  ", subsequent_indent="    ",
                        break_on_hyphens=False)
          for prefix, node in (("", _top_level_defaults()), ("data.", DataConfig),
                               ("catalog.ALIAS.", TokenizerRunConfig), ("ar.", ARConfig), ("suite.", SuiteConfig))],
    ]
    return "\n".join(lines) + "\n"


def _top_level_defaults() -> dict[str, Any]:
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(BenchConfig)
            if f.default is not dataclasses.MISSING and f.name != "preset"}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; ``launcher=torchrun nproc=N`` re-launches itself under torchrun.

    A known error (a bad override, a missing file, an out-of-range value) prints one line and exits 2;
    ``--debug`` or ``VFMTOK_DEBUG=1`` shows the traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(argv)
    overrides = strip_debug(argv)
    if any(a in ("-h", "--help") for a in overrides):
        print(help_text(), end="")
        return 0
    with debug_environment(debug):  # a torchrun re-launch inherits it
        return run_guarded(lambda: _main(overrides), prog="vfmtok bench", debug=debug)


def show(overrides: list[str]) -> str:
    """The composed configuration (YAML) of ``overrides`` and the label its rows would carry."""
    cfg = load_config(overrides)
    return f"# label: {run_label(cfg)}\n" + OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _main(overrides: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if "--show" in overrides:
        print(show([o for o in overrides if o != "--show"]), end="")
        return 0
    cfg = load_config(overrides)
    if os.environ.get("RANK", "0") == "0":
        removed = [p for d in (cfg.results_dir, cfg.work_dir) for p in clean_stale_tmp(d)]
        if removed:
            log.info("removed %d temporary file(s) of interrupted writes, e.g. %s", len(removed), removed[0])
    if cfg.launcher == "torchrun" and cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return subprocess.call(torchrun_command(overrides, cfg.nproc))
    with stop_on_signals():
        try:
            run_benchmark(overrides)
        except PreflightError as e:
            print(f"vfmtok bench: preflight failed: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", signal.SIGINT)
            where = f" during stage {e.stage}" if getattr(e, "stage", None) else ""
            command = f"vfmtok bench {shlex.join(overrides)}".rstrip()
            print(f"vfmtok bench: stopped by {signal.Signals(signum).name}{where}; finished stages are cached and no "
                  f"partial entry was kept. Resume with the same command: {command}", file=sys.stderr)
            return 128 + signum
    return 0


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM (like SIGINT) into a ``KeyboardInterrupt`` carrying ``.signum``, raised in the main thread:
    the current stage stops there, leaving its entry without a manifest (never served, resumed next time)."""
    def stop(signum: int, _frame: Any) -> None:
        e = KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")
        e.signum = signum  # type: ignore[attr-defined]
        raise e

    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    saved = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
