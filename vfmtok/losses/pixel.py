"""Pixel reconstruction losses on [-1, 1] images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PIXEL_LOSSES = ("l1", "l2", "l2+mse")


def pixel_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Mean reconstruction loss: ``l1``, ``l2`` (MSE), or ``l2+mse`` (VFMTok's rec + MSE, i.e. 2 x MSE)."""
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "l2":
        return F.mse_loss(recon, target)
    if kind == "l2+mse":
        return 2.0 * F.mse_loss(recon, target)
    raise ValueError(f"pixel loss must be one of {PIXEL_LOSSES}, got {kind!r}")
