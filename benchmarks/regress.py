"""Quality gate: run the `smoke` preset and compare its record with ``results/baselines/smoke.json``.

``python -m benchmarks.regress`` exits 1 with a readable diff when any metric is worse than the
baseline by more than its tolerance; ``--update`` rewrites the baseline from the current run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.metric_specs import spec
from benchmarks.run import run_benchmark
from vfmtok.errors import debug_environment, debug_requested, run_guarded
from vfmtok.fileio import atomic_write_json

BASELINE = Path("results/baselines/smoke.json")


@dataclass(frozen=True)
class Finding:
    """One compared number."""

    key: str
    baseline: float
    current: float | None
    tolerance: float

    @property
    def regressed(self) -> bool:
        """True when the current value is missing or worse than the baseline beyond the tolerance."""
        if self.current is None:
            return True
        metric = self.key.split(" | ")[1]
        worse = self.baseline - self.current if spec(metric).higher_is_better else self.current - self.baseline
        return worse > self.tolerance


def row_key(row: dict[str, Any]) -> str:
    """Stable identity of a row: tokenizer | metric | AR model | setting."""
    setting = json.dumps(row["setting"], sort_keys=True)
    return f"{row['tokenizer']} | {row['metric']} | {row['ar_model'] or '-'} | {setting}"


def baseline_from_record(record: dict[str, Any], tolerances: dict[str, float] | None = None) -> dict[str, Any]:
    """Baseline file contents from a record: the gated numbers and their tolerances (the specs', or ``tolerances``
    where given)."""
    rows = {row_key(r): r["value"] for r in record["rows"] if r["value"] is not None and spec(r["metric"]).gated}
    metrics = sorted({k.split(" | ")[1] for k in rows})
    tol = {m: spec(m).tolerance for m in metrics} | (tolerances or {})
    return {"preset": record["preset"], "tolerances": {m: tol[m] for m in metrics},
            "values": dict(sorted(rows.items()))}


def compare(baseline: dict[str, Any], record: dict[str, Any]) -> list[Finding]:
    """Every baseline number against the record's; missing rows count as regressions."""
    current = {row_key(r): r["value"] for r in record["rows"]}
    return [Finding(key, value, current.get(key), baseline["tolerances"][key.split(" | ")[1]])
            for key, value in baseline["values"].items()]


def report(findings: list[Finding]) -> str:
    """Human-readable diff of the regressions (empty when none)."""
    bad = [f for f in findings if f.regressed]
    lines = [f"  {f.key}: baseline {f.baseline:.4f} -> {'missing' if f.current is None else f'{f.current:.4f}'}"
             f" (tolerance {f.tolerance:g})" for f in bad]
    return f"REGRESSION in {len(bad)} of {len(findings)} metrics:\n" + "\n".join(lines) if bad else ""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.regress`` (``nox -s regress -- ...``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.regress", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="`python -m benchmarks.run --help` lists the presets, tokenizers and "
                                            "config keys the overrides can change.")
    parser.add_argument("--update", action="store_true", help="rewrite the baseline from this run")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="baseline file")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also VFMTOK_DEBUG=1)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="hydra overrides for the smoke preset")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run smoke, compare, print; return the exit status (2 with one line for a known error)."""
    args = build_parser().parse_args(argv)
    debug = args.debug or debug_requested()
    with debug_environment(debug):
        return run_guarded(lambda: _regress(args), prog="regress", debug=debug)


def _regress(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not args.update and not args.baseline.is_file():
        raise FileNotFoundError(f"no baseline at {args.baseline}: run `python -m benchmarks.regress --update` first")
    print(f"regress: running the smoke preset{' with ' + ' '.join(args.overrides) if args.overrides else ''} "
          f"(every stage logs when it starts; cached stages are instant)", file=sys.stderr, flush=True)
    record = run_benchmark(["preset=smoke", *args.overrides], write_results=False)
    if args.update:
        atomic_write_json(args.baseline, baseline_from_record(record))
        print(f"baseline written: {args.baseline}")
        return 0
    findings = compare(json.loads(args.baseline.read_text()), record)
    text = report(findings)
    print(text or f"no regression: {len(findings)} metrics within tolerance of {args.baseline}")
    return 1 if text else 0


if __name__ == "__main__":
    sys.exit(main())
