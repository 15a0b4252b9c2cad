"""Run records: one schema-versioned JSON file per run, long-format rows of results.

``results/runs/<run_id>/record.json``. ``run_id`` hashes the resolved configuration, the package
version and the data fingerprints, so re-running the same thing rewrites the same record. The git
commit is stored in the record but is not part of the id (a commit that changes no behaviour would
otherwise orphan every record).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.metric_specs import spec
from vfmtok.distributed import rank_world
from vfmtok.fileio import atomic_write_json, sha256_json
from vfmtok.metrics.result import MetricResult
from vfmtok.version import code_version

SCHEMA_VERSION = 1
RECORD_KEYS = {"schema_version", "run_id", "preset", "config", "code", "env", "seeds", "data", "fid",
               "tokenizers", "rows", "notes", "artifacts"}
#: keys a record may carry: ``label`` names a run whose configuration differs from its preset; ``stages`` lists
#: each stage's wall time and the machine that computed it (read from the stage's cached result)
OPTIONAL_KEYS = {"label", "stages"}
STAGE_KEYS = {"stage", "label", "seconds", "machine"}
ROW_KEYS = {"tokenizer", "ar_model", "metric", "setting", "value", "n", "higher_is_better", "reason"}


@dataclass
class Row:
    """One number (or one documented absence of a number)."""

    tokenizer: str
    metric: str
    value: float | None
    n: int | None = None
    setting: dict[str, Any] = field(default_factory=dict)
    ar_model: str | None = None
    reason: str | None = None  # why value is None
    higher_is_better: bool | None = None

    def __post_init__(self) -> None:
        self.higher_is_better = spec(self.metric).higher_is_better
        if self.value is None and not self.reason:
            raise ValueError(f"row {self.tokenizer}/{self.metric}: a missing value needs a reason")
        if self.value is not None:
            self.value = float(self.value)


def stage_rows(results: Mapping[str, MetricResult], setting: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows a stage stores for typed results (``metric, value, n, setting, reason``; :class:`Row` fields less
    the tokenizer and AR model), values in reported units (the spec's scale), ``setting`` under each result's own."""
    return [{"metric": key, "value": None if r.value is None else spec(key).scale * r.value, "n": r.n,
             "setting": {**(setting or {}), **r.setting}, "reason": r.reason} for key, r in results.items()]


def machine() -> dict[str, Any]:
    """What a stage ran on: the device (GPU model, else the CPU), threads and processes."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"device": device, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "world_size": rank_world()[1]}


def environment() -> dict[str, Any]:
    """Hardware and software the numbers were measured on."""
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            **machine(), "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def make_run_id(config: dict[str, Any], package_version: str, data: dict[str, Any]) -> str:
    """Short content hash of what determines a run's numbers."""
    return sha256_json({"config": config, "version": package_version, "data": data})[:12]


def validate(record: dict[str, Any]) -> None:
    """Raise ValueError naming the first problem with a record."""
    missing = RECORD_KEYS - set(record)
    extra = set(record) - RECORD_KEYS - OPTIONAL_KEYS
    if missing or extra:
        raise ValueError(f"record keys: missing {sorted(missing)}, unexpected {sorted(extra)}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {record['schema_version']} != {SCHEMA_VERSION}")
    for i, row in enumerate(record["rows"]):
        if set(row) != ROW_KEYS:
            raise ValueError(f"row {i}: keys {sorted(row)} != {sorted(ROW_KEYS)}")
        spec(row["metric"])
        if row["value"] is None and not row["reason"]:
            raise ValueError(f"row {i} ({row['metric']}): value is missing without a reason")
    for i, stage in enumerate(record.get("stages", [])):
        if set(stage) != STAGE_KEYS:
            raise ValueError(f"stage {i}: keys {sorted(stage)} != {sorted(STAGE_KEYS)}")


def build_record(*, run_id: str, preset: str, config: dict, code: dict, seeds: dict, data: dict, fid: dict,
                 tokenizers: dict, rows: list[Row], notes: dict[str, str], artifacts: dict,
                 label: str | None = None, stages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Assemble and validate a record; ``label`` (when it differs from ``preset``) names a modified preset;
    ``stages`` holds each stage's ``{stage, label, seconds, machine}``."""
    record = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "preset": preset, "config": config,
              "code": code, "env": environment(), "seeds": seeds, "data": data, "fid": fid,
              "tokenizers": tokenizers, "rows": [asdict(r) for r in rows], "notes": notes, "artifacts": artifacts}
    if label and label != preset:
        record["label"] = label
    if stages is not None:
        record["stages"] = stages
    validate(record)
    return record


def record_label(record: dict[str, Any]) -> str:
    """The name of a record's rows in the tables: its label, or its preset when run as shipped."""
    return record.get("label") or record["preset"]


def code_state(*harness_dirs: str | Path) -> dict[str, Any]:
    """:func:`~vfmtok.checkpoint.code_version`, with a ``dirty`` flag that ignores the files the harness writes.

    Tracked files under ``harness_dirs`` (the committed tables and records under ``results/``) change with every
    run; counting them would mark every second run of a clean checkout dirty.
    """
    code = code_version()
    root = Path(__file__).resolve().parents[1]
    ignored = []
    for d in harness_dirs:
        p = Path(d) if Path(d).is_absolute() else Path.cwd() / d
        with contextlib.suppress(ValueError):
            ignored.append(p.resolve().relative_to(root).as_posix())
    if not code.get("git_sha") or not code.get("dirty"):
        return code
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return code
    code["dirty"] = dirty_outside(out, ignored)
    return code


def dirty_outside(porcelain: str, ignored: list[str]) -> bool:
    """True when ``git status --porcelain`` output lists a changed file outside the ``ignored`` folders."""
    folders = [i.rstrip("/") + "/" for i in ignored if i not in ("", ".")]
    changed = [line[3:].split(" -> ")[-1].strip('"') for line in porcelain.splitlines() if len(line) > 3]
    return any(not any(c.startswith(f) for f in folders) for c in changed)


Curves = dict[tuple[str, int | None], list[tuple[int, float]]]


def curves(record: dict[str, Any], metric: str, step_key: str) -> Curves:
    """``(tokenizer, AR seed or None) -> [(step, value)]``, sorted by step, of the rows of ``metric`` whose setting
    has ``step_key`` (``gfid`` at ``ar_step``, ``train_psnr`` at ``train_step``...)."""
    out: Curves = {}
    for r in record["rows"]:
        if r["metric"] == metric and step_key in r["setting"] and r["value"] is not None:
            key = (r["tokenizer"], r["setting"].get("ar_seed"))
            out.setdefault(key, []).append((int(r["setting"][step_key]), r["value"]))
    return {key: sorted(points) for key, points in out.items()}


def recorded_code(results_dir: str | Path, run_id: str) -> dict[str, Any] | None:
    """The ``code`` of the record ``run_id`` already under ``results_dir``, or None."""
    path = Path(results_dir) / "runs" / run_id / "record.json"
    return json.loads(path.read_text())["code"] if path.is_file() else None


def write_record(results_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``runs/<run_id>/record.json`` atomically, replacing older records of the same label."""
    runs = Path(results_dir) / "runs"
    for old in runs.glob("*/record.json"):
        if old.parent.name != record["run_id"] and record_label(json.loads(old.read_text())) == record_label(record):
            old.unlink()
            if not any(old.parent.iterdir()):
                old.parent.rmdir()
    return atomic_write_json(runs / record["run_id"] / "record.json", record)


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """All valid records under ``results_dir/runs``, sorted by (preset, run_id)."""
    records = []
    for path in sorted(Path(results_dir).glob("runs/*/record.json")):
        rec = json.loads(path.read_text())
        validate(rec)
        records.append(rec)
    return sorted(records, key=lambda r: (record_label(r), r["run_id"]))
