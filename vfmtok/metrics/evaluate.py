"""Reconstruction evaluation of a tokenizer: PSNR, SSIM, LPIPS, rFID, KID, codebook statistics; lossless outputs.

Protocol (stated with every result):

* every image is encoded once and decoded from the encoder's latents -- the same numbers as
  ``tokenizer.reconstruct(x)`` for the pixels and ``tokenizer.tokenize(x)`` for the indices of discrete
  tokenizers (one encode instead of two);
* PSNR / SSIM as in :mod:`vfmtok.metrics.recon` (uint8, data range 255, per image then mean);
* LPIPS (VGG, :mod:`vfmtok.metrics.perceptual`) per image then mean, whenever its weights exist (else the reason);
* rFID: reconstructions against the same real images (LlamaGen protocol) with the FID Inception
  (:mod:`vfmtok.metrics.inception`). Images of any size go to the extractor as they are: it resizes them to
  299 x 299 itself with torch-fidelity's TF1-compatible bilinear interpolation (so 32 px CIFAR-10 images are
  upsampled inside the extractor, exactly as torch-fidelity and the ADM evaluator do);
* KID from the same pool3 features (:func:`vfmtok.metrics.reference.distance_results`);
* codebook usage / perplexity / entropy from the global histogram of all indices of the evaluation set;
* reconstructions are written losslessly as an ADM batch (``recon.npz``: ``arr_0`` uint8 NHWC) when ``out_dir``
  is given, streamed to disk so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfmtok.assets import MissingAssetError
from vfmtok.images import to_uint8
from vfmtok.interface import Tokenizer
from vfmtok.metrics.codebook import CodebookMeter
from vfmtok.metrics.inception import POOL3, FeatureExtractor, fid_extractor
from vfmtok.metrics.perceptual import lpips_or_reason
from vfmtok.metrics.recon import ReconstructionMeter
from vfmtok.metrics.reference import (
    NpzWriter,
    distance_results,
    fid_info,
    reference_from_features,
    reference_statistics,
    unavailable_distances,
)
from vfmtok.metrics.result import MetricResult, Results
from vfmtok.metrics.sources import ContentHasher, ImageSource, is_replayable, iter_batches

RECON_FILE = "recon.npz"
CODEBOOK_METRICS = ("codebook_usage", "codebook_perplexity", "codebook_entropy_bits")


def reconstruction_results(report: Mapping[str, Any], distances: Results, lpips_reason: str | None) -> Results:
    """Typed results of a reconstruction report: PSNR, SSIM, LPIPS (else ``lpips_reason``), the feature
    ``distances`` (rFID, KID) and, for discrete tokenizers, the codebook statistics."""
    n = report["n"]
    lpips = MetricResult(report["lpips"], n) if "lpips" in report else MetricResult.unavailable(lpips_reason)
    return {"psnr": MetricResult(report["psnr"], n), "ssim": MetricResult(report["ssim"], n), "lpips": lpips,
            **distances, **{key: MetricResult(report[key], n) for key in CODEBOOK_METRICS if key in report}}


@torch.inference_mode()
def evaluate_reconstruction(tokenizer: Tokenizer, dataset_or_loader: ImageSource, *, batch_size: int = 64,
                            out_dir: str | Path | None = None, fid: bool = True,
                            device: str | torch.device | None = None,
                            extractor: FeatureExtractor | None = None,
                            lpips_net: nn.Module | None = None) -> dict[str, Any]:
    """Reconstruct every image of ``dataset_or_loader`` (any image source, see :mod:`vfmtok.metrics.sources`).

    Returns ``psnr``, ``ssim``, ``n`` (images), ``n_identical``, ``rfid`` (None with ``rfid_reason`` when the
    Inception weights are missing or ``fid=False``) with ``fid_info`` (backend, weights sha256, resize),
    ``codebook_usage`` / ``codebook_perplexity`` / ``codebook_entropy_nats`` / ``codebook_entropy_bits`` /
    ``tokens`` for discrete tokenizers, ``recon_npz`` when written, ``lpips`` when measured, and ``results``: the
    typed metrics (:func:`reconstruction_results`). ``device``: where the tokenizer and the Inception run (default:
    where the tokenizer already is; the tokenizer is moved there). ``lpips_net``: the LPIPS network (default: the
    standard weights when they exist).
    """
    if device is not None:
        tokenizer.to(device)
    device = next(tokenizer.parameters()).device
    tokenizer.eval()
    spec = tokenizer.spec
    lpips_net, lpips_reason = lpips_or_reason(lpips_net, device)
    recon_meter = ReconstructionMeter(lpips_net)
    codes = CodebookMeter(spec.codebook_size) if spec.is_discrete else None
    out: dict[str, Any] = {"protocol": "encode once, decode the latents; rFID vs the same real images"}

    reference, reason = None, None
    if fid:
        try:
            extractor = extractor or fid_extractor(device=device)
            if is_replayable(dataset_or_loader):  # cached statistics of the real images, else computed in-loop
                reference = reference_statistics(dataset_or_loader, batch_size=batch_size, extractor=extractor)
        except MissingAssetError as e:  # weights missing: say why, never guess a number
            extractor, reason = None, f"rFID unavailable: {e}"
    else:
        extractor, reason = None, "FID disabled in this run"
    real_hasher, real_feats, fake_feats = ContentHasher(), [], []

    writer = NpzWriter(Path(out_dir) / RECON_FILE) if out_dir is not None else None
    try:
        for batch in iter_batches(dataset_or_loader, batch_size):
            enc = tokenizer.encode(tokenizer.prepare(batch, require_size=True))
            recon = to_uint8(tokenizer.decode(enc.latents).image).cpu()
            if codes is not None:
                codes.update(enc.indices)
            recon_meter.update(batch, recon)
            if writer is not None:
                writer.add(recon)
            if extractor is not None:
                fake_feats.append(extractor(recon)[POOL3])
                if reference is None:
                    real_hasher.update(batch)
                    real_feats.append(extractor(batch)[POOL3])
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        out["recon_npz"] = str(writer.close())

    out.update(recon_meter.compute())
    if codes is not None:
        out.update(codes.compute())
    if extractor is not None and out["n"] < 2:
        extractor, reason = None, f"rFID needs at least 2 images, got {out['n']}"
    if extractor is not None:
        if reference is None:
            reference = reference_from_features(torch.cat(real_feats), real_hasher.hexdigest(), extractor)
        fake = torch.cat(fake_feats)
        distances = distance_results("rfid", fake, reference)
        out["rfid"] = distances["rfid"].value
        out["rfid_n"] = len(fake)
        out["fid_info"] = fid_info(extractor)
    else:
        distances = unavailable_distances("rfid", reason, out["n"])
        out["rfid"], out["rfid_reason"], out["fid_info"] = None, reason, {}
    out["results"] = reconstruction_results(out, distances, lpips_reason)
    return out
