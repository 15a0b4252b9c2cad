"""The benchmark harness end to end on the `smoke` preset: records, tables, caching, resume, regression gate."""

from __future__ import annotations

import json

import pytest

from benchmarks import pipeline, regress
from benchmarks.regress import compare, report
from benchmarks.run import run_benchmark

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("bench")
    return [f"results_dir={root / 'results'}", f"work_dir={root / 'work'}", "progress=false"]


@pytest.fixture(scope="module")
def first_run(bench_dirs):
    return run_benchmark(["preset=smoke", *bench_dirs])


def _tables(bench_dirs) -> dict[str, bytes]:
    results = bench_dirs[0].split("=", 1)[1]
    from pathlib import Path

    return {p.relative_to(results).as_posix(): p.read_bytes()
            for p in sorted([*(Path(results) / "tables").glob("*"), *(Path(results) / "runs").glob("*/record.json")])}


def test_smoke_record_has_every_stage(first_run) -> None:
    metrics = {r["metric"] for r in first_run["rows"]}
    assert {"psnr", "ssim", "rfid", "codebook_usage", "probe_top1", "gfid", "encode_img_per_s"} <= metrics
    assert {r["tokenizer"] for r in first_run["rows"]} >= {"test_vqgan", "test_llamagen_vq", "test_vfmtok"}
    assert all(r["value"] is not None or r["reason"] for r in first_run["rows"])
    guided = [r for r in first_run["rows"] if r["metric"] == "gfid" and r["setting"].get("cfg_scale", 1) > 1]
    assert guided, "no guided generation rows"


def test_second_run_is_cached_and_byte_identical(first_run, bench_dirs, caplog) -> None:
    before = _tables(bench_dirs)
    assert "tables/reconstruction.md" in before and "tables/generation.md" in before
    assert any(name.endswith("record.json") for name in before)  # the record too: its code is the computing run's
    with caplog.at_level("INFO", logger="benchmarks"):
        again = run_benchmark(["preset=smoke", *bench_dirs])
    assert "running" not in caplog.text
    assert again["rows"] == first_run["rows"]
    assert _tables(bench_dirs) == before


def test_killed_run_resumes_without_recomputing(first_run, bench_dirs, tmp_path, monkeypatch) -> None:
    dirs = [f"results_dir={tmp_path / 'results'}", f"work_dir={tmp_path / 'work'}", "progress=false",
            "tokenizers=[vqgan]"]
    original = pipeline.Pipeline._probe

    def killed(self, tok):
        raise KeyboardInterrupt("simulated kill during the probe stage")

    monkeypatch.setattr(pipeline.Pipeline, "_probe", killed)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(["preset=smoke", *dirs])
    assert not (tmp_path / "results" / "runs").exists()
    monkeypatch.setattr(pipeline.Pipeline, "_probe", original)
    calls = []
    monkeypatch.setattr(pipeline.TokenizerTrainer, "fit", lambda *a, **k: calls.append(1))
    record = run_benchmark(["preset=smoke", *dirs])  # training would fail now: it must come from the cache
    assert not calls and any(r["metric"] == "probe_top1" for r in record["rows"])


def test_regress_passes_on_main_and_flags_a_degraded_tokenizer(first_run, bench_dirs, tmp_path, capsys) -> None:
    # the committed baseline, against this code's smoke run (served from the first run's stage cache)
    assert regress.main(bench_dirs) == 0, capsys.readouterr().out
    baseline = json.loads(regress.BASELINE.read_text())
    degraded = run_benchmark(["preset=smoke", f"results_dir={tmp_path / 'r'}", f"work_dir={tmp_path / 'w'}",
                              "progress=false", "tokenizers=[vqgan]", "catalog.vqgan.steps=1", "suite.generation=false",
                              "suite.probe=false"], write_results=False)
    text = report(compare(baseline, degraded))
    assert "test_vqgan | psnr" in text, text
    assert "test_llamagen_vq | psnr | - | {}: baseline" in text  # tokenizers missing from a run count as regressions


def test_every_tokenizer_is_probed(first_run) -> None:
    probed = {r["tokenizer"] for r in first_run["rows"] if r["metric"] == "probe_top1" and r["value"] is not None}
    assert probed == set(first_run["tokenizers"])
