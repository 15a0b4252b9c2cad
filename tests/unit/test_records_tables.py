"""Records validate, tables are a pure byte-stable function of them, and the regression gate can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import perf_table
from benchmarks.metric_specs import spec
from benchmarks.records import Row, build_record, load_records, stage_rows, validate, write_record
from benchmarks.regress import baseline_from_record, compare, report
from benchmarks.tables import TABLES, build_table, render
from vfmtok.metrics.result import MetricResult

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tables"


def _record(psnr_a: float = 24.5, gfid_guided: float = 40.0) -> dict:
    rows = [
        Row("tok_a", "psnr", psnr_a, n=100), Row("tok_a", "ssim", 0.81234, n=100),
        Row("tok_a", "lpips", None, reason="LPIPS backbone weights unavailable offline"),
        Row("tok_a", "codebook_usage", 87.5, n=100), Row("tok_b", "psnr", 22.25, n=100),
        Row("tok_b", "lpips", None, reason="LPIPS backbone weights unavailable offline"),
        Row("tok_a", "gfid", 55.0, n=50, ar_model="gpt", setting={"cfg_scale": 1.0}),
        Row("tok_a", "gfid", gfid_guided, n=50, ar_model="gpt", setting={"cfg_scale": 2.0}),
        Row("tok_a", "gfid", 45.0, n=50, ar_model="gpt", setting={"cfg_scale": 1.5}),
        Row("tok_a", "inception_score", None, n=50, ar_model="gpt", setting={"cfg_scale": 1.0},
            reason="Inception logits weights unavailable offline"),
    ]
    return build_record(run_id="abc123", preset="unit", config={"x": 1}, code={"version": "0"}, seeds={"seed": 0},
                        data={"fingerprint": "f"}, fid={"backend": "torch-fidelity", "weights_sha256": "7ff4a85c3a63"},
                        tokenizers={"tok_a": {"num_tokens": 64}, "tok_b": {"num_tokens": 16}}, rows=rows,
                        notes={"data": "CIFAR-10 JPEG copy"}, artifacts={})


def test_missing_value_needs_reason() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        Row("t", "psnr", None)
    with pytest.raises(KeyError, match="unknown metric"):
        Row("t", "psnr_typo", 1.0)


def test_stage_rows_keep_the_row_format_in_reported_units() -> None:
    results = {"codebook_usage": MetricResult(0.875, 100), "kid": MetricResult(0.0123, 50, setting={"subsets": 100}),
               "rfid": MetricResult.unavailable("FID disabled in this run", 100)}
    rows = stage_rows(results, {"cfg_scale": 1.0})
    assert rows == [
        {"metric": "codebook_usage", "value": 87.5, "n": 100, "setting": {"cfg_scale": 1.0}, "reason": None},
        {"metric": "kid", "value": pytest.approx(12.3), "n": 50, "setting": {"cfg_scale": 1.0, "subsets": 100},
         "reason": None},
        {"metric": "rfid", "value": None, "n": 100, "setting": {"cfg_scale": 1.0},
         "reason": "FID disabled in this run"}]
    assert Row("t", **rows[0]) == Row("t", "codebook_usage", 87.5, n=100, setting={"cfg_scale": 1.0})
    with pytest.raises(KeyError, match="unknown metric"):
        stage_rows({"psnr_typo": MetricResult(1.0)})


def test_specs_place_kid_next_to_fid_and_gate_from_one_place() -> None:
    headers = {t.name: [c.header() for c in t.columns] for t in TABLES}
    assert headers["reconstruction"][3:5] == ["rFID ↓", "KID ×10³ ↓"]
    assert headers["generation"][:2] == ["gFID ↓ [cfg=1]", "KID ×10³ ↓ [cfg=1]"]
    assert headers["generation"][5:7] == ["gFID ↓ [best cfg]", "KID ×10³ ↓ [best cfg]"]
    base = baseline_from_record(_record(), tolerances={"ssim": 0.1})
    assert base["tolerances"] == {"codebook_usage": 10.0, "gfid": 25.0, "psnr": 0.5, "ssim": 0.1}
    assert not spec("encode_img_per_s").gated and spec("kid").tolerance == 5.0


def test_validate_rejects_unknown_keys() -> None:
    rec = _record()
    validate(rec)
    with pytest.raises(ValueError, match="unexpected"):
        validate({**rec, "surprise": 1})


def test_tables_match_golden_and_are_byte_stable(tmp_path) -> None:
    write_record(tmp_path, _record())
    assert [r["run_id"] for r in load_records(tmp_path)] == ["abc123"]
    first = {p.name: p.read_bytes() for p in render(tmp_path)}
    second = {p.name: p.read_bytes() for p in render(tmp_path)}
    assert first == second
    for name in ("reconstruction.md", "generation.md"):
        assert first[name].decode() == (GOLDEN / name).read_text(), name


def test_best_cfg_is_the_lowest_guided_gfid(tmp_path) -> None:
    write_record(tmp_path, _record(gfid_guided=40.0))
    render(tmp_path)
    text = (tmp_path / "tables" / "generation.md").read_text()
    assert "40.00 (cfg 2)" in text and "55.00" in text


def test_regression_gate_flags_only_worse_values() -> None:
    base = baseline_from_record(_record())
    assert not report(compare(base, _record(psnr_a=24.4)))  # within 0.25 dB
    text = report(compare(base, _record(psnr_a=23.0)))
    assert "tok_a | psnr" in text and "24.5000 -> 23.0000" in text
    assert not report(compare(base, _record(psnr_a=30.0)))  # better is fine
    assert "missing" in report(compare(base, {**_record(), "rows": []}))
    json.dumps(base)  # serialisable


def test_perf_table_lists_each_benchmark_with_its_rate_memory_and_device(tmp_path: Path) -> None:
    def bench(name: str, info: dict) -> dict:
        return {"name": name, "stats": {"min": 2.0}, "extra_info": info}

    report = {"commit_info": {"id": "0123456789abcdef"}, "datetime": "2026-01-01T00:00:00",
              "machine_info": {"cpu": {"brand_raw": "Some CPU", "count": 2}},
              "benchmarks": [bench("test_gpt_b_sampling[b8]", {"model": "gpt_b", "batch": 8, "device": "cpu",
                                                               "tokens_per_s_best": 151.25, "peak_rss_mb": 1900.4}),
                             bench("test_fid_throughput[vfmtok]", {"images": 256})]}
    text = perf_table.render(report)
    assert text.startswith("# Throughput on Some CPU (2 cores)") and "commit 0123456789ab" in text
    assert "| test_gpt_b_sampling[b8] | 151.2 | tokens/s | 1900 | model=gpt_b, batch=8 |" in text
    assert "| test_fid_throughput[vfmtok] | 2 | s per round (best) | — | images=256 |" in text
    report["benchmarks"][0]["extra_info"].update(device="cuda", device_name="NVIDIA H100 80GB HBM3")
    assert perf_table.device_label(report) == "NVIDIA H100 80GB HBM3"
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert perf_table.main([str(tmp_path / "r.json"), str(tmp_path / "perf")]) == 0
    assert (tmp_path / "perf" / "nvidia-h100-80gb-hbm3.md").read_text() == perf_table.render(report)
    with pytest.raises(ValueError, match="no benchmarks"):
        perf_table.render({**report, "benchmarks": []})


def test_reconstruction_table_ignores_the_generation_rows_of_a_shared_metric() -> None:
    def row(value: float, n: int, ar_model: str | None, setting: dict) -> dict:
        return {"tokenizer": "tok", "ar_model": ar_model, "metric": "kid", "setting": setting, "value": value, "n": n,
                "higher_is_better": False, "reason": None}

    record = {"preset": "unit", "run_id": "abc", "notes": {}, "tokenizers": {"tok": {"num_tokens": 64}},
              "rows": [row(50.0, 96, "gpt", {"cfg_scale": 1.0}), row(10.0, 200, None, {})]}
    (recon_spec,) = [t for t in TABLES if t.name == "reconstruction"]
    (gen_spec,) = [t for t in TABLES if t.name == "generation"]
    recon, _, _ = build_table(recon_spec, [record])
    gen, _, _ = build_table(gen_spec, [record])
    assert recon.loc[0, "n"] == "200" and recon.loc[0, "KID ×10³ ↓"] == "10.00"
    assert len(gen) == 1 and gen.loc[0, "n"] == "96" and gen.loc[0, "KID ×10³ ↓ [cfg=1]"] == "50.00"
