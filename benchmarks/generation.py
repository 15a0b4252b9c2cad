"""Generation stages: tokens -> class-conditional GPT -> samples scored with and without guidance."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.records import Row
from vfmtok.distributed import is_main
from vfmtok.interface import Tokenizer

GRID_SAMPLES = 16


def _gpt_for(plan: Any, tok: Tokenizer) -> torch.nn.Module:
    from vfmtok.ar import create_gpt

    spec = tok.spec
    grid = spec.token_grid or getattr(tok, "query_grid", None)
    return create_gpt(plan.cfg.ar.model, vocab_size=spec.codebook_size, num_tokens=spec.num_tokens,
                      num_classes=len(plan.data.train.classes), grid=grid)


def _sampling_throughput(model: torch.nn.Module, *, num_classes: int, device: torch.device,
                         batch_size: int = 8, cfg_scale: float = 2.0) -> list[dict[str, Any]]:
    """Generation tokens/s of ``model`` with and without the KV cache (guided, so 2x batch per forward)."""
    from vfmtok.ar import generate
    from vfmtok.metrics.throughput import measure

    labels = torch.arange(batch_size, device=device) % num_classes
    rows = []
    for use_cache in (True, False):
        def run(use_cache: bool = use_cache) -> torch.Tensor:
            return generate(model, labels, cfg_scale=cfg_scale, use_cache=use_cache,
                            generator=torch.Generator(device).manual_seed(0))

        rate = measure(run, batch_items=batch_size, tokens_per_item=model.config.num_tokens, warmup=1, iters=2,
                       device=device)
        rows.append({"metric": "gen_tokens_per_s", "value": rate.tokens_per_s,
                     "setting": {"kv_cache": use_cache, "batch_size": batch_size, "cfg_scale": cfg_scale}})
    return rows


def released_gpts(cfg: Any, alias: str) -> list[Any]:
    """The released GPTs a run samples for tokenizer ``alias`` (``ar.released`` entries, or ``ar.official``)."""
    from benchmarks.config import ReleasedGPTConfig

    out = [g for g in cfg.ar.released if g.tokenizer == alias]
    if cfg.ar.official:
        out.append(ReleasedGPTConfig(tokenizer=alias, official=cfg.ar.official, checkpoint=cfg.ar.checkpoint,
                                     protocol=cfg.ar.protocol or "project", cfg_scales=list(cfg.ar.cfg_scales),
                                     table="ar.official"))
    return out


def _score_rows(res: dict[str, Any], setting: dict[str, Any]) -> list[dict[str, Any]]:
    """Result rows of one :func:`vfmtok.evaluation.adm.evaluate_samples` call."""
    n = res["n"]
    rows = []
    for metric, key, reason_key in (("gfid", "fid", None), ("sfid", "sfid", "sfid_reason"),
                                    ("precision", "precision", "precision_recall_reason"),
                                    ("recall", "recall", "precision_recall_reason"),
                                    ("inception_score", "inception_score", "inception_score_reason")):
        row = {"metric": metric, "value": res[key], "n": n, "setting": setting}
        if res[key] is None:
            row["reason"] = res.get(reason_key or "") or f"{metric} not computed"
        rows.append(row)
    return rows


def run_released_generation(plan: Any, tok: Tokenizer, key: dict[str, Any], name: str,
                            released: list[Any]) -> tuple[list[Row], dict[str, Any]]:
    """Sample ``ar.num_samples`` images from each released GPT with its paper table's protocol (no training) and
    score them against the ADM reference batch ``ar.reference`` (``vfmtok fid``'s evaluator)."""
    from benchmarks.weights import DATA_ENV, WEIGHTS_ENV, resolve_file
    from vfmtok import load_official
    from vfmtok.ar.protocols import get_protocol
    from vfmtok.assets import released_by_filename
    from vfmtok.evaluation.adm import evaluate_samples
    from vfmtok.evaluation.samples import SAMPLES_FILE, sample_to_npz

    cfg, ar = plan.cfg, plan.cfg.ar
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
            gpt = gpt.to(plan.device)
            out_rows, out_files = [], {}
            for scale in scales:
                sampling = {**protocol.sampling_kwargs(ckpt_key), "cfg_scale": scale}
                sub = folder / f"cfg{scale:g}"
                sample_to_npz(gpt, tok, num=ar.num_samples, seed=cfg.seed, batch_size=ar.batch_size, out_dir=sub,
                              labels=protocol.label_scheme, eval_size=ar.eval_size or None,
                              precision=protocol.precision, provenance={"protocol": protocol.name, "table": g.table},
                              **sampling)
                if is_main():  # scoring runs once; the other ranks wait at the stage barrier
                    res = evaluate_samples(sub / SAMPLES_FILE, reference, batch_size=64, device=plan.device)
                    setting = {"cfg_scale": scale, "gpt": Path(g.checkpoint).name, "protocol": protocol.name,
                               "gpt_weights": getattr(gpt, "loaded_weights", protocol.gpt_weights), "table": g.table}
                    out_rows += _score_rows(res, setting)
                    out_files[f"{Path(g.checkpoint).stem}@cfg{scale:g}"] = str(Path(sub.name) / SAMPLES_FILE)
            return {"rows": out_rows, "files": out_files, "ar_model": getattr(gpt, "registry_name", None)}

        result = plan.runner.run("generate", inputs, sample_and_score, f"{name}/{Path(g.checkpoint).name}",
                                 collective=True)
        folder = plan.runner.path("generate", inputs)
        rows += [Row(name, ar_model=result.get("ar_model"), **r) for r in result["rows"]]
        files.update({k: str(folder / v) for k, v in result["files"].items()})
    return rows, {"samples_npz": files}


def run_generation(plan: Any, tok: Tokenizer, key: dict[str, Any], name: str,
                   alias: str | None = None) -> tuple[list[Row], dict[str, Any]]:
    """Token extraction, AR training (with gFID along the way) and the CFG sweep for one tokenizer; with released
    GPTs for ``alias`` (or streamed data) :func:`run_released_generation` instead."""
    released = released_gpts(plan.cfg, alias) if alias is not None else []
    if released or plan.data.stream:
        return run_released_generation(plan, tok, key, name, released)
    from vfmtok.ar import load_gpt_checkpoint
    from vfmtok.data.token_cache import build_token_cache

    cfg, runner, data = plan.cfg, plan.runner, plan.data
    ar_cfg = dataclasses.asdict(cfg.ar)
    token_inputs = {**key, "train": data.fingerprints["train"], "flip": cfg.data.flip}
    token_dir = runner.path("tokens", token_inputs)

    def extract(folder: Path) -> dict[str, Any]:
        from benchmarks.pipeline import _at_size

        images, labels = _at_size(data.train, tok.spec.image_size).tensors()
        build_token_cache(tok, images, labels, folder / "cache", key=token_inputs, flip=cfg.data.flip)
        return {"cache": "cache"}

    runner.run("tokens", token_inputs, extract, name, collective=True)
    reference = plan.eval_images(tok)
    ar_inputs = {"tokens": token_dir.name, "ar": ar_cfg, "seed": cfg.seed, "device": cfg.device,
                 "reference": data.fingerprints["eval"]}

    def train(folder: Path) -> dict[str, Any]:
        from vfmtok.ar.evaluate import sample_images
        from vfmtok.data.token_cache import TokenCache, TokenDataset
        from vfmtok.metrics.reference import gfid
        from vfmtok.train.ar_trainer import ARTrainConfig, train_ar

        torch.manual_seed(cfg.seed)
        model = _gpt_for(plan, tok).to(plan.device)
        dataset = TokenDataset(TokenCache(token_dir / "cache"), seed=cfg.seed)

        def hook(step: int, gpt: torch.nn.Module) -> dict[str, float]:
            images, _ = sample_images(gpt, tok, num_samples=cfg.ar.num_samples, num_classes=len(data.train.classes),
                                      cfg_scale=1.0, seed=cfg.seed, batch_size=64)
            return {"gfid": gfid(images, reference)["value"]}

        tcfg = ARTrainConfig(steps=cfg.ar.steps, batch_size=cfg.ar.batch_size, lr=cfg.ar.lr,
                             warmup_steps=cfg.ar.warmup_steps, eval_every=cfg.ar.eval_every, seed=cfg.seed,
                             device=cfg.device, progress=cfg.progress)
        result = train_ar(model, dataset, tcfg, folder, eval_hook=hook if cfg.ar.eval_every else None)
        return {"checkpoint": str(Path(result.checkpoint_path).relative_to(folder)),
                "curve": [[e["step"], e["gfid"]] for e in result.evals], "final_loss": result.final_loss}

    trained = runner.run("train_ar", ar_inputs, train, name, collective=True)
    ar_dir = runner.path("train_ar", ar_inputs)
    rows = [Row(name, "ar_train_loss", trained["final_loss"], ar_model=cfg.ar.model,
                setting={"steps": cfg.ar.steps})]
    rows += [Row(name, "gfid", v, n=cfg.ar.num_samples, ar_model=cfg.ar.model, setting={"cfg_scale": 1.0, "ar_step": s})
             for s, v in trained["curve"]]

    gen_inputs = {"ar": ar_dir.name, "cfg_scales": list(cfg.ar.cfg_scales), "num_samples": cfg.ar.num_samples,
                  "reference": data.fingerprints["eval"], "sampling": [cfg.ar.temperature, cfg.ar.top_k, cfg.ar.top_p]}

    def generate(folder: Path) -> dict[str, Any]:
        from vfmtok.ar.evaluate import sample_images
        from vfmtok.metrics.reference import gfid, precision_recall_for

        model = _gpt_for(plan, tok).to(plan.device).eval()
        load_gpt_checkpoint(model, ar_dir / trained["checkpoint"])
        out_rows, files = [], {}
        for scale in cfg.ar.cfg_scales:
            images, labels = sample_images(model, tok, num_samples=cfg.ar.num_samples,
                                           num_classes=len(data.train.classes), cfg_scale=scale, seed=cfg.seed,
                                           batch_size=64, temperature=cfg.ar.temperature, top_k=cfg.ar.top_k,
                                           top_p=cfg.ar.top_p)
            setting = {"cfg_scale": float(scale)}
            n = len(images)
            out_rows.append({"metric": "gfid", "value": gfid(images, reference)["value"], "n": n, "setting": setting})
            pr = precision_recall_for(images, reference)
            out_rows += [{"metric": "precision", "value": pr["precision"], "n": n, "setting": setting},
                         {"metric": "recall", "value": pr["recall"], "n": n, "setting": setting}]
            is_ = pr.get("inception_score")
            out_rows.append({"metric": "inception_score", "n": n, "setting": setting,
                             "value": is_["value"] if is_ else None,
                             "reason": None if is_ and is_["value"] is not None else
                             (is_ or {}).get("reason", "Inception logits weights unavailable")})
            fname = f"samples_cfg{scale:g}.npz"
            if is_main():
                np.savez(folder / fname, arr_0=images[:GRID_SAMPLES].permute(0, 2, 3, 1).numpy())
            files[f"{scale:g}"] = fname
        if is_main():  # one process, alone on the machine
            out_rows += _sampling_throughput(model, num_classes=len(data.train.classes), device=plan.device)
        return {"rows": out_rows, "files": files}

    generated = runner.run("generate", gen_inputs, generate, name, collective=True)
    gen_dir = runner.path("generate", gen_inputs)
    rows += [Row(name, ar_model=cfg.ar.model, **r) for r in generated["rows"]]
    artifacts = {"samples_npz": {k: str(gen_dir / v) for k, v in generated["files"].items()},
                 "convergence": trained["curve"]}
    return rows, artifacts
