"""Generation stages: tokens -> class-conditional GPT -> samples scored with and without guidance."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.config import BenchConfig, ReleasedGPTConfig
from benchmarks.context import RunContext
from benchmarks.records import Row, stage_rows
from benchmarks.weights import DATA_ENV, WEIGHTS_ENV, resolve_file
from vfmtok import load_official
from vfmtok.ar import create_gpt, generate, load_gpt_checkpoint
from vfmtok.ar.protocols import get_protocol
from vfmtok.assets import released_by_filename
from vfmtok.data.arrays import at_size
from vfmtok.distributed import is_main
from vfmtok.evaluation.adm import evaluate_samples
from vfmtok.evaluation.samples import SAMPLES_FILE, sample_images, sample_to_npz
from vfmtok.interface import Tokenizer
from vfmtok.metrics.reference import gfid, sample_results
from vfmtok.metrics.result import MetricResult
from vfmtok.metrics.throughput import measure
from vfmtok.token_cache import TokenCache, TokenDataset, build_token_cache
from vfmtok.train.ar_trainer import ARTrainConfig, train_ar
from vfmtok.train.config import config_from

GRID_SAMPLES = 16


def _gpt_for(ctx: RunContext, tok: Tokenizer) -> torch.nn.Module:
    spec = tok.spec
    return create_gpt(ctx.cfg.ar.model, vocab_size=spec.codebook_size, num_tokens=spec.num_tokens,
                      num_classes=len(ctx.data.train.classes), grid=tok.token_layout().grid)


def _sampling_throughput(model: torch.nn.Module, *, num_classes: int, device: torch.device,
                         batch_size: int = 8, cfg_scale: float = 2.0) -> list[dict[str, Any]]:
    """Generation tokens/s of ``model`` with and without the KV cache (guided, so 2x batch per forward)."""
    labels = torch.arange(batch_size, device=device) % num_classes
    rows = []
    for use_cache in (True, False):
        def run(use_cache: bool = use_cache) -> torch.Tensor:
            return generate(model, labels, cfg_scale=cfg_scale, use_cache=use_cache,
                            generator=torch.Generator(device).manual_seed(0))

        rate = measure(run, batch_items=batch_size, tokens_per_item=model.config.num_tokens, warmup=1, iters=2,
                       device=device)
        rows += stage_rows({"gen_tokens_per_s": MetricResult(rate.tokens_per_s)},
                           {"kv_cache": use_cache, "batch_size": batch_size, "cfg_scale": cfg_scale})
    return rows


def released_gpts(cfg: BenchConfig, alias: str) -> list[ReleasedGPTConfig]:
    """The released GPTs a run samples for tokenizer ``alias`` (``ar.released`` entries, or ``ar.official``)."""
    out = [g for g in cfg.ar.released if g.tokenizer == alias]
    if cfg.ar.official:
        out.append(ReleasedGPTConfig(tokenizer=alias, official=cfg.ar.official, checkpoint=cfg.ar.checkpoint,
                                     protocol=cfg.ar.protocol or "project", cfg_scales=list(cfg.ar.cfg_scales),
                                     table="ar.official"))
    return out


def run_released_generation(ctx: RunContext, tok: Tokenizer, key: dict[str, Any], name: str,
                            released: list[ReleasedGPTConfig]) -> tuple[list[Row], dict[str, Any]]:
    """Sample ``ar.num_samples`` images from each released GPT with its paper table's protocol (no training) and
    score them against the ADM reference batch ``ar.reference`` (``vfmtok fid``'s evaluator)."""
    cfg, ar = ctx.cfg, ctx.cfg.ar
    if not released:
        return [Row(name, "gfid", None, reason="no released GPT for this tokenizer in the preset (ar.released); "
                                               "streamed (ImageNet-scale) runs sample released GPTs only")], {}
    if not ar.reference:
        raise ValueError("ar.reference is empty: name the ADM reference batch (VIRTUAL_imagenet256_labeled.npz)")
    reference = resolve_file(ar.reference, envs=(WEIGHTS_ENV, DATA_ENV))
    rows: list[Row] = []
    files: dict[str, str] = {}
    for g in released:
        protocol = get_protocol(g.protocol)
        entries = released_by_filename(g.checkpoint)
        ckpt_key = entries[0].key if len(entries) == 1 else None
        scales = [float(s) for s in g.cfg_scales] or [protocol.cfg_scale_for(ckpt_key)]
        inputs = {**key, "gpt": dataclasses.asdict(g), "protocol": protocol.to_dict(), "scales": scales,
                  "num_samples": ar.num_samples, "seed": cfg.seed, "batch_size": ar.batch_size,
                  "eval_size": ar.eval_size, "reference": ar.reference}

        def sample_and_score(folder: Path, g: Any = g, protocol: Any = protocol, scales: list[float] = scales,
                             ckpt_key: str | None = ckpt_key) -> dict[str, Any]:
            gpt = load_official(g.official, resolve_file(g.checkpoint), weights=protocol.gpt_weights)
            gpt = gpt.to(ctx.device)
            out_rows, out_files = [], {}
            for scale in scales:
                sampling = {**protocol.sampling_kwargs(ckpt_key), "cfg_scale": scale}
                sub = folder / f"cfg{scale:g}"
                sample_to_npz(gpt, tok, num=ar.num_samples, seed=cfg.seed, batch_size=ar.batch_size, out_dir=sub,
                              labels=protocol.label_scheme, eval_size=ar.eval_size or None,
                              precision=protocol.precision, provenance={"protocol": protocol.name, "table": g.table},
                              **sampling)
                if is_main():  # scoring runs once; the other ranks wait at the stage barrier
                    res = evaluate_samples(sub / SAMPLES_FILE, reference, batch_size=64, device=ctx.device)
                    setting = {"cfg_scale": scale, "gpt": Path(g.checkpoint).name, "protocol": protocol.name,
                               "gpt_weights": getattr(gpt, "loaded_weights", protocol.gpt_weights), "table": g.table}
                    out_rows += stage_rows(res["results"], setting)
                    out_files[f"{Path(g.checkpoint).stem}@cfg{scale:g}"] = str(Path(sub.name) / SAMPLES_FILE)
            return {"rows": out_rows, "files": out_files, "ar_model": getattr(gpt, "registry_name", None)}

        result = ctx.runner.run("generate", inputs, sample_and_score, f"{name}/{Path(g.checkpoint).name}",
                                 collective=True)
        folder = ctx.runner.path("generate", inputs)
        rows += [Row(name, ar_model=result.get("ar_model"), **r) for r in result["rows"]]
        files.update({k: str(folder / v) for k, v in result["files"].items()})
    return rows, {"samples_npz": files}


def run_generation(ctx: RunContext, tok: Tokenizer, key: dict[str, Any], name: str,
                   alias: str | None = None) -> tuple[list[Row], dict[str, Any]]:
    """Token extraction, AR training (with gFID along the way) and the CFG sweep for one tokenizer; with released
    GPTs for ``alias`` (or streamed data) :func:`run_released_generation` instead."""
    released = released_gpts(ctx.cfg, alias) if alias is not None else []
    if released or ctx.data.stream:
        return run_released_generation(ctx, tok, key, name, released)
    cfg, runner, data = ctx.cfg, ctx.runner, ctx.data
    ar_cfg = dataclasses.asdict(cfg.ar)
    token_inputs = {**key, "train": data.fingerprints["train"], "flip": cfg.data.flip}
    token_dir = runner.path("tokens", token_inputs)

    def extract(folder: Path) -> dict[str, Any]:
        images, labels = at_size(data.train, tok.spec.image_size).tensors()
        build_token_cache(tok, images, labels, folder / "cache", key=token_inputs, flip=cfg.data.flip)
        return {"cache": "cache"}

    runner.run("tokens", token_inputs, extract, name, collective=True)
    reference = ctx.eval_images(tok)
    seeds = [cfg.seed + k for k in range(cfg.ar.repeats)]  # the first GPT is the one sampled below
    ar_cfg.pop("repeats")  # a seed's training does not depend on how many others run

    def train(folder: Path, seed: int) -> dict[str, Any]:
        torch.manual_seed(seed)
        model = _gpt_for(ctx, tok).to(ctx.device)
        dataset = TokenDataset(TokenCache(token_dir / "cache"), seed=seed)

        def hook(step: int, gpt: torch.nn.Module) -> dict[str, float]:
            images, _ = sample_images(gpt, tok, num_samples=cfg.ar.num_samples, num_classes=len(data.train.classes),
                                      cfg_scale=1.0, seed=seed, batch_size=64)
            return {"gfid": gfid(images, reference)["value"]}

        tcfg = config_from(ARTrainConfig, cfg.ar, seed=seed, device=cfg.device, progress=cfg.progress)
        result = train_ar(model, dataset, tcfg, folder, eval_hook=hook if cfg.ar.eval_every else None)
        return {"checkpoint": str(Path(result.checkpoint_path).relative_to(folder)),
                "curve": [[e["step"], e["gfid"]] for e in result.evals], "final_loss": result.final_loss,
                "loss_curve": [[h["step"], h["loss"]] for h in result.history]}

    rows: list[Row] = []
    for seed in seeds:
        ar_inputs = {"tokens": token_dir.name, "ar": ar_cfg, "seed": seed, "device": cfg.device,
                     "reference": data.fingerprints["eval"]}
        result = runner.run("train_ar", ar_inputs, lambda f, seed=seed: train(f, seed),
                            name if seed == cfg.seed else f"{name} seed {seed}", collective=True)
        if seed == cfg.seed:
            trained, ar_dir = result, runner.path("train_ar", ar_inputs)
            rows.append(Row(name, "ar_train_loss", result["final_loss"], ar_model=cfg.ar.model,
                            setting={"steps": cfg.ar.steps}))
        rows += [Row(name, "ar_train_loss", v, ar_model=cfg.ar.model, setting={"ar_step": s, "ar_seed": seed})
                 for s, v in result.get("loss_curve", [])]
        rows += [Row(name, "gfid", v, n=cfg.ar.num_samples, ar_model=cfg.ar.model,
                     setting={"cfg_scale": 1.0, "ar_step": s, "ar_seed": seed}) for s, v in result["curve"]]

    gen_inputs = {"ar": ar_dir.name, "cfg_scales": list(cfg.ar.cfg_scales), "num_samples": cfg.ar.num_samples,
                  "reference": data.fingerprints["eval"], "sampling": [cfg.ar.temperature, cfg.ar.top_k, cfg.ar.top_p]}

    def generate_and_score(folder: Path) -> dict[str, Any]:
        model = _gpt_for(ctx, tok).to(ctx.device).eval()
        load_gpt_checkpoint(model, ar_dir / trained["checkpoint"])
        out_rows, files = [], {}
        for scale in cfg.ar.cfg_scales:
            images, labels = sample_images(model, tok, num_samples=cfg.ar.num_samples,
                                           num_classes=len(data.train.classes), cfg_scale=scale, seed=cfg.seed,
                                           batch_size=64, temperature=cfg.ar.temperature, top_k=cfg.ar.top_k,
                                           top_p=cfg.ar.top_p)
            out_rows += stage_rows(sample_results(images, reference), {"cfg_scale": float(scale)})
            fname = f"samples_cfg{scale:g}.npz"
            if is_main():
                np.savez(folder / fname, arr_0=images[:GRID_SAMPLES].permute(0, 2, 3, 1).numpy())
            files[f"{scale:g}"] = fname
        if is_main():  # one process, alone on the machine
            out_rows += _sampling_throughput(model, num_classes=len(data.train.classes), device=ctx.device)
        return {"rows": out_rows, "files": files}

    generated = runner.run("generate", gen_inputs, generate_and_score, name, collective=True)
    gen_dir = runner.path("generate", gen_inputs)
    rows += [Row(name, ar_model=cfg.ar.model, **r) for r in generated["rows"]]
    artifacts = {"samples_npz": {k: str(gen_dir / v) for k, v in generated["files"].items()},
                 "convergence": trained["curve"]}
    return rows, artifacts
