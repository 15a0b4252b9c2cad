"""Convolutional encoder and decoder of taming VQGAN / LlamaGen VQ (also VFMTok's pixel decoder).

Numerics follow taming's ``diffusionmodules/model.py``: GroupNorm(eps 1e-6), swish, residual blocks with a
1x1 ``nin_shortcut`` when the width changes, single-head spatial self-attention, pad-then-stride-2
downsampling and nearest-neighbour upsampling. Module names follow LlamaGen (``conv_blocks.{i}.res.{j}``,
``mid.{0,1,2}``); taming checkpoints are remapped onto them by the VQGAN loader.

Where attention goes is given by ``attn_levels``: *resolution levels* counted from the full-resolution end,
``0`` = the level at the image resolution, ``len(ch_mult) - 1`` = the lowest-resolution level. The encoder and
the decoder use the same numbering (like taming's ``attn_resolutions``), so one list describes a symmetric
model. The decoder stores its levels lowest resolution first, so level ``i`` is ``decoder.conv_blocks.{L-1-i}``.
``None`` means the lowest-resolution level only (LlamaGen, taming f16); ``()`` means none (VFMTok's decoder).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with eps 1e-6; ``groups`` halves until it divides ``channels`` (narrow test models)."""
    if channels < 1 or groups < 1:
        raise ValueError(f"group_norm needs positive channels and groups, got {channels} and {groups}")
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv -> norm -> swish -> dropout -> conv, plus a (1x1-projected) skip."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv q/k/v/proj_out and a residual."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))  # [B,1,HW,C]
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v, [B,1,HW,C]
        out = out.transpose(2, 3).reshape(b, c, h, w)  # [B,C,H,W]
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 3x3 conv (halves even H and W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConvLevel(nn.Module):
    """One resolution level: ``res.{j}`` blocks, ``attn.{j}`` after each when enabled, then a resampler.

    ``resample`` is ``"down"`` (module ``downsample``), ``"up"`` (module ``upsample``) or ``None``.
    """

    def __init__(self, in_ch: int, out_ch: int, num_res: int, attn: bool, resample: str | None,
                 dropout: float = 0.0, groups: int = 32) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(in_ch if j == 0 else out_ch, out_ch, dropout, groups)
                                 for j in range(num_res))
        self.attn = nn.ModuleList(AttnBlock(out_ch, groups) for _ in range(num_res)) if attn else nn.ModuleList()
        self.resample = resample
        if resample == "down":
            self.downsample = Downsample(out_ch)
        elif resample == "up":
            self.upsample = Upsample(out_ch)
        elif resample is not None:
            raise ValueError(f"resample must be 'down', 'up' or None, got {resample!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        if self.resample == "down":
            x = self.downsample(x)
        elif self.resample == "up":
            x = self.upsample(x)
        return x


def _mid(channels: int, dropout: float, groups: int, attn: bool) -> nn.ModuleList:
    """``mid.{0,1,2}``: Res, Attn (or identity, no parameters), Res at constant width."""
    middle = AttnBlock(channels, groups) if attn else nn.Identity()
    return nn.ModuleList([ResnetBlock(channels, channels, dropout, groups), middle,
                          ResnetBlock(channels, channels, dropout, groups)])


def _check_config(ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_levels: Sequence[int] | None) -> set[int]:
    n = len(ch_mult)
    if n < 1 or ch < 1 or any(m < 1 for m in ch_mult) or num_res_blocks < 1:
        raise ValueError(f"need ch >= 1, a non-empty ch_mult of positive ints and num_res_blocks >= 1; got ch={ch}, "
                         f"ch_mult={tuple(ch_mult)}, num_res_blocks={num_res_blocks}")
    levels = {n - 1} if attn_levels is None else set(attn_levels)
    bad = sorted(i for i in levels if not 0 <= i < n)
    if bad:
        raise ValueError(f"attn_levels {bad} out of range: resolution levels are 0..{n - 1} (0 = full resolution)")
    return levels


class ConvEncoder(nn.Module):
    """Image [B, in_ch, H, W] -> features [B, z_channels, H / 2^(L-1), W / 2^(L-1)] for L = len(ch_mult).

    Level ``i`` (``conv_blocks.{i}``) has width ``ch * ch_mult[i]`` and ``num_res_blocks`` residual blocks; all
    levels but the last end with a ``downsample``. ``attn_levels``: see the module docstring.
    """

    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, attn_levels: Sequence[int] | None = None,
                 dropout: float = 0.0, norm_groups: int = 32, mid_attn: bool = True) -> None:
        super().__init__()
        n = len(ch_mult)
        attn = _check_config(ch, ch_mult, num_res_blocks, attn_levels)
        self.downsampling = 2 ** (n - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths = [ch] + [ch * m for m in ch_mult]
        self.conv_blocks = nn.ModuleList(
            ConvLevel(widths[i], widths[i + 1], num_res_blocks, i in attn, "down" if i < n - 1 else None, dropout,
                      norm_groups) for i in range(n))
        top = widths[-1]
        self.mid = _mid(top, dropout, norm_groups, attn=mid_attn)
        self.norm_out = group_norm(top, norm_groups)
        self.conv_out = nn.Conv2d(top, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ConvDecoder(nn.Module):
    """Latent map [B, z_channels, h, w] -> image [B, out_ch, h * 2^(L-1), w * 2^(L-1)], no output activation.

    ``conv_blocks`` are stored lowest resolution first (``conv_blocks.0`` has width ``ch * ch_mult[-1]``), each
    with ``num_res_blocks + 1`` residual blocks and, except the last, an ``upsample``. ``attn_levels`` counts
    resolution levels from the full-resolution end (see the module docstring): level ``i`` is
    ``conv_blocks.{L-1-i}``. ``mid_attn``: attention between the two middle residual blocks.
    """

    def __init__(self, z_channels: int = 256, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, out_channels: int = 3, attn_levels: Sequence[int] | None = None,
                 mid_attn: bool = True, dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        n = len(ch_mult)
        attn = _check_config(ch, ch_mult, num_res_blocks, attn_levels)
        self.upsampling = 2 ** (n - 1)
        widths = [ch * m for m in reversed(ch_mult)]  # lowest resolution first
        self.conv_in = nn.Conv2d(z_channels, widths[0], 3, padding=1)
        self.mid = _mid(widths[0], dropout, norm_groups, attn=mid_attn)
        self.conv_blocks = nn.ModuleList(
            ConvLevel(widths[max(k - 1, 0)], widths[k], num_res_blocks + 1, (n - 1 - k) in attn,
                      "up" if k < n - 1 else None, dropout, norm_groups) for k in range(n))
        self.norm_out = group_norm(widths[-1], norm_groups)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final conv (used by the adaptive GAN weight)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
