"""Reconstruction evaluation of a tokenizer: PSNR, SSIM, rFID, codebook statistics; lossless outputs.

Protocol (stated with every result):

* every image is encoded once and decoded from the encoder's latents -- the same numbers as
  ``tokenizer.reconstruct(x)`` for the pixels and ``tokenizer.tokenize(x)`` for the indices of discrete
  tokenizers (one encode instead of two);
* PSNR / SSIM as in :mod:`vfmtok.metrics.recon` (uint8, data range 255, per image then mean);
* rFID: reconstructions against the same real images (LlamaGen protocol) with the FID Inception
  (:mod:`vfmtok.metrics.inception`). Images of any size go to the extractor as they are: it resizes them to
  299 x 299 itself with torch-fidelity's TF1-compatible bilinear interpolation (so 32 px CIFAR-10 images are
  upsampled inside the extractor, exactly as torch-fidelity and the ADM evaluator do);
* codebook usage / perplexity / entropy from the global histogram of all indices of the evaluation set;
* reconstructions are written losslessly as an ADM batch (``recon.npz``: ``arr_0`` uint8 NHWC) when ``out_dir``
  is given, streamed to disk so memory stays bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vfmtok.assets import MissingAssetError
from vfmtok.images import to_uint8
from vfmtok.interface import Tokenizer
from vfmtok.metrics.codebook import CodebookMeter
from vfmtok.metrics.fidelity import GaussianStats, frechet_distance
from vfmtok.metrics.inception import POOL3, FeatureExtractor, fid_extractor
from vfmtok.metrics.recon import ReconstructionMeter
from vfmtok.metrics.reference import NpzWriter, fid_info, reference_from_features, reference_statistics
from vfmtok.metrics.sources import ContentHasher, ImageSource, is_replayable, iter_batches

RECON_FILE = "recon.npz"


@torch.inference_mode()
def evaluate_reconstruction(tokenizer: Tokenizer, dataset_or_loader: ImageSource, *, batch_size: int = 64,
                            out_dir: str | Path | None = None, fid: bool = True,
                            device: str | torch.device | None = None,
                            extractor: FeatureExtractor | None = None) -> dict[str, Any]:
    """Reconstruct every image of ``dataset_or_loader`` (any image source, see :mod:`vfmtok.metrics.sources`).

    Returns ``psnr``, ``ssim``, ``n`` (images), ``n_identical``, ``rfid`` (None with ``rfid_reason`` when the
    Inception weights are missing or ``fid=False``) with ``fid_info`` (backend, weights sha256, resize),
    ``codebook_usage`` / ``codebook_perplexity`` / ``codebook_entropy_nats`` / ``codebook_entropy_bits`` /
    ``tokens`` for discrete tokenizers, and ``recon_npz`` when written. ``device``: where the tokenizer and the
    Inception run (default: where the tokenizer already is; the tokenizer is moved there).
    """
    if device is not None:
        tokenizer.to(device)
    device = next(tokenizer.parameters()).device
    tokenizer.eval()
    spec = tokenizer.spec
    recon_meter = ReconstructionMeter()
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
        out["rfid"] = frechet_distance(GaussianStats.of(fake), reference.gaussian)
        out["rfid_n"] = len(fake)
        out["fid_info"] = fid_info(extractor)
    else:
        out["rfid"], out["rfid_reason"], out["fid_info"] = None, reason, {}
    return out
