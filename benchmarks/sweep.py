"""Learning-rate sweep at equal budget: ``python -m benchmarks.sweep --steps 150 --lrs 3e-4 1e-3 3e-3 -- preset=NAME``.

Every tokenizer of the preset is trained for the same short budget (``--steps`` steps of its preset batch, its
preset warm-up and schedule scaled to that budget) at each learning rate, then scored by the PSNR of its
reconstructions of the first :data:`~benchmarks.pipeline.TRAIN_EVAL_IMAGES` evaluation images. Runs go through
the stage cache (a rerun recomputes nothing); the table is written to ``results/sweeps/<preset>.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from benchmarks import context
from benchmarks.config import load_config
from benchmarks.pipeline import TRAIN_EVAL_IMAGES, Pipeline
from benchmarks.stages import StageRunner
from vfmtok.fileio import atomic_write_json, atomic_write_text


def sweep(overrides: list[str], steps: int, lrs: list[float]) -> dict[str, Any]:
    """``{"preset", "steps", "lrs", "psnr": {alias: [PSNR per lr]}, "best": {alias: lr}}`` for the preset's
    tokenizers."""
    cfg = load_config(overrides)
    plan = Pipeline(cfg, StageRunner(cfg.work_dir), context.prepare_data(cfg))
    psnr: dict[str, list[float]] = {}
    for alias in cfg.tokenizers:
        base = cfg.catalog[alias]
        warmup = round(base.warmup_steps * steps / base.steps)
        for lr in lrs:
            run = dataclasses.replace(base, steps=steps, lr=lr, warmup_steps=warmup, eval_every=steps)
            _, result = plan.train_tokenizer(run)
            psnr.setdefault(alias, []).append(result["curve"][-1][1])
    best = {alias: lrs[max(range(len(lrs)), key=values.__getitem__)] for alias, values in psnr.items()}
    return {"preset": cfg.preset, "steps": steps, "lrs": lrs, "psnr": psnr, "best": best,
            "n_images": min(TRAIN_EVAL_IMAGES, cfg.data.eval_n),
            "batch_size": {alias: cfg.catalog[alias].batch_size for alias in cfg.tokenizers}}


def to_markdown(result: dict[str, Any]) -> str:
    """The sweep as a table: PSNR (dB) per tokenizer and learning rate, the best one in bold."""
    lrs = result["lrs"]
    lines = [f"# Learning-rate sweep, preset {result['preset']}", "",
             f"{result['steps']} steps per run; PSNR (dB) of the reconstructions of the first {result['n_images']} "
             "evaluation images; best per tokenizer in bold.", "",
             "| tokenizer | batch | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|---|" + "---|" * len(lrs)]
    for alias, values in result["psnr"].items():
        cells = [f"**{v:.2f}**" if lr == result["best"][alias] else f"{v:.2f}" for lr, v in zip(lrs, values)]
        lines.append(f"| {alias} | {result['batch_size'][alias]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per run (> 0)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3], help="learning rates (> 0)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="hydra overrides, e.g. preset=cifar10_cpu")
    args = parser.parse_args(argv)
    if args.steps <= 0 or any(lr <= 0 for lr in args.lrs):
        parser.error(f"--steps must be > 0 and every --lrs value > 0, got {args.steps} and {args.lrs}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = sweep(args.overrides, args.steps, args.lrs)
    out = Path(load_config(args.overrides).results_dir) / "sweeps"
    atomic_write_json(out / f"{result['preset']}.json", result)
    print(atomic_write_text(out / f"{result['preset']}.md", to_markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
