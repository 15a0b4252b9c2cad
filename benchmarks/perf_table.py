"""The throughput table of one ``nox -s perf`` run: pytest-benchmark JSON in, ``results/perf/<device>.md`` out.

Each row is one benchmark: its rate (images/s, tokens/s or steps/s; the best round, the number to quote on a
shared machine), its peak memory (``torch.cuda.max_memory_allocated`` on GPU, peak RSS on CPU) and the
settings it ran with. The file name and heading carry the device (the GPU model, or the CPU and threads).

    python -m benchmarks.perf_table .benchmarks/perf-latest.json results/perf
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from vfmtok.fileio import atomic_write_text

RATES = ("images_per_s_best", "images_per_s", "tokens_per_s_best", "tokens_per_s", "steps_per_s_best")
MEMORY = ("cuda_max_memory_allocated_mb", "peak_rss_mb")
SETTINGS = ("model", "direction", "batch", "image_size", "cfg_scale", "path", "precision", "images", "workers")


def _first(info: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, Any] | tuple[None, None]:
    return next(((k, info[k]) for k in keys if k in info), (None, None))


def rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per benchmark of a pytest-benchmark report."""
    out = []
    for bench in report["benchmarks"]:
        info = bench.get("extra_info", {})
        rate_key, rate = _first(info, RATES)
        _, memory = _first(info, MEMORY)
        if rate_key is None:
            unit = "s per round (best)"
        else:
            unit = rate_key.removesuffix("_best").replace("_per_s", "/s") + ("" if rate_key.endswith("_best") else
                                                                             " (mean)")
        out.append({"benchmark": bench["name"], "rate": f"{rate if rate is not None else bench['stats']['min']:.4g}",
                    "unit": unit, "peak memory (MiB)": "—" if memory is None else f"{memory:.0f}",
                    "settings": ", ".join(f"{k}={info[k]}" for k in SETTINGS if k in info)})
    return out


def device_label(report: dict[str, Any]) -> str:
    """The GPU model when the run used one, else the CPU with its core count."""
    for bench in report["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("device") == "cuda":
            return str(info.get("device_name", "cuda"))
    machine = report.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor") or "cpu"
    return f"{cpu} ({machine.get('cpu', {}).get('count', '?')} cores)"


def render(report: dict[str, Any]) -> str:
    """The markdown table of a report, headed by its device and commit."""
    table = rows(report)
    if not table:
        raise ValueError("the benchmark report holds no benchmarks")
    commit = report.get("commit_info", {}).get("id", "unknown")[:12]
    head = list(table[0])
    lines = [f"# Throughput on {device_label(report)}", "",
             f"`nox -s perf` at commit {commit}, {report.get('datetime', '')}. Rates are the best round unless "
             "marked. Peak memory: `torch.cuda.max_memory_allocated` on GPU (reset per benchmark); on CPU the "
             "process's peak RSS, a high-water mark that only grows from one benchmark to the next.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r[k] for k in head) + " |" for r in table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("out_dir", type=Path, help="folder of the tables, one file per device")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    slug = re.sub(r"[^a-z0-9]+", "-", device_label(report).lower()).strip("-")
    path = atomic_write_text(args.out_dir / f"{slug}.md", render(report))
    print(f"throughput table: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
