"""The LPIPS (VGG, v0.1) network, built offline from explicit weight files.

LPIPS needs two files: torchvision's ImageNet VGG16 weights (``vgg16-397923af.pth`` in the torch hub
``checkpoints`` folder) for its backbone, and its own linear heads (``weights/v0.1/vgg.pth``, shipped in the
``lpips`` package). :func:`load_lpips` builds the ``lpips`` package's network with a random backbone and loads both
files into it strictly, so it never downloads and never runs with partial weights; without the files there is no
LPIPS, only the reason (no substitute is ever called "LPIPS"). The training loss
(:mod:`vfmtok.losses.perceptual`) and the metric (:mod:`vfmtok.metrics.perceptual`) both build it here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from vfmtok.assets import MissingAssetError

VGG16_FILE = "vgg16-397923af.pth"


def vgg16_weights_path() -> Path:
    """Where torchvision keeps its ImageNet VGG16 weights (the torch hub checkpoints folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def linear_weights_path() -> Path | None:
    """The LPIPS-VGG v0.1 linear heads shipped with the ``lpips`` package; None without the package."""
    try:
        import lpips
    except ImportError:
        return None
    return Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def lpips_unavailable_reason(vgg16_weights: str | Path | None = None,
                             linear_weights: str | Path | None = None) -> str | None:
    """None when LPIPS (VGG) can be built offline from these files (default: the standard places), else why not."""
    linear = Path(linear_weights) if linear_weights is not None else linear_weights_path()
    if linear is None:
        return "the 'lpips' package is not installed"
    vgg16 = Path(vgg16_weights) if vgg16_weights is not None else vgg16_weights_path()
    if not vgg16.is_file():
        where = "in the torch hub checkpoints folder" if vgg16_weights is None else "at the given path"
        return f"LPIPS needs torchvision's VGG16 weights ({vgg16.name} {where}; not available offline)"
    if not linear.is_file():
        return f"LPIPS needs its linear-layer weights ({linear.name} of the lpips package)"
    return None


def load_lpips(vgg16_weights: str | Path | None = None, linear_weights: str | Path | None = None) -> nn.Module:
    """The ``lpips`` package's LPIPS-VGG network (eval mode, frozen) with the backbone from ``vgg16_weights`` (a
    torchvision VGG16 state dict) and the heads from ``linear_weights``; :class:`MissingAssetError` without them."""
    reason = lpips_unavailable_reason(vgg16_weights, linear_weights)
    if reason is not None:
        raise MissingAssetError(reason)
    import lpips

    with warnings.catch_warnings():  # torchvision's note on the `pretrained` argument the package passes
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    backbone = torch.load(vgg16_weights or vgg16_weights_path(), map_location="cpu", weights_only=True)
    heads = torch.load(linear_weights or linear_weights_path(), map_location="cpu", weights_only=True)
    state = net.state_dict()
    for key in state:
        if key.startswith("net."):  # net.slice<k>.<i>.<param> is torchvision's features.<i>.<param>
            state[key] = backbone[f"features.{key.split('.', 2)[2]}"]
        elif key.startswith("lins."):  # the same modules as lin0 .. lin4
            state[key] = heads[f"lin{key[len('lins.'):]}"]
        elif key.startswith("lin"):
            state[key] = heads[key]
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)
