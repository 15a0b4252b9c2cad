"""LPIPS perceptual loss, when its weights are available (see :mod:`vfmtok.lpips_vgg`).

Without the VGG16 backbone or the LPIPS linear weights the loss is off and the reason is reported once; no
substitute is ever called "LPIPS".
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from vfmtok.lpips_vgg import load_lpips, lpips_unavailable_reason

__all__ = ["PerceptualLoss", "lpips_unavailable_reason"]


class PerceptualLoss(nn.Module):
    """Mean LPIPS-VGG distance between [-1, 1] images; ``available`` is False (and the loss 0) without weights."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = lpips_unavailable_reason()
        self.net: nn.Module | None = None
        if self.reason is None:
            self.net = load_lpips()
        else:
            warnings.warn(f"perceptual loss disabled: {self.reason}", stacklevel=2)

    @property
    def available(self) -> bool:
        """Whether LPIPS is computed."""
        return self.net is not None

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            return recon.new_zeros(())
        return self.net(recon, target).mean()
