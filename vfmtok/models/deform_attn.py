"""Multi-scale deformable attention (Deformable-DETR) in pure PyTorch, with ``grid_sample``.

Each query predicts, per head, level and point, an offset (in feature-pixel units of that level) from its
reference point and an attention weight (softmax over levels x points). Values are sampled bilinearly with
zero padding and ``align_corners=False`` semantics, weighted and summed. Levels may differ in size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_sample(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The core sampling op.

    Args:
        value: float [B, S, heads, Dh] with S = sum(H_l * W_l), levels concatenated in row-major order.
        spatial_shapes: (H_l, W_l) per level.
        sampling_locations: float [B, Lq, heads, levels, points, 2], normalised (x, y) in [0, 1].
        attention_weights: float [B, Lq, heads, levels, points].

    Returns:
        float [B, Lq, heads * Dh].
    """
    b, s, heads, dh = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    if sum(h * w for h, w in spatial_shapes) != s or len(spatial_shapes) != levels:
        raise ValueError(f"value has {s} positions over {levels} levels but spatial_shapes={list(spatial_shapes)}")
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * heads, dh, h, w)  # [B*heads, Dh, H, W]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*heads, Lq, points, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*heads, Dh, Lq, levels*points]
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, lq, levels * points)
    out = (stacked * weights).sum(-1)  # [B*heads, Dh, Lq]
    return out.view(b, heads * dh, lq).transpose(1, 2).contiguous()  # [B, Lq, heads*Dh]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the Deformable-DETR parameter names and initialisation.

    Args:
        dim: model width (``d_model``).
        n_levels: number of feature levels.
        n_heads: attention heads (``dim`` must be divisible by it).
        n_points: sampling points per head and level.
    """

    def __init__(self, dim: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.dim, self.n_levels, self.n_heads, self.n_points = dim, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a star of head directions, scaled by (point + 1)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        dirs = torch.stack([angles.cos(), angles.sin()], -1)  # [heads, 2]
        dirs = dirs / dirs.abs().max(-1, keepdim=True).values
        dirs = dirs.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        dirs = dirs * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(dirs.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """Attend from queries to the multi-level value maps.

        Args:
            query: float [B, Lq, dim].
            reference_points: float [B or 1, Lq, n_levels, 2], normalised (x, y) in [0, 1].
            value: float [B, S, dim], the levels flattened row-major and concatenated.
            spatial_shapes: (H_l, W_l) per level, in the order of ``value``.

        Returns:
            float [B, Lq, dim].
        """
        b, lq, _ = query.shape
        if len(spatial_shapes) != self.n_levels:
            raise ValueError(f"expected {self.n_levels} levels, got spatial_shapes={list(spatial_shapes)}")
        if reference_points.shape[-2:] != (self.n_levels, 2):
            raise ValueError(f"reference_points must be [B, Lq, {self.n_levels}, 2], "
                             f"got {tuple(reference_points.shape)}")
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        v = self.value_proj(value).view(b, value.shape[1], heads, self.dim // heads)  # [B, S, heads, Dh]
        offsets = self.sampling_offsets(query).view(b, lq, heads, levels, points, 2)
        weights = self.attention_weights(query).view(b, lq, heads, levels * points).softmax(-1)
        weights = weights.view(b, lq, heads, levels, points)
        # offsets are in feature pixels of each level: divide by that level's (W, H)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn_sample(v, spatial_shapes, locations, weights)
        return self.output_proj(out)
