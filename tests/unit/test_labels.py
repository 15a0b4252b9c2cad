"""Honest labels: modified presets are named in every row, small-n FIDs carry a footnote, the dirty flag ignores
the harness's own outputs."""

from __future__ import annotations

from pathlib import Path

from benchmarks.config import load_config, run_label
from benchmarks.records import Row, build_record, dirty_outside, load_records, record_label, write_record
from benchmarks.tables import FID_MIN_N, render


def _record(label: str | None, run_id: str, n: int = 50, preset: str = "smoke") -> dict:
    rows = [Row("tok", "psnr", 20.0, n=n), Row("tok", "rfid", 80.0, n=n),
            Row("tok", "gfid", 90.0, n=n, ar_model="gpt", setting={"cfg_scale": 1.0})]
    return build_record(run_id=run_id, preset=preset, config={"x": run_id}, code={}, seeds={}, data={}, fid={},
                        tokenizers={"tok": {"num_tokens": 16}}, rows=rows, notes={}, artifacts={}, label=label)


def test_label_is_the_preset_unless_the_config_differs() -> None:
    assert run_label(load_config(["preset=smoke"])) == "smoke"
    # where and how a run executes does not change what it measures
    assert run_label(load_config(["preset=smoke", "device=cuda", "threads=1", "results_dir=/tmp/x",
                                  "work_dir=/tmp/y", "progress=false"])) == "smoke"
    assert run_label(load_config(["preset=smoke", "catalog.vqgan.steps=30"])) == "smoke"  # the preset's own value
    assert run_label(load_config(["preset=smoke", "catalog.vqgan.steps=5"])) == "smoke+catalog.vqgan.steps=5"
    assert run_label(load_config(["preset=smoke", "tokenizers=[vqgan]", "data.train_n=64"])) == \
        "smoke+data.train_n=64,tokenizers=[vqgan]"
    many = load_config(["preset=smoke", "catalog.vqgan.lr=0.002", "catalog.llamagen_vq.lr=0.002", "ar.steps=10",
                        "data.eval_n=16"])
    label = run_label(many)
    assert label.startswith("smoke+4 overrides@") and len(label) < 40
    assert run_label(load_config(["preset=smoke", "catalog.vqgan.lr=0.002", "catalog.llamagen_vq.lr=0.002",
                                  "ar.steps=10", "data.eval_n=17"])) != label  # the hash tells them apart


def test_modified_runs_get_their_own_rows_and_keep_the_preset_record(tmp_path) -> None:
    write_record(tmp_path, _record(None, "plain"))
    write_record(tmp_path, _record("smoke+catalog.vqgan.steps=5", "changed"))
    records = load_records(tmp_path)
    assert [record_label(r) for r in records] == ["smoke", "smoke+catalog.vqgan.steps=5"]
    assert "label" not in records[0]  # a run as shipped keeps the record layout of before
    write_record(tmp_path, _record("smoke+catalog.vqgan.steps=5", "changed2"))  # same label: replaces
    assert sorted(r["run_id"] for r in load_records(tmp_path)) == ["changed2", "plain"]
    render(tmp_path)
    for table in ("reconstruction", "generation"):
        body = (tmp_path / "tables" / f"{table}.md").read_text()
        rows = [line for line in body.splitlines() if line.startswith("| smoke")]
        assert len(rows) == 2 and any(r.startswith("| smoke+catalog.vqgan.steps=5 ") for r in rows), body


def test_fids_over_fewer_than_1000_images_carry_a_footnote_with_n(tmp_path) -> None:
    write_record(tmp_path, _record(None, "small", n=50))
    write_record(tmp_path, _record(None, "large", n=FID_MIN_N, preset="big"))
    render(tmp_path)
    text = (tmp_path / "tables" / "reconstruction.md").read_text()
    small = next(line for line in text.splitlines() if line.startswith("| smoke"))
    large = next(line for line in text.splitlines() if line.startswith("| big"))
    mark = small.split("80.00 ")[1].split()[0]  # "[k]"
    assert mark.startswith("[") and f"{mark} FID over n = 50 images" in text
    assert "80.00 [" not in large and "n = 1000" not in text
    assert "20.00 [" not in small  # PSNR is not a FID: no footnote
    gen = (tmp_path / "tables" / "generation.md").read_text()
    assert "90.00 [" in gen and "FID over n = 50 images" in gen
    assert (tmp_path / "tables" / "reconstruction.csv").read_text().count("80.0") == 2  # numbers stay numbers


def test_dirty_flag_ignores_the_harness_outputs() -> None:
    status = " M results/tables/generation.md\n M results/runs/abc/record.json\n"
    assert not dirty_outside(status, ["results", "results/work"])
    assert dirty_outside(status + " M vfmtok/cli.py\n", ["results"])
    assert dirty_outside(status, [])  # nothing ignored: the tables count
    assert dirty_outside('R  old.py -> "vfmtok/new name.py"\n', ["results"])
    assert not dirty_outside("", ["results"])


def test_committed_tables_keep_the_preset_label() -> None:
    root = Path(__file__).resolve().parents[2]
    for record in load_records(root / "results"):
        assert record_label(record) == record["preset"]
