"""LPIPS perceptual loss, when its backbone weights are available.

LPIPS needs ImageNet-pretrained VGG16 weights from torchvision (``vgg16-397923af.pth`` in the torch hub
cache) besides its own linear heads (shipped in the ``lpips`` package). Without them the loss is off and
the reason is reported once; no substitute is ever called "LPIPS".
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

VGG16_FILE = "vgg16-397923af.pth"


def lpips_unavailable_reason() -> str | None:
    """None when LPIPS (VGG) can be built offline, else why not."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "the 'lpips' package is not installed"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    if not weights.is_file():
        return f"LPIPS needs torchvision's VGG16 weights at {weights} (not available offline)"
    return None


class PerceptualLoss(nn.Module):
    """Mean LPIPS-VGG distance between [-1, 1] images; ``available`` is False (and the loss 0) without weights."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = lpips_unavailable_reason()
        self.net: nn.Module | None = None
        if self.reason is None:
            import lpips

            self.net = lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)
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
