"""Reconstruction evaluation of a tokenizer: PSNR, SSIM, rFID, codebook statistics; lossless outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vfmtok.interface import Tokenizer
from vfmtok.metrics.codebook import CodebookMeter
from vfmtok.metrics.recon import ReconstructionMeter
from vfmtok.metrics.reference import extractor_identity, rfid, save_npz


@torch.inference_mode()
def evaluate_reconstruction(tokenizer: Tokenizer, images: torch.Tensor, *, batch_size: int = 64,
                            out_dir: str | Path | None = None, fid: bool = True) -> dict[str, Any]:
    """Encode and decode uint8 ``images`` [N, 3, H, W]; return the numbers (and write ``recon.npz``).

    Discrete tokenizers decode from their indices (``detokenize(tokenize(x))``, the path AR samples take);
    continuous ones from their latents. rFID is None with ``rfid_reason`` when it cannot be computed.
    """
    tokenizer.eval()
    spec = tokenizer.spec
    recon_meter = ReconstructionMeter()
    codes = CodebookMeter(spec.codebook_size) if spec.is_discrete else None
    recons = []
    for batch in images.split(batch_size):
        if codes is not None:
            tokens = tokenizer.tokenize(batch)
            codes.update(tokens)
            recon = tokenizer.detokenize(tokens).cpu()
        else:
            recon = tokenizer.reconstruct(batch).cpu()
        recon_meter.update(batch, recon)
        recons.append(recon)
    recon_all = torch.cat(recons)
    out: dict[str, Any] = {**recon_meter.compute()}
    if codes is not None:
        out.update({k: v for k, v in codes.compute().items() if k != "tokens"})
    if fid:
        try:
            out["rfid"] = rfid(recon_all, images, batch_size=batch_size)["value"]
            out["fid_info"] = extractor_identity()
        except FileNotFoundError as e:  # weights missing: say why, never guess a number
            out["rfid"], out["rfid_reason"] = None, str(e)
    else:
        out["rfid"], out["rfid_reason"] = None, "FID disabled in this run"
    if out_dir is not None:
        save_npz(Path(out_dir) / "recon.npz", recon_all)
    return out
