"""The stages of a benchmark run, each a small function over the public library API.

``Plan.tokenizer(alias)`` runs every stage for one tokenizer through the stage cache and returns its
result rows, spec and artifacts. Stage inputs name everything a result depends on (configuration,
upstream stage keys, data fingerprints), so a cached result is reused exactly when it is still valid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.config import BenchConfig, TokenizerRunConfig
from benchmarks.records import Row
from benchmarks.stages import StageRunner
from vfmtok import create_tokenizer, from_pretrained, load_official
from vfmtok.data import ArrayDataset, build_dataset, cifar10
from vfmtok.data.feature_cache import CachedFeatureDataset, build_feature_cache
from vfmtok.distributed import is_main, local_device
from vfmtok.encoders.base import FrozenEncoder
from vfmtok.fileio import sha256_json
from vfmtok.images import resize_uint8, to_model_range
from vfmtok.interface import Tokenizer
from vfmtok.train import TokenizerTrainConfig, TokenizerTrainer

GRID_SAMPLES = 16  # images kept per tokenizer for the figures


# --------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """The image sets of a run (uint8 arrays) and their content fingerprints.

    With ``data.stream`` (ImageNet scale) ``eval`` is a lazily decoded dataset at ``data.image_size`` and there is
    no training data (``train`` / ``probe_train`` None): released weights are evaluated, nothing is trained.
    """

    name: str
    train: ArrayDataset | None
    eval: Any  # ArrayDataset, or a lazy dataset of (uint8 [3, S, S], label) when streaming
    probe_train: ArrayDataset | None
    fingerprints: dict[str, str] = field(default_factory=dict)
    stream: bool = False

    def describe(self) -> dict[str, Any]:
        """Data section of the record."""
        if self.stream:
            return {"name": self.name, "fingerprints": self.fingerprints, "stream": True,
                    "sizes": {"eval": len(self.eval)}, "sources": {"eval": str(getattr(self.eval, "source", ""))}}
        return {"name": self.name, "fingerprints": self.fingerprints,
                "sizes": {"train": len(self.train), "eval": len(self.eval), "probe_train": len(self.probe_train)},
                "sources": {"train": self.train.source, "eval": self.eval.source}}


def prepare_data(cfg: BenchConfig) -> Data:
    """Training subset (seeded), evaluation subset (first N of the held-out split in official order)."""
    d = cfg.data
    if d.stream:
        return _stream_data(cfg)
    if d.name == "cifar10":
        train_all, test = cifar10("train"), cifar10("test", order="official")
    else:  # an ImageFolder dataset under VFMTOK_DATA/<name>/{train,val}
        from vfmtok.assets import data_root

        train_all = build_dataset("folder", path=data_root() / d.name / "train", size=d.image_size)
        test = build_dataset("folder", path=data_root() / d.name / "val", size=d.image_size)
    train = train_all.random_subset(d.train_n, seed=cfg.seed)
    probe = train if d.probe_train_n == d.train_n else train_all.random_subset(d.probe_train_n, seed=cfg.seed + 1)
    data = Data(d.name, train, test.head(d.eval_n), probe)
    data.fingerprints = {"train": train.fingerprint(), "eval": data.eval.fingerprint(),
                         "probe_train": probe.fingerprint()}
    return data


def _stream_data(cfg: BenchConfig) -> Data:
    """The first ``data.eval_n`` images of ``VFMTOK_DATA/<name>/val``, read lazily (nothing decoded up front)."""
    from vfmtok.assets import data_root
    from vfmtok.data.stream import open_images

    d = cfg.data
    val = open_images(data_root() / d.name / "val", size=d.image_size)
    if len(val) < d.eval_n:
        raise ValueError(f"data.eval_n={d.eval_n} but {data_root() / d.name / 'val'} holds {len(val)} images")
    fingerprint = sha256_json({"eval": _identity(val), "n": d.eval_n, "size": d.image_size})
    return Data(d.name, None, val, None, {"eval": fingerprint}, stream=True)


def _identity(ds: Any) -> Any:
    """What identifies a lazily read dataset (its files), for stage keys."""
    for attr in ("fingerprint", "identity"):
        value = getattr(ds, attr, None)
        if value is not None:
            return value() if callable(value) else value
    return {"source": str(getattr(ds, "source", type(ds).__name__)), "n": len(ds)}


def _at_size(ds: ArrayDataset, size: int) -> ArrayDataset:
    """``ds`` at ``size`` x ``size`` (ADM centre-crop resize policy) when it differs; a lazily read subset (a
    folder above the array-cache limit, :mod:`vfmtok.data.stream`) is decoded into memory here."""
    if hasattr(ds, "to_arrays") and not isinstance(ds, ArrayDataset):
        ds = ds.to_arrays()
    if ds.image_size == (size, size):
        return ds
    images = resize_uint8(torch.from_numpy(np.ascontiguousarray(ds.images)), size)
    return ArrayDataset(images, ds.labels, ds.classes, f"{ds.source}@{size}px")


# --------------------------------------------------------------------------------------------- results
@dataclass
class TokenizerResult:
    """Everything one tokenizer contributes to the record."""

    spec: dict[str, Any]
    rows: list[Row]
    artifacts: dict[str, Any]


def _rows(tokenizer: str, values: list[dict[str, Any]], ar_model: str | None = None) -> list[Row]:
    return [Row(tokenizer=tokenizer, ar_model=ar_model, **v) for v in values]


class Plan:
    """Runs the stages of one benchmark configuration."""

    def __init__(self, cfg: BenchConfig, runner: StageRunner, data: Data) -> None:
        self.cfg, self.runner, self.data = cfg, runner, data
        self.device = torch.device(local_device(cfg.device))  # this rank's GPU under torchrun
        self._fid: dict[str, Any] = {}

    def fid_info(self) -> dict[str, Any]:
        """FID backend facts seen during the run (for the record)."""
        return dict(self._fid)

    # ------------------------------------------------------------------ tokenizer stages
    def train_tokenizer(self, run: TokenizerRunConfig) -> tuple[Path, dict[str, Any]]:
        """Train (or load) the tokenizer; return its save_pretrained folder and the stage result."""
        if self.data.stream and not run.official:
            raise ValueError(f"tokenizer {run.name!r}: data.stream=true evaluates released weights only; give it "
                             "official=FAMILY and checkpoint=FILE")
        inputs = {"run": dataclasses.asdict(run), "train": self.data.fingerprints.get("train"), "seed": self.cfg.seed,
                  "flip": self.cfg.data.flip, "device": self.cfg.device}

        def compute(folder: Path) -> dict[str, Any]:
            torch.manual_seed(self.cfg.seed)
            if run.official:
                from benchmarks.weights import resolve_file, resolved_overrides

                model = load_official(run.official, resolve_file(run.checkpoint), **resolved_overrides(run.overrides))
                if is_main():
                    model.save_pretrained(folder / "tokenizer")
                return {"tokenizer_dir": "tokenizer", "history": [], "perceptual": "not trained here"}
            model = create_tokenizer(run.name, **run.overrides)
            train = self._training_images(model)
            tcfg = TokenizerTrainConfig(
                steps=run.steps, batch_size=run.batch_size, lr=run.lr, warmup_steps=run.warmup_steps,
                disc_start=run.disc_start,
                disc_weight=run.disc_weight, pixel_loss=run.pixel_loss, seed=self.cfg.seed, device=self.cfg.device,
                flip=self.cfg.data.flip, checkpoint_every=max(run.steps // 4, 50), progress=self.cfg.progress)
            result = TokenizerTrainer(model, train, tcfg, folder).fit()
            return {"tokenizer_dir": "tokenizer", "history": result.history[-1:], "perceptual": result.perceptual}

        result = self.runner.run("train_tokenizer", inputs, compute, run.name, collective=True)
        return self.runner.path("train_tokenizer", inputs) / result["tokenizer_dir"], result

    def _training_images(self, model: Tokenizer) -> torch.utils.data.Dataset:
        """Training images at the model's size; with a frozen encoder, paired with its cached features."""
        size = model.spec.image_size
        train = _at_size(self.data.train, size)
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, FrozenEncoder):
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
        rows: list[Row] = []
        artifacts: dict[str, Any] = {"tokenizer_dir": str(tok_dir)}
        if trained.get("perceptual", "on") != "on":
            rows.append(Row(name, "lpips", None, reason=f"LPIPS unavailable: {trained['perceptual']}"))
        if self.cfg.suite.recon:
            recon = self._eval_recon_stream if self.data.stream else self._eval_recon
            result, folder = self._stage("eval_recon", key, lambda f: recon(tok, f), name,
                                         collective=self.data.stream)  # streamed: every rank takes its shards
            rows += _rows(name, result["rows"])
            self._fid.update(result.get("fid_info", {}))  # from the stage result: cached runs record it too
            artifacts.update({k: str(folder / v) for k, v in result["files"].items()})
        if self.cfg.suite.probe:
            result, _ = self._stage("probe", key, lambda f: self._probe(tok), name)
            rows += _rows(name, result["rows"])
        if self.cfg.suite.throughput:
            result, _ = self._stage("throughput", {**key, "device": self.cfg.device},
                                    lambda f: self._throughput(tok), name)
            rows += _rows(name, result["rows"])
        if self.cfg.suite.generation and tok.spec.is_discrete:
            from benchmarks.generation import run_generation

            gen_rows, gen_artifacts = run_generation(self, tok, key, name, alias=alias)
            rows += gen_rows
            artifacts.update(gen_artifacts)
        return TokenizerResult(spec, rows, artifacts)

    def _stage(self, stage: str, key: dict[str, Any], fn: Any, label: str,
               collective: bool = False) -> tuple[dict[str, Any], Path]:
        inputs = {**key, "eval": self.data.fingerprints["eval"], "suite": dataclasses.asdict(self.cfg.suite)}
        return self.runner.run(stage, inputs, fn, label, collective=collective), self.runner.path(stage, inputs)

    def eval_images(self, tok: Tokenizer) -> torch.Tensor:
        """Evaluation images uint8 [N, 3, S, S] at the tokenizer's resolution."""
        if self.data.stream:
            raise ValueError("data.stream=true reads the evaluation images lazily: the probe and throughput stages "
                             "need them in memory (set suite.probe=false suite.throughput=false)")
        return _at_size(self.data.eval, tok.spec.image_size).tensors()[0]

    # ------------------------------------------------------------------ stage bodies
    def _eval_recon(self, tok: Tokenizer, folder: Path) -> dict[str, Any]:
        from vfmtok.metrics.evaluate import evaluate_reconstruction

        images = self.eval_images(tok)
        res = evaluate_reconstruction(tok, images, batch_size=64, out_dir=folder, fid=self.cfg.suite.fid)
        n = res["n"]
        rows = [{"metric": "psnr", "value": res["psnr"], "n": n}, {"metric": "ssim", "value": res["ssim"], "n": n}]
        if res.get("rfid") is not None:
            rows.append({"metric": "rfid", "value": res["rfid"], "n": n})
        else:
            rows.append({"metric": "rfid", "value": None, "n": n, "reason": res.get("rfid_reason", "FID disabled")})
        if tok.spec.is_discrete:
            rows += [{"metric": "codebook_usage", "value": 100.0 * res["codebook_usage"], "n": n},
                     {"metric": "codebook_perplexity", "value": res["codebook_perplexity"], "n": n},
                     {"metric": "codebook_entropy_bits", "value": res["codebook_entropy_bits"], "n": n}]
        if hasattr(tok, "semantic_eval_loss"):
            x = to_model_range(images[:256]).to(self.device)
            rows.append({"metric": "semantic_loss", "value": float(tok.semantic_eval_loss(x)), "n": len(x)})
        np.savez(folder / "grid.npz", arr_0=images[:GRID_SAMPLES].permute(0, 2, 3, 1).numpy())
        np.savez(folder / "grid_recon.npz", arr_0=tok.reconstruct(images[:GRID_SAMPLES]).permute(0, 2, 3, 1).numpy())
        return {"rows": rows, "files": {"real_npz": "grid.npz", "recon_npz": "grid_recon.npz"},
                "fid_info": res.get("fid_info", {})}

    def _eval_recon_stream(self, tok: Tokenizer, folder: Path) -> dict[str, Any]:
        """Reconstruction metrics over the first ``data.eval_n`` images, streamed from disk at the tokenizer's size
        (ADM centre crop), reconstructions written to ``recon.npz``."""
        from vfmtok.assets import data_root
        from vfmtok.data.stream import open_images
        from vfmtok.evaluation.recon import evaluate_reconstruction_stream

        size = tok.spec.image_size
        dataset = self.data.eval if size == self.cfg.data.image_size else \
            open_images(data_root() / self.cfg.data.name / "val", size=size)
        res = evaluate_reconstruction_stream(tok, dataset, num=self.cfg.data.eval_n, batch_size=32,
                                             device=self.device, out_dir=folder, fid=self.cfg.suite.fid)
        n = res["n"]
        rows = [{"metric": "psnr", "value": res["psnr"], "n": n}, {"metric": "ssim", "value": res["ssim"], "n": n}]
        rows.append({"metric": "rfid", "value": res.get("rfid"), "n": n, "setting": {"image_size": size},
                     **({} if res.get("rfid") is not None else {"reason": res.get("rfid_reason", "FID disabled")})})
        if tok.spec.is_discrete and res.get("codebook_usage") is not None:
            rows += [{"metric": "codebook_usage", "value": 100.0 * res["codebook_usage"], "n": n},
                     {"metric": "codebook_perplexity", "value": res["codebook_perplexity"], "n": n}]
        return {"rows": rows, "files": {"recon_npz": "recon.npz"}, "fid_info": res.get("fid_info", {})}

    def _probe(self, tok: Tokenizer) -> dict[str, Any]:
        from vfmtok.metrics.probe import extract_features, linear_probe

        train = _at_size(self.data.probe_train, tok.spec.image_size)
        train_x = extract_features(tok, train.tensors()[0], batch_size=64)
        test_x = extract_features(tok, self.eval_images(tok), batch_size=64)
        train_y, test_y = torch.from_numpy(train.labels), torch.from_numpy(self.data.eval.labels)
        kinds = ["pre_quant", "codes"] if tok.spec.is_discrete else ["pre_quant"]
        return {"rows": [{"metric": "probe_top1", "n": len(test_y), "setting": {"features": kind},
                          "value": 100.0 * linear_probe(train_x[kind], train_y, test_x[kind], test_y,
                                                        epochs=self.cfg.suite.probe_epochs, lr=1e-3,
                                                        seed=self.cfg.seed)}
                         for kind in kinds]}

    def _throughput(self, tok: Tokenizer) -> dict[str, Any]:
        from vfmtok.metrics.throughput import measure

        x = to_model_range(self.eval_images(tok)[:32]).to(self.device)
        with torch.inference_mode():
            latents = tok.encode(x).latents
            enc = measure(lambda: tok.encode(x), batch_items=len(x), device=self.device)
            dec = measure(lambda: tok.decode(latents), batch_items=len(x), device=self.device)
        setting = {"batch_size": len(x), "device": self.cfg.device}
        return {"rows": [{"metric": "encode_img_per_s", "value": enc.items_per_s, "setting": setting},
                         {"metric": "decode_img_per_s", "value": dec.items_per_s, "setting": setting}]}


# --------------------------------------------------------------------------------------------- summaries
def convergence_rows(rows: list[Row]) -> list[Row]:
    """AR steps each tokenizer needs to reach a common gFID target (the worst final cfg=1 gFID of the run)."""
    curves: dict[tuple[str, str | None], list[tuple[int, float]]] = {}
    counts: dict[tuple[str, str | None], int | None] = {}
    for r in rows:
        if r.metric == "gfid" and "ar_step" in r.setting and r.value is not None:
            curves.setdefault((r.tokenizer, r.ar_model), []).append((int(r.setting["ar_step"]), r.value))
            counts[(r.tokenizer, r.ar_model)] = r.n
    if len(curves) < 2:
        return []
    target = max(min(v for _, v in points) for points in curves.values())
    out = []
    for (tok, ar), points in sorted(curves.items()):
        first = next((s for s, v in sorted(points) if v <= target), None)
        out.append(Row(tok, "steps_to_target", first, n=counts[(tok, ar)], ar_model=ar,
                       setting={"target_gfid": round(target, 4)},
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
        out["convergence"] = "steps to target: first AR evaluation step whose cfg=1 gFID reaches the target."
    return out
