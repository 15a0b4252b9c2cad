"""Codebook utilization from token indices over an evaluation set (not a rolling training buffer)."""

from __future__ import annotations

import math

import torch


class CodebookMeter:
    """Global histogram of token indices; usage, perplexity and entropy at the end."""

    def __init__(self, codebook_size: int) -> None:
        if codebook_size <= 0:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}")
        self.counts = torch.zeros(codebook_size, dtype=torch.int64)

    def update(self, indices: torch.Tensor) -> None:
        """Add integer indices of any shape (e.g. a batch [B, L])."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"token indices must be integers, got {indices.dtype}")
        flat = indices.detach().flatten().cpu().long()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= len(self.counts)):
            raise ValueError(f"indices outside [0, {len(self.counts)}): got values in "
                             f"[{int(flat.min())}, {int(flat.max())}]")
        self.counts += torch.bincount(flat, minlength=len(self.counts))

    def compute(self) -> dict[str, float]:
        """``codebook_usage`` (fraction of codes used at least once), ``codebook_perplexity`` = exp(H) with H the
        entropy of the global code histogram, H in nats and bits, and the number of ``tokens`` counted."""
        total = int(self.counts.sum())
        if total == 0:
            raise ValueError("no indices were added")
        p = self.counts[self.counts > 0].double() / total
        entropy = float(-(p * p.log()).sum())  # nats
        return {"codebook_usage": float((self.counts > 0).double().mean()), "codebook_perplexity": math.exp(entropy),
                "codebook_entropy_nats": entropy, "codebook_entropy_bits": entropy / math.log(2), "tokens": total}
