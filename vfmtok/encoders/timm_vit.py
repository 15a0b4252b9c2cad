"""Frozen timm ViTs (DINOv2 with and without registers, CLIP, SigLIP) as multi-level feature encoders.

Following VFMTok (its ``forward_features_levels``), the chosen blocks' patch tokens are returned as maps
[B, C, h, w]: raw residual-stream outputs for the early levels and the final-LayerNorm output for the last
level. Prefix tokens (cls, registers) are dropped. Each model applies its own preprocessing: resize to
``input_size`` with the model's interpolation, then its own mean/std (DINOv2: ImageNet, CLIP: OpenAI,
SigLIP: 0.5/0.5) on [0, 1] images.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from vfmtok.assets import DINOV2_FILE, DINOV2_URL
from vfmtok.encoders.base import FrozenEncoder, register_encoder
from vfmtok.errors import WeightsUnavailableError


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _official_file_hint(model_name: str) -> str:
    """Where to get the model's weights as a local file, for the models whose official file is known."""

    if model_name.split(".")[0] != "vit_large_patch14_reg4_dinov2":
        return ""
    return (f" Meta's official weights file {DINOV2_FILE} ({DINOV2_URL}; the DINOv2 the VFMTok tokenizer was "
            f"trained on) loads as it is: pass encoder_pretrained='/path/to/{DINOV2_FILE}' (e.g. "
            f"vfmtok.load_official('vfmtok', 'vfmtok-tokenizer.pt', encoder_pretrained='/path/to/{DINOV2_FILE}')).")


def _build_timm(model_name: str, pretrained: bool | str, **kwargs) -> torch.nn.Module:
    """timm model with hub weights (``True``), a local weights file (a path) or random weights (``False``)."""
    if isinstance(pretrained, (str, Path)):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file for {model_name} not found: {path}."
                                    + _official_file_hint(model_name))
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    if not os.environ.get("HF_HUB_OFFLINE") and not _hub_reachable():  # fail fast instead of minutes of retries
        raise WeightsUnavailableError(
            f"pretrained weights for {model_name} come from the Hugging Face Hub, which is unreachable. Set "
            "HF_HUB_OFFLINE=1 to use weights already in the local Hugging Face cache, pass a local weights file, or "
            "random weights: on a VFMTok tokenizer encoder_pretrained='/path/to/weights' or encoder_pretrained=False "
            "(create_encoder takes pretrained=...)." + _official_file_hint(model_name)
        )
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - no network, missing hub file, ...: say what to do instead
        raise WeightsUnavailableError(
            f"could not obtain pretrained weights for {model_name} through timm ({type(e).__name__}: {e}). "
            "Pass a local weights file or random weights: on a VFMTok tokenizer "
            "encoder_pretrained='/path/to/weights' or encoder_pretrained=False (create_encoder takes pretrained=...)."
            + _official_file_hint(model_name)
        ) from e


class TimmViTEncoder(FrozenEncoder):
    """A frozen timm VisionTransformer returning chosen blocks' patch-token maps.

    Args:
        model_name: timm name, optionally with a weights tag (``vit_large_patch14_reg4_dinov2.lvd142m``).
        levels: 0-based block indices to return, increasing; the last one is LayerNorm-ed with the final norm.
        input_size: square size images are resized to before the ViT (336 for VFMTok's DINOv2-L/14).
        pretrained: ``True`` (timm hub), a local weights file path, or ``False`` (random weights).
        last_norm: apply the final norm to the last level (VFMTok); ``False`` keeps all levels raw.
        **model_kwargs: extra timm constructor arguments (tiny test configurations).
    """

    def __init__(self, model_name: str, levels: Sequence[int], input_size: int, pretrained: bool | str = False,
                 last_norm: bool = True, **model_kwargs) -> None:
        super().__init__()
        levels = [int(i) for i in levels]
        if not levels or sorted(set(levels)) != levels:
            raise ValueError(f"levels must be strictly increasing block indices, got {levels}")
        self.model = _build_timm(model_name, pretrained, img_size=input_size, num_classes=0, **model_kwargs)
        depth = len(self.model.blocks)
        if levels[0] < 0 or levels[-1] >= depth:
            raise ValueError(f"levels {levels} out of range for {model_name} with {depth} blocks")
        self.model.prune_intermediate_layers(levels, prune_norm=False, prune_head=True)
        self.timm_name, self.levels, self.last_norm, self.input_size = model_name, levels, last_norm, input_size
        cfg = self.model.pretrained_cfg
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        gh, gw = self.model.patch_embed.grid_size
        self.level_channels = tuple([self.model.embed_dim] * len(levels))
        self.level_sizes = tuple([(gh, gw)] * len(levels))
        self.freeze()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the model's input: resized, clamped, mapped to [0, 1], mean/std normalised."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bicubic"
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=mode, align_corners=False,
                              antialias=True)
        x = (x.clamp(-1.0, 1.0) + 1.0) / 2.0
        return (x - self.mean) / self.std

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Block outputs at ``levels`` as [B, C, h, w] (the last after the final norm when ``last_norm``)."""
        tokens = self.model.forward_intermediates(self.preprocess(x), indices=self.levels, norm=False,
                                                  stop_early=True, output_fmt="NLC", intermediates_only=True)
        if self.last_norm:
            tokens[-1] = self.model.norm(tokens[-1])  # per-token LayerNorm: same as normalising the full sequence
        gh, gw = self.level_sizes[0]
        return [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], gh, gw) for t in tokens]  # [B, C, h, w]


def _entry(timm_name: str, levels: Sequence[int], default_size: int):
    def build(pretrained: bool | str = False, input_size: int = default_size, levels: Sequence[int] = levels,
              **kwargs) -> TimmViTEncoder:
        return TimmViTEncoder(timm_name, levels, input_size, pretrained=pretrained, **kwargs)

    build.__doc__ = f"timm ``{timm_name}``, levels {list(levels)}, input {default_size} px."
    return build


#: name -> (timm model with weights tag, default 0-based levels, default input size)
TIMM_ENCODERS: dict[str, tuple[str, tuple[int, ...], int]] = {
    "dinov2_vits14": ("vit_small_patch14_dinov2.lvd142m", (2, 5, 8, 11), 224),
    "dinov2_vits14_reg4": ("vit_small_patch14_reg4_dinov2.lvd142m", (2, 5, 8, 11), 224),
    "dinov2_vitb14": ("vit_base_patch14_dinov2.lvd142m", (2, 5, 8, 11), 224),
    "dinov2_vitb14_reg4": ("vit_base_patch14_reg4_dinov2.lvd142m", (2, 5, 8, 11), 224),
    "dinov2_vitl14": ("vit_large_patch14_dinov2.lvd142m", (5, 11, 17, 23), 336),
    "dinov2_vitl14_reg4": ("vit_large_patch14_reg4_dinov2.lvd142m", (5, 11, 17, 23), 336),
    "clip_vitb16": ("vit_base_patch16_clip_224.openai", (2, 5, 8, 11), 224),
    "clip_vitl14": ("vit_large_patch14_clip_224.openai", (5, 11, 17, 23), 224),
    "siglip_vitb16": ("vit_base_patch16_siglip_224.webli", (2, 5, 8, 11), 224),
    "siglip_vitb16_256": ("vit_base_patch16_siglip_256.webli", (2, 5, 8, 11), 256),
}

for _name, (_timm, _levels, _size) in TIMM_ENCODERS.items():
    register_encoder(_name)(_entry(_timm, _levels, _size))


@register_encoder("test_vit_tiny")
def test_vit_tiny(pretrained: bool | str = False, input_size: int = 32, levels: Sequence[int] = (1, 3),
                  **kwargs) -> TimmViTEncoder:
    """A tiny random DINOv2-style ViT (patch 4, width 32, 4 blocks, 2 registers) for fast tests."""
    arch = {"patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2, "reg_tokens": 2, "init_values": 1.0,
            **kwargs}
    return TimmViTEncoder("vit_small_patch14_reg4_dinov2", levels, input_size, pretrained=pretrained, **arch)
