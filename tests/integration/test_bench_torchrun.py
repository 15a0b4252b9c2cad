"""The harness under ``launcher=torchrun nproc=2`` (gloo on CPU) agrees with one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.regress import baseline_from_record, compare, report
from benchmarks.run import run_benchmark
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
SMALL = ["preset=smoke", "tokenizers=[vqgan]", "progress=false", "suite.probe=false", "threads=1"]


def test_smoke_under_torchrun_matches_one_process(tmp_path, data_root) -> None:
    one = run_benchmark([*SMALL, f"results_dir={tmp_path / 'one'}", f"work_dir={tmp_path / 'one-work'}"])
    overrides = [*SMALL, "launcher=torchrun", "nproc=2", f"results_dir={tmp_path / 'ddp'}",
                 f"work_dir={tmp_path / 'ddp-work'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VFMTOK_DATA": str(data_root)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", *overrides], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (record_file,) = (tmp_path / "ddp" / "runs").glob("*/record.json")
    ddp = json.loads(record_file.read_text())
    assert ddp["env"]["world_size"] == 2 and one["env"]["world_size"] == 1
    assert {r["metric"] for r in ddp["rows"]} == {r["metric"] for r in one["rows"]}
    assert not report(compare(baseline_from_record(one), ddp))  # within the quality gate's tolerances
    assert _value(ddp, "psnr") == pytest.approx(_value(one, "psnr"), abs=0.05)
    assert (tmp_path / "ddp" / "tables" / "reconstruction.md").is_file()


def _value(record: dict, metric: str) -> float:
    return next(r["value"] for r in record["rows"] if r["metric"] == metric)
