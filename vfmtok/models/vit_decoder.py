"""VFMTok's ViT decoder: region tokens + query tokens under one causal mask.

Sequence = [LN_post1(region memory + slot pos) | LN(cls + pos0, queries + pos, registers)]. The pixel branch
uses ``mask_embedding`` queries on the mask grid (position table interpolated as the official code does:
bicubic ``F.interpolate`` with ``scale_factor = (m + 0.1) / g``, e.g. 21.1 / 24) and ``norm_post1`` for both
parts; the semantic branch uses ``mask_dino`` queries on the native grid with ``norm_post2`` on the queries and
projects to the encoder width. Registers come last in causal order, so nothing attends to them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (with bias), SDPA, optional causal mask."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """float [B, L, dim] -> [B, L, dim] (q, k and v all computed from ``x``)."""
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # [B, heads, L, Dh]
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                             is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))  # [B, L, dim]


class SwiGLU(nn.Module):
    """SwiGLU FFN with a fused first projection ``w12`` and output ``w3`` (both with bias)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float [..., dim] -> [..., dim]."""
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


def swiglu_hidden(mlp_dim: int) -> int:
    """Hidden width of the SwiGLU FFN: 2/3 of ``mlp_dim`` rounded up to a multiple of 8 (2048 -> 1368)."""
    return (int(mlp_dim * 2 / 3) + 7) // 8 * 8


class DecoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn1(norm1(x)); x + ffnet(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffnet = SwiGLU(dim, swiglu_hidden(mlp_dim))

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """float [B, L, dim] -> [B, L, dim]."""
        x = x + self.attn1(self.norm1(x), causal=causal)
        return x + self.ffnet(self.norm2(x))


class DecoderStack(nn.Module):
    """``layers`` of :class:`DecoderLayer` (no final norm)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(dim, num_heads, mlp_dim, dropout) for _ in range(depth)])

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """float [B, L, dim] -> [B, L, dim]."""
        for layer in self.layers:
            x = layer(x, causal=causal)
        return x


class ViTDecoder(nn.Module):
    """Decode region tokens into a mask-grid feature map (pixel branch) and encoder features (semantic branch).

    Args:
        dim: width.
        depth: number of layers.
        num_heads: attention heads.
        mlp_dim: nominal FFN width (SwiGLU hidden = 2/3 of it, rounded up to 8).
        num_queries: number of region tokens.
        semantic_grid: (h, w) of the encoder's last level (the position table covers 1 + h*w positions).
        mask_grid: side of the square pixel-branch grid fed to the conv decoder.
        semantic_dim: encoder width the semantic branch projects to.
        num_registers: register tokens appended last.
        dropout: attention dropout while training.
        causal: one causal mask over the whole sequence (official); ``False`` gives full attention.
    """

    def __init__(self, dim: int = 512, depth: int = 6, num_heads: int = 8, mlp_dim: int = 2048,
                 num_queries: int = 256, semantic_grid: tuple[int, int] = (24, 24), mask_grid: int = 21,
                 semantic_dim: int = 1024, num_registers: int = 4, dropout: float = 0.1, causal: bool = True) -> None:
        super().__init__()
        gh, gw = semantic_grid
        self.semantic_grid, self.mask_grid, self.num_queries, self.causal = (gh, gw), mask_grid, num_queries, causal
        scale = dim**-0.5
        self.position_embedding = nn.Parameter(torch.randn(1, 1 + gh * gw, dim) * scale)
        self.slot_position_embedding = nn.Parameter(torch.randn(1, num_queries, dim) * scale)
        self.mask_embedding = nn.Parameter(torch.randn(1, 1, dim) * scale)
        self.mask_dino = nn.Parameter(torch.randn(1, 1, dim) * scale)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * scale)
        self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, dim))
        self.transformer = DecoderStack(dim, depth, num_heads, mlp_dim, dropout)
        self.norm_post1 = nn.LayerNorm(dim)
        self.norm_post2 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, semantic_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.mask_scale = ((mask_grid + 0.1) / gh, (mask_grid + 0.1) / gw)
        if (mask_grid, mask_grid) != (gh, gw) and any(int(g * s) != mask_grid
                                                      for g, s in zip(semantic_grid, self.mask_scale)):
            raise ValueError(f"cannot interpolate the {gh}x{gw} position grid to {mask_grid}x{mask_grid}")

    def mask_positions(self) -> torch.Tensor:
        """float [1, m*m, dim]: the patch position table resized to the mask grid (official interpolation)."""
        gh, gw = self.semantic_grid
        pos = self.position_embedding[:, 1:]
        if (gh, gw) == (self.mask_grid, self.mask_grid):
            return pos
        grid = pos.transpose(1, 2).reshape(1, -1, gh, gw)  # [1, dim, gh, gw]
        # scale_factor (not size): the sampling uses scale (m + 0.1) / g, as in the official code
        grid = F.interpolate(grid, scale_factor=self.mask_scale, mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)  # [1, m*m, dim]

    def _run(self, memory: torch.Tensor, queries: torch.Tensor, query_norm: nn.LayerNorm) -> torch.Tensor:
        """memory [B, Nq, dim], queries [1, 1 + M + R, dim] -> outputs at the M query positions [B, M, dim]."""
        b, nq, _ = memory.shape
        if nq != self.num_queries:
            raise ValueError(f"expected {self.num_queries} region tokens, got {nq}")
        mem = self.norm_post1(memory + self.slot_position_embedding)
        seq = torch.cat([mem, query_norm(queries).expand(b, -1, -1)], dim=1)  # [B, Nq + 1 + M + R, dim]
        out = self.transformer(seq, causal=self.causal)
        m = queries.shape[1] - 1 - self.register_tokens.shape[1]
        return out[:, nq + 1:nq + 1 + m]

    def _queries(self, token: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token + self.position_embedding[:, :1]
        return torch.cat([cls, token + positions, self.register_tokens], dim=1)  # [1, 1 + M + R, dim]

    def pixel_features(self, memory: torch.Tensor) -> torch.Tensor:
        """Region memory float [B, Nq, dim] -> feature map float [B, dim, m, m] for the conv decoder."""
        out = self._run(memory, self._queries(self.mask_embedding, self.mask_positions()), self.norm_post1)
        m = self.mask_grid
        return out.transpose(1, 2).reshape(out.shape[0], -1, m, m)  # [B, dim, m, m], row-major tokens

    def semantic_features(self, memory: torch.Tensor) -> torch.Tensor:
        """Region memory float [B, Nq, dim] -> predicted encoder features float [B, h*w, semantic_dim]."""
        out = self._run(memory, self._queries(self.mask_dino, self.position_embedding[:, 1:]), self.norm_post2)
        return self.proj(out)
