"""Image conventions: the only place uint8 <-> [-1, 1] arithmetic and the resize policy live.

* harness edges (datasets, metrics, files): ``uint8 [B, 3, H, W]``, RGB 0..255;
* inside models: ``float32 [B, 3, H, W]`` in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] (0..255) -> float32 [B,3,H,W] in [-1, 1] (x / 127.5 - 1)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images in 0..255, got dtype {images.dtype}")
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [B,3,H,W] in [-1, 1] -> uint8, rounding to nearest (x*127.5 + 128, floor, clamp), never truncating.

    ``to_uint8(to_model_range(u)) == u`` for every uint8 value ``u``.
    """
    if images.dtype == torch.uint8:
        raise TypeError("images are already uint8")
    return images.float().mul(127.5).add_(128.0).clamp_(0.0, 255.0).floor_().to(torch.uint8)


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 [3, H, W] RGB.

    Conversion policy: grayscale (L, I, F) is replicated to three channels; palette images are
    expanded; an alpha channel (RGBA, LA, PA) is composited onto white, the usual display convention.
    """
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode in ("I", "I;16", "F"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))
    img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def center_crop_arr(img: Image.Image, size: int) -> Image.Image:
    """ADM's ``center_crop_arr``: BOX-halve while the short side >= 2*size, BICUBIC to ``size``, centre crop.

    This is the evaluation resize policy of LlamaGen, VFMTok and the ADM reference batches.
    """
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 [B,3,H,W] to [B,3,size,size] with the ADM centre-crop policy (through PIL, per image)."""
    if images.shape[-2:] == (size, size):
        return images
    out = [
        pil_to_uint8(center_crop_arr(Image.fromarray(im.permute(1, 2, 0).cpu().numpy()), size)) for im in images
    ]
    return torch.stack(out)


def resize_model_range(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of float [-1, 1] images (LlamaGen/VFMTok: decode at 384/336 px, evaluate at 256)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
