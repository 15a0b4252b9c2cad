"""Comparison tables as a pure function of the run records.

``python -m benchmarks.tables [results_dir]`` rewrites ``results/tables/*.{md,csv,tex}`` (and the claims table
of :mod:`benchmarks.claims`) from ``results/runs/*/record.json``. No timestamps, sorted rows, fixed decimals:
regenerating from the same records is byte-identical. A table lists its column groups; which metrics fill them is
each metric's spec (:mod:`benchmarks.metric_specs`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from benchmarks.claims import render_claims
from benchmarks.metric_specs import METRICS
from benchmarks.metric_specs import spec as metric_spec
from benchmarks.records import load_records, record_label
from vfmtok.fileio import atomic_write_text

Setting = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Group:
    """A group of columns: the label shown after each metric header (e.g. "cfg=1") and the settings of its rows."""

    label: str = ""
    when: Setting | None = None


@dataclass(frozen=True)
class Column:
    """A table column: a metric, restricted to the rows its group's setting filter matches."""

    metric: str
    group: Group = Group()

    def header(self) -> str:
        """Header text with arrow and unit."""
        head = metric_spec(self.metric).header()
        return f"{head} [{self.group.label}]" if self.group.label else head

    def matches(self, row: dict) -> bool:
        """Whether ``row`` fills this column."""
        return row["metric"] == self.metric and (self.group.when is None or self.group.when(row["setting"]))


@dataclass(frozen=True)
class TableSpec:
    """One comparison table; its columns come from the metric specs that name its groups."""

    name: str
    title: str
    groups: tuple[Group, ...] = (Group(),)
    by_ar_model: bool = False
    notes: tuple[str, ...] = ()  # keys of the record notes this table carries ("fid": the FID backend)

    @property
    def columns(self) -> tuple[Column, ...]:
        """Group by group, the metrics placed in it, in the order of :data:`benchmarks.metric_specs.METRICS`."""
        return tuple(Column(metric, group) for group in self.groups for metric, s in METRICS.items()
                     if (self.name, group.label) in s.columns)


def _best_cfg(rows: list[dict]) -> float | None:
    """The guided cfg scale (> 1) with the lowest gFID among ``rows`` of one tokenizer."""
    guided = [r for r in rows if r["metric"] == "gfid" and r["value"] is not None
              and r["setting"].get("cfg_scale", 1.0) > 1.0 and "ar_step" not in r["setting"]]
    if not guided:
        return None
    return min(guided, key=lambda r: (r["value"], r["setting"]["cfg_scale"]))["setting"]["cfg_scale"]


def _plain(s: dict) -> bool:
    return "ar_step" not in s


FID_NOTES = ("data", "inception", "fid")
TABLES: tuple[TableSpec, ...] = (
    TableSpec("reconstruction", "Reconstruction", notes=FID_NOTES),
    TableSpec("codebook", "Codebook utilization"),
    TableSpec("probing", "Linear probing", (
        Group("pre-quant latents", lambda s: s.get("features") == "pre_quant"),
        Group("quantized codes", lambda s: s.get("features") == "codes")), notes=("probe",)),
    TableSpec("generation", "Class-conditional generation", (
        Group("cfg=1", lambda s: _plain(s) and s.get("cfg_scale") == 1.0),
        Group("best cfg", lambda s: _plain(s) and s.get("best_cfg", False))), by_ar_model=True, notes=FID_NOTES),
    TableSpec("throughput", "Throughput", (
        Group(), Group("KV cache", lambda s: s.get("kv_cache") is True),
        Group("no cache", lambda s: s.get("kv_cache") is False)), by_ar_model=True),
    TableSpec("convergence", "AR convergence", (
        Group("seed 0", lambda s: s.get("ar_seed", 0) == 0), Group("seed 1", lambda s: s.get("ar_seed") == 1)),
        by_ar_model=True, notes=("convergence", *FID_NOTES)),
)
_unplaced = {p for s in METRICS.values() for p in s.columns} - {(t.name, g.label) for t in TABLES for g in t.groups}
if _unplaced:
    raise ValueError(f"metric specs name table columns that do not exist: {sorted(_unplaced)}")


def _mark_best_cfg(rows: list[dict]) -> list[dict]:
    """Copy rows, flagging the generation rows at each (tokenizer, AR model)'s best guided cfg scale."""
    out = [dict(r, setting=dict(r["setting"])) for r in rows]
    groups: dict[tuple, list[dict]] = {}
    for r in out:
        groups.setdefault((r["tokenizer"], r["ar_model"]), []).append(r)
    for group in groups.values():
        best = _best_cfg(group)
        for r in group:
            if best is not None and r["setting"].get("cfg_scale") == best and _plain(r["setting"]):
                r["setting"]["best_cfg"] = True
    return out


class _Footnotes:
    """Numbered footnotes, deduplicated, in order of first use."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def _cell(rows: list[dict], col: Column, notes: _Footnotes) -> tuple[str, float | None]:
    match = [r for r in rows if col.matches(r)]
    if not match:
        return "—", None
    r = match[0]
    if r["value"] is None:
        return f"n/a {notes.mark(r['reason'])}", None
    text = f"{r['value']:.{metric_spec(col.metric).decimals}f}"
    if col.metric == "gfid" and r["setting"].get("best_cfg"):
        text += f" (cfg {r['setting']['cfg_scale']:g})"
    if col.metric in FID_METRICS and r["n"] is not None and r["n"] < FID_MIN_N:
        text += f" {notes.mark(small_fid_note(r['n']))}"
    return text, r["value"]


#: FIDs over fewer images than this carry a footnote: FID is biased upwards at small n (the published numbers
#: use 50,000 samples), so such values compare only with others of the same n
FID_MIN_N = 1000
FID_METRICS = ("rfid", "gfid")


def small_fid_note(n: int) -> str:
    """The footnote of a FID computed over ``n`` < :data:`FID_MIN_N` images."""
    return (f"FID over n = {n} images: below {FID_MIN_N:,} images FID is biased upwards and noisy; compare it only "
            f"with FIDs over the same n, never with published (50,000-sample) values.")


def build_table(spec: TableSpec, records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(display frame, numeric frame, footnotes) of one table over all records."""
    notes = _Footnotes()
    display, numeric = [], []
    for rec in records:
        rows = _mark_best_cfg(rec["rows"])
        keys = sorted({(r["tokenizer"], (r["ar_model"] or "") if spec.by_ar_model else "") for r in rows})
        for tok, ar in keys:
            # a table not split by AR model shows the tokenizer's own rows (KID is in both kinds of rows)
            mine = [r for r in rows if r["tokenizer"] == tok
                    and ((r["ar_model"] or "") == ar if spec.by_ar_model else r["ar_model"] is None)]
            cells = [_cell(mine, c, notes) for c in spec.columns]
            if all(v == "—" for v, _ in cells):
                continue
            counts = sorted({r["n"] for r in mine if r["n"] and any(r["metric"] == c.metric for c in spec.columns)})
            tspec = rec["tokenizers"].get(tok, {})
            ident = {"preset": record_label(rec), "tokenizer": tok}
            if spec.by_ar_model:
                ident["AR model"] = ar or "—"
            ident["tokens"] = str(tspec.get("num_tokens", "—"))
            ident["n"] = "/".join(map(str, counts)) or "—"
            display.append({**ident, **{c.header(): v for c, (v, _) in zip(spec.columns, cells)}, "run": rec["run_id"]})
            numeric.append({**ident, **{c.header(): x for c, (_, x) in zip(spec.columns, cells)}, "run": rec["run_id"]})
        for text in _record_notes(rec, spec.notes):
            notes.mark(text)
    return pd.DataFrame(display), pd.DataFrame(numeric), notes.texts


def _record_notes(rec: dict, keys: tuple[str, ...]) -> list[str]:
    """The protocol footnotes of a record that a table with note ``keys`` carries."""
    label = record_label(rec)
    texts = [f"{label}: {v}" for k, v in sorted(rec["notes"].items()) if k in keys]
    fid = rec.get("fid") or {}
    if "fid" in keys and fid.get("backend"):
        texts.append(f"{label}: FID backend {fid['backend']}, Inception weights sha256 "
                     f"{str(fid.get('weights_sha256', ''))[:12]}…; n = images per number.")
    return texts


def render(results_dir: str | Path = "results") -> list[Path]:
    """Rewrite every table under ``results_dir/tables``; return the paths written."""
    results_dir = Path(results_dir)
    records = load_records(results_dir)
    written = []
    for spec in TABLES:
        display, numeric, notes = build_table(spec, records)
        if display.empty:
            continue
        md = f"# {spec.title}\n\n" + tabulate(display, headers="keys", tablefmt="github", showindex=False,
                                               disable_numparse=True) + "\n"
        if notes:
            md += "\n" + "\n".join(f"[{i}] {t}  " for i, t in enumerate(notes, 1)).rstrip() + "\n"
        tex = tabulate(display, headers="keys", tablefmt="latex_booktabs", showindex=False, disable_numparse=True)
        out = results_dir / "tables"
        written += [atomic_write_text(out / f"{spec.name}.md", md),
                    atomic_write_text(out / f"{spec.name}.csv", numeric.to_csv(index=False, lineterminator="\n")),
                    atomic_write_text(out / f"{spec.name}.tex", tex + "\n")]
    claims = render_claims(records)
    if claims is not None:
        md, rows = claims
        written += [atomic_write_text(results_dir / "tables" / "claims.md", md),
                    atomic_write_text(results_dir / "tables" / "claims.csv",
                                      pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))]
    return written


if __name__ == "__main__":
    for p in render(sys.argv[1] if len(sys.argv) > 1 else "results"):
        print(p)
