"""Reconstruction evaluation at scale: streamed data, ordered resumable shards, ``recon.npz`` + ``metrics.json``.

The counterpart of LlamaGen's ``reconstruction_vq_ddp.py``, with the protocol of
:func:`vfmtok.metrics.evaluate.evaluate_reconstruction` (encode once, decode the latents; PSNR / SSIM with the
conventions of :mod:`vfmtok.metrics.recon`; LPIPS whenever its weights exist; rFID of the reconstructions against
the same real images with the FID Inception; codebook statistics from the global code histogram). Differences are in
the plumbing only:

* images come from a lazily decoded dataset through :func:`vfmtok.data.sources.image_loader` (worker processes);
* work is cut into shards (:mod:`vfmtok.evaluation.shards`): every shard stores its reconstructions, labels,
  per-image PSNR / SSIM (and LPIPS), code histogram and the pool3 features of its real and reconstructed images; a
  killed run continues where it stopped; one process and N give the same files;
* rFID statistics are accumulated shard by shard in float64 (:class:`~vfmtok.evaluation.shards.RunningMoments`),
  so no process holds all features; FID agrees with :mod:`vfmtok.metrics` on the same images (tests). KID, which
  needs the features themselves, is therefore not reported here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vfmtok.assets import MissingAssetError
from vfmtok.data.sources import image_loader
from vfmtok.distributed import barrier, is_main
from vfmtok.evaluation.shards import RunningMoments, ShardPlan, iter_shards, pending_shards, run_shards
from vfmtok.fileio import atomic_write_json
from vfmtok.images import to_uint8
from vfmtok.interface import Tokenizer
from vfmtok.metrics.codebook import CodebookMeter
from vfmtok.metrics.evaluate import reconstruction_results
from vfmtok.metrics.fidelity import GaussianStats, frechet_distance
from vfmtok.metrics.inception import POOL3, FeatureExtractor, fid_extractor
from vfmtok.metrics.perceptual import lpips_or_reason, lpips_per_image
from vfmtok.metrics.recon import ReconstructionMeter, psnr_per_image, ssim_per_image
from vfmtok.metrics.reference import NpzWriter, fid_info
from vfmtok.metrics.result import MetricResult, results_from_json, results_to_json
from vfmtok.version import code_version

RECON_FILE = "recon.npz"
METRICS_FILE = "metrics.json"
PROTOCOL = ("encode once, decode the latents; PSNR/SSIM (and LPIPS-VGG when its weights exist) per image on uint8 "
            "(data range 255, Gaussian SSIM), then the mean; rFID: reconstructions vs the same real images, FID "
            "Inception pool3; codebook statistics from the global histogram of all indices")


def data_record(dataset: Dataset, n: int) -> dict[str, Any]:
    """What a record keeps about the evaluated images: source, fingerprint, size, count, skipped files."""
    out: dict[str, Any] = {"source": getattr(dataset, "source", type(dataset).__name__), "n": n,
                           "n_available": len(dataset)}
    if hasattr(dataset, "fingerprint"):
        out["fingerprint"] = dataset.fingerprint()
    out["skipped"] = list(getattr(dataset, "skipped", []))
    return out


def _check_inputs(tokenizer: Tokenizer, dataset: Dataset, num: int | None) -> int:
    n = len(dataset) if num is None else int(num)
    if n <= 0:
        raise ValueError(f"--num must be positive, got {n}")
    if n > len(dataset):
        raise ValueError(f"--num {n} is larger than the data: {getattr(dataset, 'source', 'the dataset')} holds "
                         f"{len(dataset)} images")
    size = tokenizer.spec.image_size
    image, _ = dataset[0]
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or tuple(image.shape) != (3, size, size):
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{tokenizer.spec.name} takes uint8 images [3, {size}, {size}]; the data gives {got} "
                         f"(open it with size={size})")
    return n


@torch.inference_mode()
def evaluate_reconstruction_stream(tokenizer: Tokenizer, dataset: Dataset, *, num: int | None = None,
                                   batch_size: int = 32, device: str | torch.device = "cpu",
                                   out_dir: str | Path, workers: int = 0, fid: bool = True,
                                   shard_size: int | None = None, max_shards: int | None = None,
                                   extractor: FeatureExtractor | None = None, lpips_net: nn.Module | None = None,
                                   provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reconstruct the first ``num`` images of ``dataset`` (all by default); write ``recon.npz`` (ADM batch,
    ``arr_0`` uint8 NHWC, dataset order) and ``metrics.json`` under ``out_dir``; return the metrics.

    Metrics: ``psnr``, ``ssim``, ``n``, ``n_identical``, ``rfid`` (None with ``rfid_reason`` when ``fid=False`` or
    the Inception weights are missing), ``codebook_usage`` / ``codebook_perplexity`` / entropy / ``tokens`` for
    discrete tokenizers, ``lpips`` when measured (``lpips_net``, default: the standard weights when they exist) and
    ``results``, the typed metrics (:func:`vfmtok.metrics.evaluate.reconstruction_results`); with ``provenance``
    (tokenizer name and weights sha256, data source and fingerprint, settings, code version). Under ``torchrun``
    every rank computes its shards and rank 0 assembles. ``max_shards``: stop after that many new shards per rank
    (returns ``{"complete": False, ...}``); rerun to continue. The data must already be at the tokenizer's image size.
    """
    start = time.time()
    n = _check_inputs(tokenizer, dataset, num)
    tokenizer.to(device).eval()
    device = next(tokenizer.parameters()).device
    spec = tokenizer.spec
    reason = None
    if fid:
        try:
            extractor = extractor or fid_extractor(device=device)
        except MissingAssetError as e:  # weights missing: say why, never guess a number
            extractor, reason = None, f"rFID unavailable: {e}"
    else:
        extractor, reason = None, "FID disabled in this run"
    lpips_net, lpips_reason = lpips_or_reason(lpips_net, device)
    plan = ShardPlan.make(n, batch_size, shard_size)
    tok_prov = dict(getattr(tokenizer, "provenance", {"name": spec.name}))
    data = data_record(dataset, n)
    settings = {"tokenizer": tok_prov.get("name", spec.name), "weights_sha256": tok_prov.get("weights_sha256"),
                "data": {k: data.get(k) for k in ("source", "fingerprint")}, "image_size": spec.image_size,
                "fid": extractor is not None, "device_type": device.type,
                "extractor": fid_info(extractor) if extractor is not None else None,
                **({"lpips": "LPIPS-VGG v0.1"} if lpips_net is not None else {})}  # without LPIPS: as before


    # one loader (one set of worker processes) over every pending shard of this rank, consumed shard by shard;
    # shards are whole batches but the last, so the loader's batches are exactly each shard's batches
    todo = pending_shards(out_dir, plan, max_shards)
    indices = [i for s in todo for i in plan.items(s)]
    stream: list[Any] = []  # the loader's iterator, started at the first shard (after run_shards checked the plan)

    def compute(items: range) -> dict[str, np.ndarray]:
        if not stream:
            stream.append(iter(image_loader(dataset, batch_size, workers=workers, device=device, indices=indices)))
        batches = stream[0]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("images", "labels", "psnr", "ssim", "lpips", "real",
                                                              "fake")}
        codes = np.zeros(spec.codebook_size if spec.is_discrete else 0, dtype=np.int64)
        for _ in range(-(-len(items) // batch_size)):
            batch, labels = next(batches)
            batch = batch.to(device, non_blocking=True)
            enc = tokenizer.encode(tokenizer.prepare(batch, require_size=True))
            recon = to_uint8(tokenizer.decode(enc.latents).image)
            if spec.is_discrete:
                codes += np.bincount(enc.indices.flatten().cpu().numpy(), minlength=len(codes))
            parts["psnr"].append(psnr_per_image(batch, recon).cpu().numpy())
            parts["ssim"].append(ssim_per_image(batch, recon).cpu().numpy())
            if lpips_net is not None:
                parts["lpips"].append(lpips_per_image(lpips_net, batch, recon).numpy())
            if extractor is not None:
                parts["real"].append(extractor(batch)[POOL3].float().cpu().numpy())
                parts["fake"].append(extractor(recon)[POOL3].float().cpu().numpy())
            parts["images"].append(recon.cpu().numpy())
            parts["labels"].append(labels.numpy())
        out = {k: np.concatenate(v) for k, v in parts.items() if v}
        if len(out["images"]) != len(items):
            raise RuntimeError(f"shard of {len(items)} items got {len(out['images'])} images from the loader")
        out["codes"] = codes
        return out

    complete = run_shards(out_dir, plan, compute, settings=settings, max_shards=max_shards)
    if not complete:
        return {"complete": False, "n": n, "num_shards": plan.num_shards}
    out_dir = Path(out_dir)
    if is_main():
        metrics = _assemble(out_dir, plan, spec.codebook_size if spec.is_discrete else 0, extractor, reason,
                            lpips_reason, spec.image_size)
        metrics.update({"complete": True, "protocol": PROTOCOL, "tokenizer": tok_prov, "data": data,
                        "settings": {"batch_size": batch_size, "shard_size": plan.shard_size, "workers": workers,
                                     "device": str(device), "image_size": spec.image_size, "fid": fid},
                        "code": code_version(), "seconds": time.time() - start, "recon_npz": str(out_dir / RECON_FILE),
                        **(provenance or {})})
        atomic_write_json(out_dir / METRICS_FILE, metrics)
    barrier()
    import json

    out = json.loads((out_dir / METRICS_FILE).read_text())
    return {**out, "results": results_from_json(out["results"])}


def _assemble(out_dir: Path, plan: ShardPlan, codebook_size: int, extractor: FeatureExtractor | None,
              reason: str | None, lpips_reason: str | None, image_size: int) -> dict[str, Any]:
    """Stream the shards in order into ``recon.npz`` and reduce their side data to the metrics (rFID at
    ``image_size``)."""
    meter = ReconstructionMeter()
    codes = CodebookMeter(codebook_size) if codebook_size else None
    real, fake = RunningMoments(), RunningMoments()
    with NpzWriter(out_dir / RECON_FILE) as writer:
        for _, arrays in iter_shards(out_dir, plan):
            writer.add(torch.from_numpy(arrays["images"]))
            meter.psnr.append(torch.from_numpy(arrays["psnr"]))
            meter.ssim.append(torch.from_numpy(arrays["ssim"]))
            if "lpips" in arrays:
                meter.lpips.append(torch.from_numpy(arrays["lpips"]))
            if codes is not None:
                codes.counts += torch.from_numpy(arrays["codes"])
            if extractor is not None:
                real.add(arrays["real"])
                fake.add(arrays["fake"])
    out: dict[str, Any] = dict(meter.compute())
    if codes is not None:
        out.update(codes.compute())
    if extractor is not None and out["n"] < 2:
        extractor, reason = None, f"rFID needs at least 2 images, got {out['n']}"
    setting = {"image_size": image_size}
    if extractor is not None:
        ref = GaussianStats(real.mean, real.covariance(), real.n)
        out["rfid"] = frechet_distance(GaussianStats(fake.mean, fake.covariance(), fake.n), ref)
        out["rfid_n"] = fake.n
        out["fid_info"] = fid_info(extractor)
        rfid = MetricResult(out["rfid"], out["n"], setting=setting)
    else:
        out["rfid"], out["rfid_reason"], out["fid_info"] = None, reason, {}
        rfid = MetricResult.unavailable(reason, out["n"], setting)
    out["results"] = results_to_json(reconstruction_results(out, {"rfid": rfid}, lpips_reason))
    return out
