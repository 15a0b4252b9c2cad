"""Convolutional encoder and decoder of taming VQGAN / LlamaGen VQ (also VFMTok's pixel decoder).

Numerics follow taming's ``diffusionmodules/model.py``: GroupNorm(eps 1e-6), swish, residual blocks with a
1x1 ``nin_shortcut`` when the width changes, single-head spatial self-attention, pad-then-stride-2
downsampling and nearest-neighbour upsampling. Module names follow LlamaGen (``conv_blocks.{i}.res.{j}``,
``mid.{0,1,2}``); taming checkpoints are remapped onto them by the VQGAN loader.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with eps 1e-6; ``groups`` shrinks to a divisor of ``channels`` for narrow test models."""
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv -> norm -> swish -> dropout -> conv, plus a (1x1-projected) skip."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch, groups)
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
        self.norm = norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))  # [B,1,HW,C]
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 3x3 conv (halves H and W)."""

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


class _Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resampling."""

    def __init__(self, in_ch: int, out_ch: int, num_res: int, attn: bool, resample: type[nn.Module] | None,
                 dropout: float, groups: int) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(in_ch if j == 0 else out_ch, out_ch, dropout, groups)
                                 for j in range(num_res))
        self.attn = nn.ModuleList(AttnBlock(out_ch, groups) for _ in range(num_res)) if attn else nn.ModuleList()
        if resample is Downsample:
            self.downsample = Downsample(out_ch)
        elif resample is Upsample:
            self.upsample = Upsample(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def _mid(channels: int, dropout: float, groups: int, attn: bool) -> nn.ModuleList:
    middle = AttnBlock(channels, groups) if attn else nn.Identity()
    return nn.ModuleList([ResnetBlock(channels, channels, dropout, groups), middle,
                          ResnetBlock(channels, channels, dropout, groups)])


class ConvEncoder(nn.Module):
    """Image [B, in_ch, H, W] -> features [B, z_channels, H / 2^(L-1), W / 2^(L-1)] for L = len(ch_mult).

    Args:
        attn_levels: indices of levels (0 = full resolution) whose residual blocks are followed by attention;
            ``None`` means the last (lowest-resolution) level only, as in LlamaGen and taming f16.
    """

    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, attn_levels: Sequence[int] | None = None,
                 dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        n = len(ch_mult)
        attn = set(attn_levels) if attn_levels is not None else {n - 1}
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths = [ch] + [ch * m for m in ch_mult]
        self.conv_blocks = nn.ModuleList(
            _Level(widths[i], widths[i + 1], num_res_blocks, i in attn, Downsample if i < n - 1 else None, dropout,
                   norm_groups) for i in range(n))
        top = widths[-1]
        self.mid = _mid(top, dropout, norm_groups, attn=True)
        self.norm_out = norm(top, norm_groups)
        self.conv_out = nn.Conv2d(top, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ConvDecoder(nn.Module):
    """Latent map [B, z_channels, h, w] -> image [B, out_ch, h * 2^(L-1), w * 2^(L-1)].

    Levels are stored lowest resolution first (``conv_blocks.0`` has width ``ch * ch_mult[-1]``), each with
    ``num_res_blocks + 1`` residual blocks and an upsampling except the last.

    Args:
        attn_levels: indices into ``conv_blocks`` (0 = lowest resolution) with attention after each residual
            block; ``None`` means level 0 only (LlamaGen, taming f16). VFMTok uses ``()``.
        mid_attn: attention between the two middle residual blocks.
    """

    def __init__(self, z_channels: int = 256, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, out_channels: int = 3, attn_levels: Sequence[int] | None = None,
                 mid_attn: bool = True, dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        n = len(ch_mult)
        attn = set(attn_levels) if attn_levels is not None else {0}
        widths = [ch * m for m in reversed(ch_mult)]  # lowest resolution first
        self.conv_in = nn.Conv2d(z_channels, widths[0], 3, padding=1)
        self.mid = _mid(widths[0], dropout, norm_groups, attn=mid_attn)
        self.conv_blocks = nn.ModuleList(
            _Level(widths[max(k - 1, 0)], widths[k], num_res_blocks + 1, k in attn, Upsample if k < n - 1 else None,
                   dropout, norm_groups) for k in range(n))
        self.norm_out = norm(widths[-1], norm_groups)
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
