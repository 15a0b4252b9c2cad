"""The verified store: keys, manifests, verification, quarantine, locking, and the stage runner on top of it."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import threading
import time
from pathlib import Path

import pytest

from benchmarks.records import machine
from benchmarks.run import eta_line
from benchmarks.stages import StageRunner, stage_key
from vfmtok import store
from vfmtok.fileio import atomic_write_bytes, atomic_write_json, sha256_file


def _entry(folder: Path) -> Path:
    atomic_write_bytes(folder / "a.bin", bytes(range(256)) * 40)
    atomic_write_json(folder / "sub" / "b.json", {"x": 1})
    store.write_manifest(folder, "demo")
    return folder


def test_key_depends_on_kind_version_and_inputs() -> None:
    k = store.entry_key("demo", 1, {"a": 1, "b": [1, 2]})
    assert k == store.entry_key("demo", 1, {"b": [1, 2], "a": 1}) and len(k) == store.KEY_LENGTH  # canonical JSON
    others = {store.entry_key("other", 1, {"a": 1, "b": [1, 2]}), store.entry_key("demo", 2, {"a": 1, "b": [1, 2]}),
              store.entry_key("demo", 1, {"a": 2, "b": [1, 2]})}
    assert k not in others and len(others) == 3
    with pytest.raises(ValueError, match="kind"):
        store.entry_key("../x", 1, {})
    assert stage_key("probe", {"a": 1}) == store.entry_key("probe", 1, {"a": 1})  # stages use the one scheme


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    folder = _entry(tmp_path / "e")
    (folder / ".a.bin.123.tmp").write_bytes(b"left by a killed write")  # not part of the entry
    store.write_manifest(folder, "demo")
    manifest = json.loads((folder / store.MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["a.bin", "sub/b.json"] and manifest["kind"] == "demo"
    assert manifest["files"]["a.bin"] == {"size": 10240, "sha256": sha256_file(folder / "a.bin")}
    assert store.verify(folder) == []


@pytest.mark.parametrize("damage, problem", [
    ("truncate", r"a\.bin: 5000 bytes, the manifest says 10240"),
    ("edit", r"a\.bin: sha256 differs"),
    ("delete", r"a\.bin: missing"),
    ("manifest", r"MANIFEST\.json: .*not valid JSON"),
])
def test_verify_names_the_damaged_file(tmp_path: Path, damage: str, problem: str) -> None:
    folder = _entry(tmp_path / "e")
    store.verify(folder)  # remembered as verified: a later change must still be found
    target = folder / ("MANIFEST.json" if damage == "manifest" else "a.bin")
    raw = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(raw[:5000])
    elif damage == "edit":
        target.write_bytes(raw[:-1] + b"\x00")  # same size
    elif damage == "delete":
        target.unlink()
    else:
        target.write_bytes(raw[:20])
    problems = store.verify(folder)
    assert len(problems) == 1 and re.search(problem, str(problems[0])), problems


def test_no_manifest_means_incomplete_not_damaged(tmp_path: Path) -> None:
    folder = tmp_path / "e"
    atomic_write_bytes(folder / "a.bin", b"x")
    assert store.verify(folder) is None
    assert not store.check(folder, tmp_path, "demo") and folder.is_dir()  # left in place (resumable)


def test_damaged_entry_is_quarantined_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = store.Store(tmp_path)
    entry = s.entry("demo", 1, {"i": 0}, label="demo stage")
    _entry(entry.path)
    (entry.path / "a.bin").write_bytes(b"edited")
    with caplog.at_level(logging.WARNING, logger="vfmtok.store"):
        assert not entry.check()
    assert len(caplog.records) == 1 and "\n" not in caplog.text.strip()
    assert "demo stage" in caplog.text and "a.bin" in caplog.text and "recomputing" in caplog.text
    moved = list((tmp_path / store.QUARANTINE / "demo").iterdir())
    assert not entry.path.exists() and len(moved) == 1 and moved[0].name.startswith(entry.key + ".")
    assert (moved[0] / "a.bin").read_bytes() == b"edited"  # kept as it was, for inspection


def test_get_or_build_builds_once_and_serves_verified(tmp_path: Path) -> None:
    s, calls = store.Store(tmp_path), []

    def build(folder: Path) -> None:
        calls.append(folder)
        atomic_write_bytes(folder / "x.bin", b"payload")

    first = s.get_or_build("demo", 1, {"n": 1}, build)
    assert s.get_or_build("demo", 1, {"n": 1}, build) == first and len(calls) == 1
    (first / "x.bin").write_bytes(b"PAYLOAD")  # edited: moved aside and rebuilt
    assert (s.get_or_build("demo", 1, {"n": 1}, build) / "x.bin").read_bytes() == b"payload" and len(calls) == 2
    (first / "stale.tmp").write_bytes(b"")
    os.remove(first / store.MANIFEST)  # an interrupted build: its leftovers are discarded before building
    s.get_or_build("demo", 1, {"n": 1}, build)
    assert len(calls) == 3 and not (first / "stale.tmp").exists()


def test_lock_makes_a_second_holder_wait(tmp_path: Path) -> None:
    lock = tmp_path / "l.lock"
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with store.file_lock(lock):
            held.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    assert store.is_locked(lock)
    with store.file_lock(lock, on_wait=lambda: order.append("waiting")) as waited:
        order.append("second has it")
    t.join()
    assert waited and order == ["waiting", "first done", "second has it"] and not store.is_locked(lock)


def _build_in_process(root: str, log: str) -> None:
    def build(folder: Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        atomic_write_bytes(folder / "x.bin", b"payload")

    store.Store(root).get_or_build("demo", 1, {"n": 1}, build)


def test_two_processes_build_an_entry_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # the children use the stdlib only
    log = tmp_path / "log.txt"
    procs = [ctx.Process(target=_build_in_process, args=(str(tmp_path / "s"), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text() == "built\n"  # the second process waited, then reused the entry
    assert store.Store(tmp_path / "s").get("demo", 1, {"n": 1}) is not None


def test_stage_runner_recomputes_a_damaged_or_edited_result(tmp_path: Path, caplog) -> None:
    runner, calls = StageRunner(tmp_path), []

    def fn(folder: Path) -> dict:
        calls.append(1)
        atomic_write_bytes(folder / "grid.npz", b"npz bytes")
        return {"psnr": 30.0}

    assert runner.run("probe", {"a": 1}, fn, "tok")["psnr"] == 30.0
    folder = runner.path("probe", {"a": 1})
    assert runner.run("probe", {"a": 1}, fn, "tok")["psnr"] == 30.0 and len(calls) == 1  # verified, cached
    result = json.loads((folder / "result.json").read_text())
    (folder / "result.json").write_text(json.dumps({**result, "psnr": 99.0}))  # a hand edit
    with caplog.at_level(logging.WARNING, logger="vfmtok.store"):
        assert runner.run("probe", {"a": 1}, fn, "tok")["psnr"] == 30.0 and len(calls) == 2
    assert "probe tok" in caplog.text and "result.json" in caplog.text
    (folder / "grid.npz").write_bytes(b"npz")  # truncated
    assert runner.run("probe", {"a": 1}, fn, "tok")["psnr"] == 30.0 and len(calls) == 3
    assert len(list((tmp_path / store.QUARANTINE / "probe").iterdir())) == 2
    assert [h["cached"] for h in runner.history] == [False, True, False, False]


def test_stage_timings_are_measured_once_and_served_from_the_cache(tmp_path: Path) -> None:
    def fn(folder: Path) -> dict:
        time.sleep(0.05)
        return {"psnr": 30.0}

    first = StageRunner(tmp_path)
    first.run("probe", {"a": 1}, fn, "tok")
    (timing,) = first.timings()
    assert timing["stage"] == "probe" and timing["label"] == "tok" and timing["seconds"] >= 0.05
    assert timing["machine"] == machine()
    again = StageRunner(tmp_path)
    again.run("probe", {"a": 1}, lambda folder: pytest.fail("cached stage recomputed"), "tok")
    assert again.timings() == first.timings()  # the record stays the same when served from the cache
    assert [h["cached"] for h in first.history + again.history] == [False, True]


def test_eta_line_estimates_from_the_computed_tokenizers() -> None:
    assert eta_line(1, 4, 120.0, [120.0]) == "run: 1/4 tokenizers done, 2.0 min elapsed, about 6.0 min left"
    assert eta_line(2, 4, 121.0, [120.0]) == "run: 2/4 tokenizers done, 2.0 min elapsed, about 4.0 min left"
    assert eta_line(1, 3, 1.0, []) == "run: 1/3 tokenizers done, 1 s elapsed"  # all cached: no estimate
    assert eta_line(3, 3, 30.0, [10.0]) == "run: 3/3 tokenizers done, 30 s elapsed"


def test_interrupted_stage_leaves_no_entry_and_resumes(tmp_path: Path) -> None:
    runner = StageRunner(tmp_path)

    def killed(folder: Path) -> dict:
        atomic_write_bytes(folder / "checkpoint.bin", b"half way")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        runner.run("train_ar", {"a": 1}, killed, "tok")
    assert info.value.stage == "train_ar tok"
    folder = runner.path("train_ar", {"a": 1})
    assert (folder / "checkpoint.bin").is_file() and not (folder / store.MANIFEST).exists()

    def resume(folder: Path) -> dict:
        return {"resumed_from": (folder / "checkpoint.bin").read_text()}  # the checkpoint is still there

    assert runner.run("train_ar", {"a": 1}, resume, "tok")["resumed_from"] == "half way"
    runner.write_refs("run1")
    refs = json.loads((tmp_path / ".refs" / "run1.json").read_text())
    assert f"train_ar/{folder.name}" in refs["entries"]


def _runner_with_entries(work: Path) -> StageRunner:
    runner = StageRunner(work)
    for i in range(3):
        runner.run("probe", {"i": i}, lambda folder: {"value": 1.0}, f"t{i}")
    return runner


def test_cache_verify_reports_and_fixes_damage(tmp_path: Path, monkeypatch) -> None:
    import io

    from vfmtok.commands.cache import verify_all

    monkeypatch.setenv("VFMTOK_WORK_CACHE", str(tmp_path / "shared"))
    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path / "assets"))
    runner = _runner_with_entries(tmp_path / "work")
    (runner.path("probe", {"i": 1}) / "result.json").write_text('{"value": 2.0}')
    (tmp_path / "work" / "probe" / "incomplete").mkdir()
    out = io.StringIO()
    counts = verify_all(tmp_path / "work", out=out)
    assert (counts["intact"], counts["incomplete"], counts["damaged"]) == (2, 1, 1)
    lines = out.getvalue().splitlines()
    assert any(line.startswith("damaged probe/") and "result.json" in line for line in lines), lines
    verify_all(tmp_path / "work", fix=True, out=io.StringIO())
    assert not runner.path("probe", {"i": 1}).exists()
    assert verify_all(tmp_path / "work", out=io.StringIO())["damaged"] == 0


def test_cache_gc_keeps_what_records_use(tmp_path: Path) -> None:
    import io

    from vfmtok.commands.cache import gc
    from vfmtok.errors import UserError

    work, results = tmp_path / "work", tmp_path / "results"
    store.touched.clear()
    runner = StageRunner(work)
    runner.run("probe", {"i": 0}, lambda folder: {"value": 1.0}, "kept")
    runner.write_refs("run-a")
    (results / "runs" / "run-a").mkdir(parents=True)
    (results / "runs" / "run-a" / "record.json").write_text("{}")
    store.touched.clear()
    runner.run("probe", {"i": 1}, lambda folder: {"value": 1.0}, "orphan")
    kept, orphan = runner.path("probe", {"i": 0}), runner.path("probe", {"i": 1})
    assert gc(work, results, dry_run=True, min_age_s=0, out=io.StringIO()) == [orphan] and orphan.exists()
    assert gc(work, results, min_age_s=600, out=io.StringIO()) == []  # too young: kept
    assert gc(work, results, min_age_s=0, out=io.StringIO()) == [orphan]
    assert kept.is_dir() and not orphan.exists()
    (results / "runs" / "run-b").mkdir()
    (results / "runs" / "run-b" / "record.json").write_text("{}")  # a record without a list of entries
    with pytest.raises(UserError, match="run-b"):
        gc(work, results, min_age_s=0, out=io.StringIO())
    with store.file_lock(runner.entry("probe", {"i": 0}).lock_path), pytest.raises(UserError, match="in progress"):
        gc(work, results, force=True, min_age_s=0, out=io.StringIO())


def test_preflight_names_the_path_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    from benchmarks.config import load_config
    from benchmarks.preflight import PreflightError, estimate_bytes, preflight

    monkeypatch.setenv("VFMTOK_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("VFMTOK_WORK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = load_config(["preset=smoke", f"results_dir={blocker / 'results'}", f"work_dir={tmp_path / 'work'}"])
    with pytest.raises(PreflightError, match=r"results_dir .*file/results is not writable.*results_dir=PATH"):
        preflight(cfg)
    cfg = load_config(["preset=smoke", f"results_dir={tmp_path / 'r'}", f"work_dir={tmp_path / 'work'}"])
    with pytest.raises(PreflightError, match=r"train\.tar\.gz not found"):
        preflight(cfg)
    for name in ("train.tar.gz", "test.tar.gz", "official_order.json"):
        (tmp_path / "data" / "cifar10" / name).write_bytes(b"")
    need = preflight(cfg)
    assert need == estimate_bytes(cfg) and 0 < need < estimate_bytes(load_config(["preset=quick"]))
    cfg.catalog["vqgan"].checkpoint = str(tmp_path / "missing.pt")
    with pytest.raises(PreflightError, match=r"missing\.pt of tokenizer 'vqgan' not found"):
        preflight(cfg)
