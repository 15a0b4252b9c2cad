"""The VFMTok paper's claims beside what a run measured, each with a verdict: a pure function of the records.

``results/tables/claims.md`` (and ``.csv``) has two parts per record:

* **Budget**: whether training went past its early phase. The criterion: over the last 20% of a tokenizer's
  steps its evaluation PSNR rises by less than :data:`PSNR_FLAT_DB`, and over the last 20% of a GPT's steps its
  training loss falls by less than :data:`LOSS_FLAT_FRACTION` of its value.
* **Claims**: one line per claim, with the paper's number, the measured one and a verdict (``holds``, ``does not
  hold`` or ``inconclusive``) with its reason. A claim needs VFMTok (alias ``vfmtok``) and VQGAN (alias ``vqgan``)
  in the record; margins come from the run itself (binomial error of a probe accuracy, spread over GPT seeds).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.records import curves, record_label

HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive"
PSNR_FLAT_DB = 0.3
LOSS_FLAT_FRACTION = 0.02
LAST_FRACTION = 0.2
CAVEAT = ("the frozen encoder here is the FID Inception-v3, trained with ImageNet labels (not the paper's "
          "self-supervised DINOv2), and the same network computes every FID; models and budgets are tiny")


@dataclass(frozen=True)
class Verdict:
    """What a run says about one claim."""

    measured: str
    verdict: str
    reason: str


class Run:
    """The rows of one record, looked up by catalog alias (``vfmtok``, ``vqgan``, ``llamagen_vq``)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        config = record["config"]
        self.names = {alias: config["catalog"][alias]["name"] for alias in config.get("tokenizers", [])}

    def rows(self, alias: str, metric: str, when: Callable[[dict], bool] = lambda s: True) -> list[dict]:
        """The rows of ``metric`` of tokenizer ``alias`` whose setting ``when`` accepts."""
        name = self.names.get(alias)
        return [r for r in self.record["rows"] if r["tokenizer"] == name and r["metric"] == metric
                and r["value"] is not None and when(r["setting"])]

    def value(self, alias: str, metric: str, when: Callable[[dict], bool] = lambda s: True) -> dict | None:
        """The first such row, or None."""
        found = self.rows(alias, metric, when)
        return found[0] if found else None

    def curves(self, alias: str, metric: str, step_key: str) -> dict[int, list[tuple[int, float]]]:
        """``seed -> [(step, value)]`` of a curve metric (``gfid`` at ``ar_step``, ``train_psnr``...)."""
        name = self.names.get(alias)
        return {seed or 0: points for (tok, seed), points in curves(self.record, metric, step_key).items()
                if tok == name}


# --------------------------------------------------------------------------------------------- budget
def last_fraction_change(points: list[tuple[int, float]], fraction: float = LAST_FRACTION) -> float | None:
    """Value at the last step minus the value at ``(1 - fraction)`` of it (the latest point at or before that
    step; for noisy curves, the mean of the points in each of the last two ``fraction`` windows); None if the
    curve has no point early enough."""
    if not points:
        return None
    end = points[-1][0]
    cut = end * (1 - fraction)
    if len(points) >= 10:  # a dense, noisy curve (a loss): window means
        late = [v for s, v in points if s > cut]
        early = [v for s, v in points if cut - end * fraction < s <= cut]
        return sum(late) / len(late) - sum(early) / len(early) if late and early else None
    before = [v for s, v in points if s <= cut]
    return points[-1][1] - before[-1] if before else None


def gpt_loss_drops(run: Run, alias: str) -> dict[int, float]:
    """``seed -> relative fall of the training CE`` over the last 20% of steps of each GPT on ``alias``'s tokens."""
    out = {}
    for seed, loss in sorted(run.curves(alias, "ar_train_loss", "ar_step").items()):
        change = last_fraction_change(loss)
        if change is not None:
            out[seed] = -change / loss[-1][1]
    return out


def budget_rows(run: Run) -> list[dict[str, str]]:
    """Per tokenizer: PSNR gain over the last 20% of its steps, and each GPT's loss change over its last 20%."""
    out = []
    for alias in run.names:
        psnr = run.curves(alias, "train_psnr", "train_step").get(0, [])
        gain = last_fraction_change(psnr)
        if gain is not None:
            out.append({"model": f"{alias} tokenizer", "measure": "eval PSNR gain, last 20% of steps",
                        "value": f"{gain:+.2f} dB", "criterion": f"< {PSNR_FLAT_DB} dB",
                        "met": "yes" if gain < PSNR_FLAT_DB else "no"})
        for seed, rel in gpt_loss_drops(run, alias).items():
            out.append({"model": f"GPT on {alias}, seed {seed}", "measure": "train CE drop, last 20% of steps",
                        "value": f"{100 * rel:.1f}%", "criterion": f"< {100 * LOSS_FLAT_FRACTION:g}%",
                        "met": "yes" if rel < LOSS_FLAT_FRACTION else "no"})
    return out


# --------------------------------------------------------------------------------------------- claims
def _probe(run: Run) -> Verdict | None:
    pre = lambda s: s.get("features") == "pre_quant"  # noqa: E731
    a, b = run.value("vfmtok", "probe_top1", pre), run.value("vqgan", "probe_top1", pre)
    if a is None or b is None:
        return None
    gap = a["value"] - b["value"]
    p, q = a["value"] / 100, b["value"] / 100
    margin = 200 * math.sqrt(p * (1 - p) / a["n"] + q * (1 - q) / b["n"])  # 2 sigma of the difference, in points
    measured = f"{a['value']:.1f}% vs {b['value']:.1f}% (gap {gap:+.1f} points, n = {a['n']})"
    if abs(gap) <= margin:
        return Verdict(measured, OPEN, f"the gap is within 2 sigma ({margin:.1f} points) of the accuracies")
    return Verdict(measured, HOLDS if gap > 0 else FAILS,
                   f"gap beyond 2 sigma ({margin:.1f} points); an ImageNet-supervised encoder is expected to win")


def _usage(run: Run) -> Verdict | None:
    mine, grid = run.value("vfmtok", "codebook_usage"), run.value("vqgan", "codebook_usage")
    spec = run.record["tokenizers"].get(run.names.get("vfmtok", ""), {})
    if mine is None or not spec.get("codebook_size"):
        return None
    k, draws = spec["codebook_size"], mine["n"] * spec["num_tokens"]
    reachable = 100 * (1 - (1 - 1 / k) ** draws)  # expected usage of a uniform code distribution
    measured = f"{mine['value']:.1f}% of {k} codes" + (f" (VQGAN {grid['value']:.1f}%)" if grid else "")
    if reachable < 95:
        return Verdict(measured, OPEN, f"{draws} code draws reach only {reachable:.0f}% even if uniform")
    ok = mine["value"] >= 95
    return Verdict(measured, HOLDS if ok else FAILS, f"{draws} draws over {mine['n']} images; "
                   f"threshold 95% (a uniform distribution reaches {reachable:.1f}%)")


def steps_to(points: list[tuple[int, float]], target: float) -> int | None:
    """The first step whose value is at or below ``target``."""
    return next((s for s, v in points if v <= target), None)


def _convergence(run: Run) -> Verdict | None:
    mine, grid = run.curves("vfmtok", "gfid", "ar_step"), run.curves("vqgan", "gfid", "ar_step")
    seeds = sorted(set(mine) & set(grid))
    if not seeds:
        return None
    ratios, parts = [], []
    for seed in seeds:
        target = max(min(v for _, v in mine[seed]), min(v for _, v in grid[seed]))
        a, b = steps_to(mine[seed], target), steps_to(grid[seed], target)
        ratios.append(b / a)  # both reach the target: it is the worse of their best values
        parts.append(f"seed {seed}: {b}/{a} steps to gFID {target:.1f}")
    n = run.value("vfmtok", "gfid", lambda s: "ar_step" in s)["n"]
    step = mine[seeds[0]][0][0]
    mean = sum(ratios) / len(ratios)
    measured = f"{mean:.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}; {'; '.join(parts)}; n = {n})"
    if len(seeds) < 2:
        return Verdict(measured, OPEN, "one GPT seed: the spread over seeds is unknown (ar.repeats >= 2)")
    if all(r > 1 for r in ratios):
        return Verdict(measured, HOLDS if min(ratios) >= 3 else OPEN,
                       "VFMTok's GPT reaches the common target first on every seed" +
                       ("" if min(ratios) >= 3 else f", but by less than 3x (evaluations every {step} steps)"))
    if all(r < 1 for r in ratios):
        return Verdict(measured, FAILS, "VQGAN's GPT reaches the common target first on every seed")
    return Verdict(measured, OPEN, f"ties or mixed order across seeds (evaluations every {step} steps)")


def _cfg_gap(run: Run) -> Verdict | None:
    def gap(alias: str) -> tuple[float, float, float, int] | None:
        plain = run.value(alias, "gfid", lambda s: "ar_step" not in s and s.get("cfg_scale") == 1.0)
        guided = run.rows(alias, "gfid", lambda s: "ar_step" not in s and s.get("cfg_scale", 1.0) > 1.0)
        if plain is None or not guided:
            return None
        best = min(guided, key=lambda r: r["value"])
        return plain["value"], best["value"], best["setting"]["cfg_scale"], plain["n"]

    mine, grid = gap("vfmtok"), gap("vqgan")
    if mine is None:
        return None
    plain, best, scale, n = mine
    rel = (plain - best) / best
    measured = f"{plain:.1f} without vs {best:.1f} at cfg {scale:g} ({100 * rel:+.0f}%)"
    if grid:
        measured += f"; VQGAN {grid[0]:.1f} vs {grid[1]:.1f} ({100 * (grid[0] - grid[1]) / grid[1]:+.0f}%)"
    measured += f" (n = {n})"
    finals = [points[-1][1] for points in run.curves("vfmtok", "gfid", "ar_step").values()]
    spread = max(finals) - min(finals) if len(finals) >= 2 else None
    if spread is None:
        return Verdict(measured, OPEN, "one GPT seed: no spread to judge a gap against")
    if plain - best <= spread:
        return Verdict(measured, HOLDS, f"guidance gains no more than the seed spread of cfg=1 gFID ({spread:.1f})")
    return Verdict(measured, FAILS, f"guidance gains more than the seed spread of cfg=1 gFID ({spread:.1f})")


def _on_trained_gpts(test: Callable[[Run], Verdict | None]) -> Callable[[Run], Verdict | None]:
    """``test``, whose verdict stands only if the GPTs it compares are past early training (the budget table)."""
    def judged(run: Run) -> Verdict | None:
        verdict = test(run)
        if verdict is None:
            return None
        late = [a for a in ("vfmtok", "vqgan") if any(d >= LOSS_FLAT_FRACTION for d in gpt_loss_drops(run, a).values())]
        if not late:
            return verdict
        return Verdict(verdict.measured, OPEN, f"the GPTs on {' and '.join(late)} tokens are still learning (budget "
                                               f"table); at face value: {verdict.verdict}, {verdict.reason}")

    return judged


def _tokens(run: Run) -> Verdict | None:
    mine = run.value("vfmtok", "rfid")
    grids = {alias: run.value(alias, "rfid") for alias in ("vqgan", "llamagen_vq")}
    grids = {alias: r for alias, r in grids.items() if r is not None}
    if mine is None or not grids:
        return None
    tokens = {alias: run.record["tokenizers"][run.names[alias]]["num_tokens"] for alias in ("vfmtok", *grids)}
    measured = f"VFMTok {mine['value']:.1f} at {tokens['vfmtok']} tokens; " + "; ".join(
        f"{alias} {r['value']:.1f} at {tokens[alias]}" for alias, r in grids.items()) + f" (n = {mine['n']})"
    best_grid = min(r["value"] for r in grids.values())
    if any(tokens[alias] > tokens["vfmtok"] for alias in grids):
        fewer = "with fewer tokens"
    else:
        fewer = "at equal token counts only (fewer tokens not tested)"
    if abs(mine["value"] - best_grid) <= 0.05 * best_grid:
        return Verdict(measured, OPEN, f"within 5% of the best grid tokenizer, {fewer}")
    return Verdict(measured, HOLDS if mine["value"] < best_grid else FAILS,
                   f"{'lower' if mine['value'] < best_grid else 'higher'} rFID than every grid tokenizer, {fewer}")


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and how a run tests it."""

    name: str
    paper: str
    test: Callable[[Run], Verdict | None]
    properly: str  # what would test the claim at the paper's scale


CLAIMS: tuple[Claim, ...] = (
    Claim("linear probe: VFMTok features > VQGAN's", "higher (pilot study, Table 1; values not in the sources "
          "used here)", _probe, "a self-supervised frozen encoder (DINOv2, as the paper) on ImageNet: the released "
          "VFMTok in the `imagenet256` preset on a GPU"),
    Claim("codebook usage near 100%", "100% of 16,384 codes (ImageNet val)", _usage,
          "the released VFMTok over the 50,000 ImageNet val images (`imagenet256` preset)"),
    Claim("AR converges 3x faster (steps to a common gFID, VQGAN / VFMTok)", "3x (Fig. 1)",
          _on_trained_gpts(_convergence),
          "the `cifar10` preset on a GPU with `ar.repeats=3` and a finer `ar.eval_every`; the paper measures "
          "GPT-B on ImageNet"),
    Claim("CFG-free gFID close to best-CFG gFID", "B: 3.09 without vs 3.43 with; 3B: 2.04 vs 2.07",
          _on_trained_gpts(_cfg_gap),
          "the released GPTs at cfg 1 and at their best scale, 50,000 samples each (`imagenet256` preset)"),
    Claim("better rFID with fewer tokens than grid tokenizers",
          "0.89 at 256 tokens vs LlamaGen VQ-16 2.19 at 256 (ImageNet 256 px)", _tokens,
          "a VFMTok with fewer queries than the grid has tokens (e.g. 32 vs 64) in the `cifar10` preset on a GPU, "
          "and the released weights in `imagenet256`"),
)


def claim_rows(record: dict[str, Any]) -> list[dict[str, str]]:
    """One row per claim the record can test."""
    run = Run(record)
    out = []
    for claim in CLAIMS:
        verdict = claim.test(run) if {"vfmtok", "vqgan"} <= set(run.names) else None
        if verdict is not None:
            out.append({"preset": record_label(record), "claim": claim.name, "paper": claim.paper,
                        "measured": verdict.measured, "verdict": verdict.verdict, "reason": verdict.reason,
                        "to test it properly": claim.properly, "run": record["run_id"]})
    return out


def _table(rows: list[dict[str, str]]) -> list[str]:
    keys = list(rows[0])
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *("| " + " | ".join(r[k] for k in keys) + " |" for r in rows)]


def render_claims(records: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]] | None:
    """(markdown, claim rows) of every record that can test a claim; None if none can."""
    sections, all_rows = [], []
    for record in records:
        rows = claim_rows(record)
        if not rows:
            continue
        all_rows += rows
        budget = budget_rows(Run(record))
        sections += [f"## {record_label(record)} (run {record['run_id']})", "", *_table(rows), ""]
        if budget:
            sections += [f"Past early training? Criterion: eval PSNR gains < {PSNR_FLAT_DB} dB and GPT train CE "
                         f"drops < {100 * LOSS_FLAT_FRACTION:g}% over the last {100 * LAST_FRACTION:g}% of steps.",
                         "", *_table(budget), ""]
    if not all_rows:
        return None
    head = ["# The paper's claims at this scale", "", f"Caveat for every verdict: {CAVEAT}.", ""]
    return "\n".join(head + sections).rstrip() + "\n", all_rows
