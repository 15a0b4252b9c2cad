"""LPIPS (VGG, v0.1) per-image distance on uint8 images; the network comes from :mod:`vfmtok.lpips_vgg`."""

from __future__ import annotations

import torch
from torch import nn

from vfmtok.assets import MissingAssetError
from vfmtok.lpips_vgg import linear_weights_path, load_lpips, vgg16_weights_path
from vfmtok.metrics.inception import exact_math

_networks: dict[tuple[str, str, str], nn.Module] = {}


def default_lpips(device: str | torch.device = "cpu") -> nn.Module:
    """:func:`load_lpips` from the standard places, memoised per process and device."""
    key = (str(vgg16_weights_path()), str(linear_weights_path()), str(torch.device(device)))
    if key not in _networks:
        _networks[key] = load_lpips().to(device)
    return _networks[key]


def lpips_or_reason(net: nn.Module | None, device: str | torch.device) -> tuple[nn.Module | None, str | None]:
    """``(net, None)`` for a given network, else the default one, else ``(None, reason)``."""
    if net is not None:
        return net, None
    try:
        return default_lpips(device), None
    except MissingAssetError as e:
        return None, f"LPIPS unavailable: {e}"


@torch.inference_mode()
def lpips_per_image(net: nn.Module, real: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """float64 [B] LPIPS distance of uint8 [B, 3, H, W] pairs (mapped to [-1, 1], on the network's device)."""
    if real.dtype != torch.uint8 or recon.dtype != torch.uint8 or real.shape != recon.shape or real.dim() != 4:
        raise ValueError(f"LPIPS takes two uint8 batches [B, 3, H, W] of one shape, got {real.dtype} "
                         f"{tuple(real.shape)} and {recon.dtype} {tuple(recon.shape)}")
    device = next(net.parameters()).device
    x, y = (t.to(device).float() / 127.5 - 1.0 for t in (real, recon))
    with exact_math():
        return net(x, y).flatten().double().cpu()
