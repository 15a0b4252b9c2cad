"""The claims table: each verdict follows from the rows, margins come from the run, and it is byte-stable."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.claims import FAILS, HOLDS, OPEN, Run, budget_rows, claim_rows, last_fraction_change, render_claims
from benchmarks.pipeline import convergence_rows
from benchmarks.records import Row, build_record

NAMES = {"vfmtok": "vfm", "vqgan": "vq"}


def _curve(tok: str, seed: int, values: list[float]) -> list[Row]:
    return [Row(tok, "gfid", v, n=1000, ar_model="gpt", setting={"cfg_scale": 1.0, "ar_step": 100 * (i + 1),
                                                                 "ar_seed": seed}) for i, v in enumerate(values)]


def _record(vfm_curves: dict[int, list[float]], vq_curves: dict[int, list[float]],
            probe: tuple[float, float] = (60, 30), usage: float = 99.0,
            cfg: tuple[float, float] = (50.0, 48.0), rfid: tuple[float, float] = (20.0, 30.0),
            eval_n: int = 1000) -> dict:
    rows = [Row("vfm", "probe_top1", probe[0], n=eval_n, setting={"features": "pre_quant"}),
            Row("vq", "probe_top1", probe[1], n=eval_n, setting={"features": "pre_quant"}),
            Row("vfm", "codebook_usage", usage, n=eval_n), Row("vq", "codebook_usage", 40.0, n=eval_n),
            Row("vfm", "rfid", rfid[0], n=eval_n), Row("vq", "rfid", rfid[1], n=eval_n),
            Row("vfm", "gfid", cfg[0], n=1000, ar_model="gpt", setting={"cfg_scale": 1.0}),
            Row("vfm", "gfid", cfg[1], n=1000, ar_model="gpt", setting={"cfg_scale": 2.0}),
            Row("vfm", "gfid", cfg[1] + 5, n=1000, ar_model="gpt", setting={"cfg_scale": 3.0})]
    rows += [Row("vfm", "train_psnr", 18 + i * 0.5 / (i + 1), n=256, setting={"train_step": 160 * (i + 1)})
             for i in range(5)]
    for seed, values in vfm_curves.items():
        rows += _curve("vfm", seed, values)
    for seed, values in vq_curves.items():
        rows += _curve("vq", seed, values)
    catalog = {alias: {"name": name} for alias, name in NAMES.items()}
    tokenizers = {"vfm": {"num_tokens": 64, "codebook_size": 4096}, "vq": {"num_tokens": 64, "codebook_size": 1024}}
    return build_record(run_id="r1", preset="unit", config={"catalog": catalog, "tokenizers": list(NAMES)},
                        code={"version": "0"}, seeds={"seed": 0}, data={}, fid={}, tokenizers=tokenizers,
                        rows=rows, notes={}, artifacts={})


def _verdicts(record: dict) -> dict[str, str]:
    return {r["claim"].split(":")[0].split(" ")[0]: r["verdict"] for r in claim_rows(record)}


def test_convergence_verdict_needs_every_seed_and_the_claimed_factor() -> None:
    faster = _record({0: [40, 30, 30], 1: [41, 31, 30]}, {0: [60, 50, 40], 1: [61, 52, 41]})
    row = next(r for r in claim_rows(faster) if r["claim"].startswith("AR"))
    assert row["verdict"] == HOLDS and row["measured"].startswith("3.00x")  # 300 / 100 steps on both seeds
    mixed = _record({0: [40, 30, 30], 1: [60, 50, 40]}, {0: [60, 50, 40], 1: [40, 30, 30]})
    assert next(r for r in claim_rows(mixed) if r["claim"].startswith("AR"))["verdict"] == OPEN
    slower = _record({0: [60, 50, 40], 1: [61, 52, 41]}, {0: [40, 30, 30], 1: [41, 31, 30]})
    assert next(r for r in claim_rows(slower) if r["claim"].startswith("AR"))["verdict"] == FAILS
    one_seed = _record({0: [40, 30, 30]}, {0: [60, 50, 40]})
    assert "one GPT seed" in next(r for r in claim_rows(one_seed) if r["claim"].startswith("AR"))["reason"]


def test_probe_gap_is_judged_against_its_binomial_error() -> None:
    curves = ({0: [40, 30]}, {0: [50, 40]})
    assert _verdicts(_record(*curves, probe=(60, 30)))["linear"] == HOLDS
    assert _verdicts(_record(*curves, probe=(31, 30)))["linear"] == OPEN  # 1 point at n = 1000: noise
    assert _verdicts(_record(*curves, probe=(20, 45)))["linear"] == FAILS


def test_usage_is_inconclusive_when_too_few_codes_are_drawn() -> None:
    curves = ({0: [40, 30]}, {0: [50, 40]})
    assert _verdicts(_record(*curves, usage=99.0))["codebook"] == HOLDS
    assert _verdicts(_record(*curves, usage=60.0))["codebook"] == FAILS
    assert _verdicts(_record(*curves, usage=99.0, eval_n=10))["codebook"] == OPEN  # 640 draws over 4096 codes


def test_cfg_gap_is_judged_against_the_seed_spread() -> None:
    curves = ({0: [40, 30], 1: [40, 33]}, {0: [50, 40], 1: [50, 40]})  # final cfg=1 gFIDs 30 and 33: spread 3
    assert _verdicts(_record(*curves, cfg=(50.0, 48.0)))["CFG-free"] == HOLDS
    assert _verdicts(_record(*curves, cfg=(50.0, 40.0)))["CFG-free"] == FAILS
    assert _verdicts(_record({0: [40, 30]}, {0: [50, 40]}))["CFG-free"] == OPEN


def test_gpt_claims_are_not_judged_on_gpts_that_are_still_learning() -> None:
    record = _record({0: [40, 30], 1: [40, 33]}, {0: [50, 40], 1: [50, 40]}, cfg=(50.0, 40.0))
    assert _verdicts(record)["CFG-free"] == FAILS
    falling = [Row("vfm", "ar_train_loss", 5.0 - 0.05 * k, ar_model="gpt", setting={"ar_step": 10 * k, "ar_seed": 0})
               for k in range(1, 21)]  # the last fifth is 5% lower than the fifth before it
    record["rows"] += [dataclasses.asdict(r) for r in falling]
    row = next(r for r in claim_rows(record) if r["claim"].startswith("CFG-free"))
    assert row["verdict"] == OPEN and "at face value: does not hold" in row["reason"]


def test_tokens_claim_says_when_only_equal_token_counts_were_tested() -> None:
    rows = claim_rows(_record({0: [40]}, {0: [50]}, rfid=(20.0, 30.0)))
    row = next(r for r in rows if r["claim"].startswith("better"))
    assert row["verdict"] == HOLDS and "fewer tokens not tested" in row["reason"]
    assert _verdicts(_record({0: [40]}, {0: [50]}, rfid=(29.0, 30.0)))["better"] == OPEN


def test_budget_criterion_reads_the_last_fifth_of_each_curve() -> None:
    assert last_fraction_change([(160, 18.0), (320, 19.0), (480, 19.5), (640, 19.8), (800, 20.0)]) == pytest.approx(0.2)
    dense = [(s, 3.0 if s <= 80 else 2.9) for s in range(10, 101, 10)]  # windows (60, 80] and (80, 100]
    assert last_fraction_change(dense) == pytest.approx(-0.1)
    assert last_fraction_change([(100, 1.0)]) is None
    rows = budget_rows(Run(_record({0: [40]}, {0: [50]})))
    assert rows[0]["model"] == "vfmtok tokenizer" and rows[0]["met"] == "yes"


def test_render_is_stable_and_skips_records_without_both_tokenizers() -> None:
    record = _record({0: [40, 30], 1: [41, 31]}, {0: [60, 50], 1: [61, 52]})
    md, rows = render_claims([record])
    assert render_claims([record])[0] == md and "Caveat" in md and len(rows) == 5
    other = dict(record, config={"catalog": {"a": {"name": "vq"}}, "tokenizers": ["a"]})
    assert render_claims([other]) is None


def test_convergence_rows_are_per_seed_against_one_target() -> None:
    rows = _curve("a", 0, [50, 40]) + _curve("a", 1, [55, 45]) + _curve("b", 0, [60, 30]) + _curve("b", 1, [44, 20])
    out = {(r.tokenizer, r.setting["ar_seed"]): r.value for r in convergence_rows(rows)}
    assert out == {("a", 0): 200, ("a", 1): 200, ("b", 0): 200, ("b", 1): 100}  # target 45: a's seed 1 best
