"""The tokenizer stages of a benchmark run, each a small function over the public library API.

``Pipeline.tokenizer(alias)`` runs every stage for one tokenizer through the stage cache and returns its
result rows, spec and artifacts. Stage inputs name everything a result depends on (configuration,
upstream stage keys, data fingerprints), so a cached result is reused exactly when it is still valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.config import BenchConfig, TokenizerRunConfig
from benchmarks.context import RunContext
from benchmarks.generation import GRID_SAMPLES, run_generation
from benchmarks.records import Row, stage_rows
from benchmarks.weights import resolve_file, resolved_overrides
from vfmtok import create_tokenizer, from_pretrained, load_official
from vfmtok.assets import data_root
from vfmtok.data.arrays import at_size
from vfmtok.data.sources import open_images
from vfmtok.distributed import is_main
from vfmtok.encoders.feature_cache import CachedFeatureDataset, build_feature_cache
from vfmtok.evaluation.recon import evaluate_reconstruction_stream
from vfmtok.images import to_model_range
from vfmtok.interface import Tokenizer
from vfmtok.lpips_vgg import lpips_unavailable_reason
from vfmtok.metrics.evaluate import evaluate_reconstruction
from vfmtok.metrics.probe import probe
from vfmtok.metrics.recon import psnr_per_image
from vfmtok.metrics.result import MetricResult
from vfmtok.metrics.throughput import measure
from vfmtok.train import TokenizerTrainConfig, TokenizerTrainer
from vfmtok.train.config import config_from


# --------------------------------------------------------------------------------------------- results
@dataclass
class TokenizerResult:
    """Everything one tokenizer contributes to the record."""

    spec: dict[str, Any]
    rows: list[Row]
    artifacts: dict[str, Any]


#: evaluation images whose PSNR is measured along tokenizer training (``catalog.ALIAS.eval_every``)
TRAIN_EVAL_IMAGES = 256


def _psnr_hook(images: torch.Tensor) -> Callable[[int, torch.nn.Module], dict[str, float]]:
    """The training evaluation of a tokenizer: mean PSNR of its reconstructions of ``images`` (uint8)."""
    def hook(step: int, model: torch.nn.Module) -> dict[str, float]:
        with torch.inference_mode():
            recon = torch.cat([model.reconstruct(part) for part in images.split(64)])  # uint8 [N, 3, H, W]
        return {"psnr": round(float(psnr_per_image(images, recon.cpu()).mean()), 6)}

    return hook


def _rows(tokenizer: str, values: list[dict[str, Any]], ar_model: str | None = None) -> list[Row]:
    return [Row(tokenizer=tokenizer, ar_model=ar_model, **v) for v in values]


class Pipeline(RunContext):
    """Runs every stage of one tokenizer of the catalog (:meth:`tokenizer`) within a run's context."""

    # ------------------------------------------------------------------ tokenizer stages
    def train_tokenizer(self, run: TokenizerRunConfig) -> tuple[Path, dict[str, Any]]:
        """Train (or load) the tokenizer; return its save_pretrained folder and the stage result."""
        if self.data.stream and not run.official:
            raise ValueError(f"tokenizer {run.name!r}: data.stream=true evaluates released weights only; give it "
                             "official=FAMILY and checkpoint=FILE")
        settings = dataclasses.asdict(run)
        if not run.eval_every:  # evaluating along training leaves the weights unchanged: off, it is not an input
            del settings["eval_every"]
        inputs = {"run": settings, "train": self.data.fingerprints.get("train"), "seed": self.cfg.seed,
                  "flip": self.cfg.data.flip, "device": self.cfg.device}

        def compute(folder: Path) -> dict[str, Any]:
            torch.manual_seed(self.cfg.seed)
            if run.official:
                model = load_official(run.official, resolve_file(run.checkpoint), **resolved_overrides(run.overrides))
                if is_main():
                    model.save_pretrained(folder / "tokenizer")
                return {"tokenizer_dir": "tokenizer", "history": [], "perceptual": "not trained here"}
            model = create_tokenizer(run.name, **run.overrides)
            train = self._training_images(model)
            tcfg = config_from(TokenizerTrainConfig, run, seed=self.cfg.seed, device=self.cfg.device,
                               flip=self.cfg.data.flip, checkpoint_every=max(run.steps // 4, 50),
                               progress=self.cfg.progress)
            hook = _psnr_hook(self.eval_images(model)[:TRAIN_EVAL_IMAGES]) if run.eval_every else None
            result = TokenizerTrainer(model, train, tcfg, folder, eval_hook=hook).fit()
            return {"tokenizer_dir": "tokenizer", "history": result.history[-1:], "perceptual": result.perceptual,
                    "curve": [[e["step"], e["psnr"]] for e in result.evals]}

        result = self.runner.run("train_tokenizer", inputs, compute, run.name, collective=True)
        return self.runner.path("train_tokenizer", inputs) / result["tokenizer_dir"], result

    def _training_images(self, model: Tokenizer) -> torch.utils.data.Dataset:
        """Training images at the model's size; with a frozen encoder, paired with its cached features."""
        size = model.spec.image_size
        train = at_size(self.data.train, size)
        encoder = model.frozen_encoder
        if encoder is None:
            return train
        flip = self.cfg.data.flip
        cache = build_feature_cache(encoder, train, f"{self.data.fingerprints['train']}@{size}", flip=flip,
                                    root=Path(self.cfg.work_dir) / "features", progress=self.cfg.progress)
        return CachedFeatureDataset(train, cache, flip=flip, seed=self.cfg.seed)

    def tokenizer(self, alias: str) -> TokenizerResult:
        """Every stage of one tokenizer of the catalog."""
        run = self.cfg.catalog[alias]
        tok_dir, trained = self.train_tokenizer(run)
        tok = from_pretrained(tok_dir).to(self.device).eval()
        spec = tok.spec.to_dict()
        name = spec["name"]
        key = {"tokenizer": tok_dir.parent.name}  # the training stage's content key
        n_train_eval = min(TRAIN_EVAL_IMAGES, self.cfg.data.eval_n)
        rows = [Row(name, "train_psnr", psnr, n=n_train_eval, setting={"train_step": step})
                for step, psnr in trained.get("curve", [])]
        artifacts: dict[str, Any] = {"tokenizer_dir": str(tok_dir)}
        if self.cfg.suite.recon:
            recon = self._eval_recon_stream if self.data.stream else self._eval_recon
            lpips = {"lpips": lpips_unavailable_reason() is None}  # weights added later: LPIPS is computed then
            result, folder = self.stage("eval_recon", {**key, **lpips}, lambda f: recon(tok, f), name,
                                         collective=self.data.stream)  # streamed: every rank takes its shards
            rows += _rows(name, result["rows"])
            self.fid.update(result.get("fid_info", {}))  # from the stage result: cached runs record it too
            artifacts.update({k: str(folder / v) for k, v in result["files"].items()})
        if self.cfg.suite.probe:
            result, _ = self.stage("probe", key, lambda f: self._probe(tok), name)
            rows += _rows(name, result["rows"])
        if self.cfg.suite.throughput:
            result, _ = self.stage("throughput", {**key, "device": self.cfg.device},
                                    lambda f: self._throughput(tok), name)
            rows += _rows(name, result["rows"])
        if self.cfg.suite.generation and tok.spec.is_discrete:
            gen_rows, gen_artifacts = run_generation(self, tok, key, name, alias=alias)
            rows += gen_rows
            artifacts.update(gen_artifacts)
        return TokenizerResult(spec, rows, artifacts)

    # ------------------------------------------------------------------ stage bodies
    def _eval_recon(self, tok: Tokenizer, folder: Path) -> dict[str, Any]:
        images = self.eval_images(tok)
        res = evaluate_reconstruction(tok, images, batch_size=64, out_dir=folder, fid=self.cfg.suite.fid)
        extra = tok.extra_metrics(to_model_range(images[:256]).to(self.device))
        rows = stage_rows({**res["results"], **{k: MetricResult(v, min(len(images), 256)) for k, v in extra.items()}})
        np.savez(folder / "grid.npz", arr_0=images[:GRID_SAMPLES].permute(0, 2, 3, 1).numpy())
        np.savez(folder / "grid_recon.npz", arr_0=tok.reconstruct(images[:GRID_SAMPLES]).permute(0, 2, 3, 1).numpy())
        return {"rows": rows, "files": {"real_npz": "grid.npz", "recon_npz": "grid_recon.npz"},
                "fid_info": res.get("fid_info", {})}

    def _eval_recon_stream(self, tok: Tokenizer, folder: Path) -> dict[str, Any]:
        """Reconstruction metrics over the first ``data.eval_n`` images, streamed from disk at the tokenizer's size
        (ADM centre crop), reconstructions written to ``recon.npz``."""
        size = tok.spec.image_size
        dataset = self.data.eval if size == self.cfg.data.image_size else \
            open_images(data_root() / self.cfg.data.name / "val", size=size)
        res = evaluate_reconstruction_stream(tok, dataset, num=self.cfg.data.eval_n, batch_size=32,
                                             device=self.device, out_dir=folder, fid=self.cfg.suite.fid)
        return {"rows": stage_rows(res["results"]), "files": {"recon_npz": "recon.npz"},
                "fid_info": res.get("fid_info", {})}

    def _probe(self, tok: Tokenizer) -> dict[str, Any]:
        probe_train = at_size(self.data.probe_train, tok.spec.image_size)
        train = (probe_train.tensors()[0], torch.from_numpy(probe_train.labels))
        test = (self.eval_images(tok), torch.from_numpy(self.data.eval.labels))
        rows = []
        for kind in ["pre_quant", "codes"] if tok.spec.is_discrete else ["pre_quant"]:  # features cached once
            result = probe(tok, train, test, features=kind, epochs=self.cfg.suite.probe_epochs, seed=self.cfg.seed)
            rows += stage_rows({"probe_top1": MetricResult(result["value"], result["n_test"])}, {"features": kind})
        return {"rows": rows}

    def _throughput(self, tok: Tokenizer) -> dict[str, Any]:
        x = to_model_range(self.eval_images(tok)[:32]).to(self.device)
        with torch.inference_mode():
            latents = tok.encode(x).latents
            enc = measure(lambda: tok.encode(x), batch_items=len(x), device=self.device)
            dec = measure(lambda: tok.decode(latents), batch_items=len(x), device=self.device)
        return {"rows": stage_rows({"encode_img_per_s": MetricResult(enc.items_per_s),
                                    "decode_img_per_s": MetricResult(dec.items_per_s)},
                                   {"batch_size": len(x), "device": self.cfg.device})}


# --------------------------------------------------------------------------------------------- summaries
def convergence_rows(rows: list[Row]) -> list[Row]:
    """AR steps each GPT (tokenizer, AR model, seed) needs to reach a common gFID target: the worst best cfg=1 gFID
    of the run's curves, so that every curve reaches it."""
    curves: dict[tuple[str, str | None, int], list[tuple[int, float]]] = {}
    counts: dict[tuple[str, str | None, int], int | None] = {}
    for r in rows:
        if r.metric == "gfid" and "ar_step" in r.setting and r.value is not None:
            key = (r.tokenizer, r.ar_model, int(r.setting.get("ar_seed", 0)))
            curves.setdefault(key, []).append((int(r.setting["ar_step"]), r.value))
            counts[key] = r.n
    if len({(tok, ar) for tok, ar, _ in curves}) < 2:
        return []
    target = max(min(v for _, v in points) for points in curves.values())
    out = []
    for (tok, ar, seed), points in sorted(curves.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])):
        first = next((s for s, v in sorted(points) if v <= target), None)
        out.append(Row(tok, "steps_to_target", first, n=counts[(tok, ar, seed)], ar_model=ar,
                       setting={"target_gfid": round(target, 4), "ar_seed": seed},
                       reason=None if first is not None else "target not reached"))
    return out


def notes(cfg: BenchConfig, specs: dict[str, dict[str, Any]], rows: list[Row]) -> dict[str, str]:
    """Protocol caveats of the run, by key; each table carries the keys it lists (``tables.TableSpec.notes``)."""
    out: dict[str, str] = {}
    if cfg.data.name == "cifar10":
        out["data"] = ("CIFAR-10 from a JPEG (quality 75) copy decoded losslessly: pixels differ from the official "
                       "pickles, so FIDs are close to, not equal to, values on the originals.")
    if any((s.get("encoder") or "").startswith("inception") for s in specs.values()):
        out["inception"] = ("VFMTok here uses the FID Inception-v3 as its frozen encoder, the same network that "
                            "computes rFID/gFID: its FIDs may be optimistic.")
        out["probe"] = ("VFMTok's frozen Inception-v3 encoder was trained with ImageNet labels, which favours its "
                        "linear-probe accuracy over tokenizers trained from scratch.")
    if any(r.metric == "steps_to_target" for r in rows):
        out["convergence"] = ("steps to target: first AR evaluation step whose cfg=1 gFID reaches the common target, "
                              "the worst best gFID over every GPT curve of the run; one column per GPT seed.")
    return out
