"""VFMTok's region-adaptive encoder: level projectors, region queries and deformable layers.

Each encoder level goes through its own projector MLP (Linear no bias -> LN -> ReLU -> Linear no bias -> LN)
and a separate LayerNorm. Learnable region queries (``carrier_tokens`` + ``slots_pos``) anchored on a fixed
g x g grid of reference points pass through post-norm layers: multi-scale deformable cross-attention over all
levels -> norm1 -> self-attention (position added to q, k and v; causal by default) -> norm3 -> FFN -> norm2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.models.deform_attn import MSDeformAttn
from vfmtok.models.vit_decoder import Attention


class Projector(nn.Module):
    """Per-level MLP: Linear(in, dim, no bias) -> LN -> ReLU -> Linear(dim, dim, no bias) -> LN (keys ``mlp.*``)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(),
                                 nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float [..., in_dim] -> [..., dim]."""
        return self.mlp(x)


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable cross-attention, self-attention, ReLU FFN (dropout 0, as the official code)."""

    def __init__(self, dim: int, n_levels: int, n_heads: int, n_points: int, ffn_dim: int,
                 causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.cross_attn = MSDeformAttn(dim, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, n_heads)
        self.norm3 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """x [B, Nq, dim], pos [1, Nq, dim], reference_points [B, Nq, levels, 2], value [B, S, dim]."""
        x = self.norm1(x + self.cross_attn(x + pos, reference_points, value, spatial_shapes))
        x = self.norm3(x + self.self_attn(x + pos, causal=self.causal))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` (key prefix ``layers.{i}``)."""

    def __init__(self, depth: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DeformableEncoderLayer(**layer_kwargs) for _ in range(depth)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Run every layer; shapes as in :meth:`DeformableEncoderLayer.forward`."""
        for layer in self.layers:
            x = layer(x, pos, reference_points, value, spatial_shapes)
        return x


def grid_reference_points(side: int) -> torch.Tensor:
    """float [side*side, 2]: (x, y) = ((j + 0.5) / side, (i + 0.5) / side) for query n = side*i + j."""
    c = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)


class RegionEncoder(nn.Module):
    """Encoder levels -> region tokens float [B, num_queries, dim] (official prefix ``encode_transformer``).

    Args:
        in_channels: channel width of each encoder level.
        dim: region-token width.
        num_queries: number of region queries; must be a perfect square (queries sit on a g x g grid).
        depth: number of deformable layers.
        n_heads: heads of both attentions.
        n_points: sampling points per head and level.
        ffn_dim: FFN hidden width.
        causal: causal self-attention among region tokens (official) or full attention.
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 512, num_queries: int = 256, depth: int = 6,
                 n_heads: int = 8, n_points: int = 4, ffn_dim: int = 1024, causal: bool = True) -> None:
        super().__init__()
        side = math.isqrt(num_queries)
        if side * side != num_queries:
            raise ValueError(f"num_queries must be a perfect square (a g x g grid), got {num_queries}")
        self.num_queries, self.side = num_queries, side
        n_levels = len(in_channels)
        scale = dim**-0.5
        self.carrier_tokens = nn.Parameter(torch.randn(1, num_queries, dim) * scale)
        self.slots_pos = nn.Parameter(torch.randn(1, num_queries, dim) * scale)
        self.projectors = nn.ModuleList([Projector(c, dim) for c in in_channels])
        self.norm_layers = nn.ModuleList([nn.LayerNorm(dim) for _ in in_channels])
        self.transformer = DeformableEncoder(depth, dim=dim, n_levels=n_levels, n_heads=n_heads, n_points=n_points,
                                             ffn_dim=ffn_dim, causal=causal)
        self.norm_pre1 = nn.LayerNorm(dim)
        self.register_buffer("reference_points", grid_reference_points(side), persistent=False)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder maps (float [B, C_i, h_i, w_i] per level) -> region tokens float [B, num_queries, dim]."""
        if len(levels) != len(self.projectors):
            raise ValueError(f"expected {len(self.projectors)} feature levels, got {len(levels)}")
        values, shapes = [], []
        for i, feat in enumerate(levels):
            tokens = feat.flatten(2).transpose(1, 2)  # [B, h*w, C_i], row-major
            values.append(self.norm_layers[i](self.projectors[i](tokens)))
            shapes.append((feat.shape[2], feat.shape[3]))
        value = torch.cat(values, dim=1)  # [B, sum h*w, dim]
        b = value.shape[0]
        x = self.norm_pre1(self.carrier_tokens).expand(b, -1, -1)  # row-major over the g x g grid
        ref = self.reference_points[None, :, None, :].expand(b, -1, len(shapes), -1)  # [B, Nq, levels, 2]
        return self.transformer(x, self.slots_pos, ref, value, shapes)
