"""PSNR and SSIM on uint8 images, with one documented convention; LPIPS beside them when a network is given.

* PSNR: float64 on 0..255, ``data_range = 255``, per image, then the mean over images.
* SSIM (Wang et al. 2004): Gaussian window 11 x 11 with sigma 1.5, K1 = 0.01, K2 = 0.03, ``data_range = 255``,
  population (not sample) covariances, computed over the valid region (no padding), averaged per channel,
  then over channels, then over images. This equals ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=0)``.
* LPIPS: :func:`vfmtok.metrics.perceptual.lpips_per_image`, per image, then the mean over images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.metrics.perceptual import lpips_per_image

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype != torch.uint8 or b.dtype != torch.uint8:
        raise TypeError(f"PSNR/SSIM take uint8 images, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two uint8 batches [B, C, H, W] of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 [B] PSNR in dB (``inf`` for identical images)."""
    _check_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian_window(device: torch.device) -> torch.Tensor:
    r = SSIM_WINDOW // 2
    x = torch.arange(-r, r + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 [B] SSIM (mean over valid positions, then channels)."""
    _check_pair(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW}, got {tuple(a.shape[-2:])}")
    x, y = a.double(), b.double()
    c = x.shape[1]
    g = _gaussian_window(x.device)
    kh, kw = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable valid-region Gaussian filter, per channel
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * 255.0) ** 2, (SSIM_K2 * 255.0) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(2).mean(-1).mean(-1)  # [B, C, h*w] -> per channel -> per image


class ReconstructionMeter:
    """Streaming PSNR / SSIM (and LPIPS with ``lpips_net``) over batches of (reference, reconstruction) uint8
    images."""

    def __init__(self, lpips_net: nn.Module | None = None) -> None:
        self.lpips_net = lpips_net
        self.psnr: list[torch.Tensor] = []
        self.ssim: list[torch.Tensor] = []
        self.lpips: list[torch.Tensor] = []

    def update(self, real: torch.Tensor, recon: torch.Tensor) -> None:
        """Add one batch."""
        self.psnr.append(psnr_per_image(real, recon).cpu())
        self.ssim.append(ssim_per_image(real, recon).cpu())
        if self.lpips_net is not None:
            self.lpips.append(lpips_per_image(self.lpips_net, real, recon))

    def compute(self) -> dict[str, float]:
        """Means over every image seen: ``psnr`` (inf as soon as one image is reproduced exactly, with
        ``n_identical`` saying how many were), ``ssim``, ``n`` and ``lpips`` when measured."""
        if not self.psnr:
            raise ValueError("no images were added")
        psnr, ssim = torch.cat(self.psnr), torch.cat(self.ssim)
        out = {"psnr": float(psnr.mean()), "ssim": float(ssim.mean()), "n": len(psnr),
               "n_identical": int(torch.isinf(psnr).sum())}
        if self.lpips:
            out["lpips"] = float(torch.cat(self.lpips).mean())
        return out
