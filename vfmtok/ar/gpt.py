"""LlamaGen's class-conditional GPT, written from its published description.

The sequence is ``[class token] + image tokens`` (raster order for grid tokenizers, query order for VFMTok).
Pre-norm blocks with RMSNorm, a fused-``wqkv`` causal attention with 2D rotary embeddings, and a SwiGLU FFN;
no biases anywhere; untied input/output embeddings; zero-initialised output head. State-dict keys equal the
released LlamaGen / VFMTok GPT checkpoints (``cls_embedding.embedding_table.weight``, ``tok_embeddings.weight``,
``layers.{i}.attention.{wqkv,wo}.weight``, ``layers.{i}.feed_forward.{w1,w2,w3}.weight``,
``layers.{i}.{attention_norm,ffn_norm}.weight``, ``norm.weight``, ``output.weight``).

Checkpoint-parity detail kept on purpose: the class-token position has an all-zero rotary entry (cos = sin = 0),
so its query and key are exactly zero in every layer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.checkpoint import load_checkpoint_file, load_state_dict_strict, select_weights, tag_loaded
from vfmtok.registry import Registry


@dataclass(frozen=True)
class GPTConfig:
    """Architecture of a class-conditional GPT. ``grid`` (h, w) with h * w == num_tokens; square by default."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = 16384
    num_tokens: int = 256
    num_classes: int = 1000
    grid: tuple[int, int] | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    ffn_multiple_of: int = 256
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    class_dropout: float = 0.1
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.head_dim % 4:
            raise ValueError(f"2D RoPE needs a head_dim divisible by 4, got {self.head_dim}")
        for name in ("vocab_size", "num_tokens", "num_classes", "n_layer"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.grid is None:
            side = math.isqrt(self.num_tokens)
            if side * side != self.num_tokens:
                raise ValueError(f"num_tokens {self.num_tokens} is not a square: pass grid=(h, w)")
            object.__setattr__(self, "grid", (side, side))
        grid = tuple(int(g) for g in self.grid)
        if len(grid) != 2 or grid[0] * grid[1] != self.num_tokens:
            raise ValueError(f"grid {self.grid} does not hold num_tokens={self.num_tokens} tokens")
        object.__setattr__(self, "grid", grid)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        """int(2/3 * 4 * dim) rounded up to a multiple of ``ffn_multiple_of``."""
        hidden = int(2 * 4 * self.dim / 3)
        return self.ffn_multiple_of * ((hidden + self.ffn_multiple_of - 1) // self.ffn_multiple_of)


#: named architectures: GPTConfig field overrides (vocab, length and classes come from the tokenizer and data)
AR_MODELS: Registry[dict[str, Any]] = Registry("AR model")
for _name, _dim, _layers, _heads in [
    ("gpt_b", 768, 12, 12), ("gpt_l", 1024, 24, 16), ("gpt_xl", 1280, 36, 20), ("gpt_xxl", 1536, 48, 24),
    ("gpt_2b", 1920, 48, 32), ("gpt_3b", 3200, 24, 32),  # 2B: head_dim 60; 3B: head_dim 100
    ("gpt_mini", 384, 8, 6), ("gpt_micro", 256, 4, 4), ("gpt_nano", 128, 4, 4), ("test_gpt", 64, 2, 2),
]:
    AR_MODELS.register(_name, {"dim": _dim, "n_layer": _layers, "n_head": _heads})


def rope_table_2d(grid: tuple[int, int], head_dim: int, base: float = 10000.0, prefix: int = 1) -> torch.Tensor:
    """float32 [prefix + h*w, head_dim/2, 2] of (cos, sin); the ``prefix`` class rows are all zero.

    Cell (r, c) gets the angles [r*f_0 .. r*f_{d/4-1}, c*f_0 .. c*f_{d/4-1}] with f_j = base^(-2j/(d/2)).
    """
    h, w = grid
    half = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, half, 2, dtype=torch.float32, device="cpu")[: half // 2] / half)
    rows = torch.outer(torch.arange(h, dtype=torch.float32, device="cpu"), freqs)  # [h, d/4]
    cols = torch.outer(torch.arange(w, dtype=torch.float32, device="cpu"), freqs)  # [w, d/4]
    angles = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
    angles = angles.reshape(h * w, half)  # row-major: sequence index n <-> (n // w, n % w)
    table = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [h*w, d/2, 2]
    return torch.cat([torch.zeros(prefix, half, 2, device="cpu"), table], dim=0)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2k, 2k+1) of x [B, S, H, d] by table [S, d/2, 2], in float32."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, S, H, d/2, 2]
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]  # [1, S, 1, d/2]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in float32, cast back to the input dtype, then times the weight."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


#: with ``pack_weights=None``, Linear layers smaller than this (weights) stay unpacked: their calls are dominated by
#: fixed costs (~15 us per oneDNN call) rather than by reading the weights
PACK_MIN_WEIGHTS = 1 << 19


def packing_available() -> bool:
    """Whether this PyTorch build can reorder Linear weights for oneDNN (CPU decoding, see :meth:`GPT.setup_cache`)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


def _linear(layer: nn.Linear, x: torch.Tensor, incremental: bool) -> torch.Tensor:
    """``layer(x)``; in incremental decoding without autograd, through the weight packed by :meth:`GPT.setup_cache`.

    Small-batch matmuls are bound by reading the weights; oneDNN's reordered layout reads them about 1.5-2x faster
    on CPU than the row-major ``[out, in]`` weight (same products, another summation order: ~1e-6 relative).
    """
    packed = layer.__dict__.get("packed_weight") if incremental else None
    if packed is None or torch.is_grad_enabled():
        return layer(x)
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def _attend_one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for one query per sequence: q [B, H, 1, d], k, v [B, H, S_kv, d] -> [B, H, 1, d].

    Every cached key precedes the query, so no mask; the softmax runs in float32.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)  # [B, H, 1, S_kv]
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


class KVCache:
    """Keys and values of one layer for incremental decoding: [B, heads, max_len, head_dim] each."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H, T, hd] at positions start..start+T-1; return all keys/values up to there."""
        b, end = k.shape[0], start + k.shape[2]
        if b > self.k.shape[0] or end > self.k.shape[2]:
            raise ValueError(f"KV cache holds batch {self.k.shape[0]} x {self.k.shape[2]} positions; "
                             f"got batch {b} up to position {end}")
        self.k[:b, :, start:end] = k
        self.v[:b, :, start:end] = v
        return self.k[:b, :, :end], self.v[:b, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor, start_pos: int | None) -> torch.Tensor:
        b, s, d = x.shape
        incremental = start_pos is not None
        q, k, v = _linear(self.wqkv, x, incremental).split(d, dim=-1)
        q, k = (apply_rope(t.view(b, s, self.n_head, self.head_dim), rope) for t in (q, k))
        v = v.view(b, s, self.n_head, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, hd]
        if start_pos is None:  # full causal pass
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # incremental: append to the cache, attend to everything up to each query's position
            if self.kv_cache is None:
                raise RuntimeError("call setup_cache() before incremental decoding")
            k, v = self.kv_cache.update(start_pos, k, v)
            if s == 1 and not x.is_cuda:  # one new token: CPU's flash kernel is slow for a single query
                out = _attend_one_query(q, k, v)
            else:
                mask = None
                if s > 1:
                    key_pos = torch.arange(k.shape[2], device=x.device)
                    mask = key_pos[None, :] <= (start_pos + torch.arange(s, device=x.device))[:, None]  # [S, S_kv]
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, s, d)  # [B, S, H*hd]
        return self.resid_dropout(_linear(self.wo, out, incremental))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), then dropout."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout)

    def forward(self, x: torch.Tensor, incremental: bool = False) -> torch.Tensor:
        gate, up = _linear(self.w1, x, incremental), _linear(self.w3, x, incremental)
        return self.ffn_dropout(_linear(self.w2, F.silu(gate) * up, incremental))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, start_pos: int | None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, start_pos)
        return h + self.feed_forward(self.ffn_norm(h), start_pos is not None)


class LabelEmbedder(nn.Module):
    """Class embedding with one extra null row (index num_classes); labels are dropped to it in training."""

    def __init__(self, num_classes: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)[:, None, :]  # [B, 1, D]


class GPT(nn.Module):
    """Class-conditional GPT over ``num_tokens`` tokens from a codebook of ``vocab_size``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.registry_name = "gpt"
        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # float32 rotary table; a plain attribute (not a buffer) so dtype casts never touch it
        self._rope = rope_table_2d(cfg.grid, cfg.head_dim, cfg.rope_base)  # [1 + L, d/2, 2]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, init_std) for every Linear and Embedding, ones for norms, zeros for the output head."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, self.config.init_std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        nn.init.zeros_(self.output.weight)

    # ------------------------------------------------------------------ helpers
    def _rope_rows(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        if self._rope.device != device:
            self._rope = self._rope.to(device)
        return self._rope[start:start + length]

    def _check_labels(self, labels: torch.Tensor, batch: int | None = None) -> None:
        if labels.dtype != torch.int64 or labels.dim() != 1 or (batch is not None and labels.shape[0] != batch):
            want = f"[{batch}]" if batch is not None else "[B]"
            raise ValueError(f"labels must be int64 {want}, got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.config.num_classes):
            raise ValueError(f"labels must lie in [0, {self.config.num_classes}] ({self.config.num_classes} = null "
                             f"class), got [{int(labels.min())}, {int(labels.max())}]")

    def _check_indices(self, indices: torch.Tensor, max_len: int) -> None:
        if indices.dtype != torch.int64 or indices.dim() != 2 or not 1 <= indices.shape[1] <= max_len:
            raise ValueError(f"indices must be int64 [B, T] with 1 <= T <= {max_len}, "
                             f"got {indices.dtype} {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.config.vocab_size):
            raise ValueError(f"token indices must lie in [0, {self.config.vocab_size}), "
                             f"got [{int(indices.min())}, {int(indices.max())}]")

    def _run(self, h: torch.Tensor, start_pos: int | None, last_only: bool = False) -> torch.Tensor:
        rope = self._rope_rows(start_pos or 0, h.shape[1], h.device)
        h = self.tok_dropout(h)
        for layer in self.layers:
            h = layer(h, rope, start_pos)
        if last_only:
            h = h[:, -1:]  # [B, 1, D]: only the next token's logits go through the head
        return _linear(self.output, self.norm(h), start_pos is not None).float()

    # ------------------------------------------------------------------ public
    def forward(self, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits float32 [B, T, K]: position t predicts token t from the class and tokens < t.

        ``indices`` int64 [B, T] (T <= num_tokens; the last token is not fed), ``labels`` int64 [B].
        """
        self._check_indices(indices, self.config.num_tokens)
        self._check_labels(labels, indices.shape[0])
        h = torch.cat([self.cls_embedding(labels), self.tok_embeddings(indices[:, :-1])], dim=1)  # [B, T, D]
        return self._run(h, None)

    def loss(self, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all token positions (scalar, float32)."""
        logits = self(indices, labels)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), indices.reshape(-1))

    def setup_cache(self, batch_size: int, *, dtype: torch.dtype | None = None,
                    device: torch.device | None = None, pack_weights: bool | None = None) -> None:
        """Allocate per-layer KV caches for ``batch_size`` sequences of up to ``num_tokens`` positions.

        ``pack_weights`` also keeps oneDNN-reordered copies of every Linear weight for the incremental steps (faster
        small-batch matmuls on CPU, at the cost of a second copy of the weights until :meth:`clear_cache`); they
        snapshot the current weights. None (default) packs the Linear layers of at least ``PACK_MIN_WEIGHTS`` weights
        of float32 CPU models when the build supports it; True packs every Linear layer.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        p = self.tok_embeddings.weight
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch_size, self.config.n_head, self.config.num_tokens,
                                               self.config.head_dim, dtype or p.dtype, device or p.device)
        usable = p.device.type == "cpu" and p.dtype == torch.float32 and packing_available()
        if pack_weights and not usable:
            raise ValueError(f"pack_weights needs float32 weights on CPU and a PyTorch build with oneDNN; "
                             f"got {p.dtype} on {p.device}, oneDNN packing available: {packing_available()}")
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.__dict__.pop("packed_weight", None)
                if usable and (pack_weights or (pack_weights is None and m.weight.numel() >= PACK_MIN_WEIGHTS)):
                    with torch.no_grad():
                        m.packed_weight = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_size)

    def clear_cache(self) -> None:
        """Free the KV caches and the packed weights."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.__dict__.pop("packed_weight", None)

    def step(self, tokens: torch.Tensor | None, labels: torch.Tensor | None, start_pos: int, *,
             last_only: bool = False) -> torch.Tensor:
        """Incremental logits float32 [B, T', K] through the KV cache (see :meth:`setup_cache`).

        At ``start_pos == 0`` the class token (``labels`` int64 [B]) is fed first, followed by ``tokens`` if given
        (prefill); later, ``tokens`` int64 [B, T] are fed at positions start_pos .. start_pos+T-1. ``last_only``
        returns the last position's logits alone ([B, 1, K]).
        """
        parts = []
        if start_pos == 0:
            if labels is None:
                raise ValueError("labels are required at start_pos 0")
            self._check_labels(labels)
            parts.append(self.cls_embedding(labels))
        elif tokens is None:
            raise ValueError(f"tokens are required at start_pos {start_pos}")
        if tokens is not None:
            if tokens.dtype != torch.int64 or tokens.dim() != 2:
                raise ValueError(f"tokens must be int64 [B, T], got {tokens.dtype} {tuple(tokens.shape)}")
            parts.append(self.tok_embeddings(tokens))
        h = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # [B, T', D]
        if start_pos < 0 or start_pos + h.shape[1] > self.config.num_tokens:
            raise ValueError(f"positions {start_pos}..{start_pos + h.shape[1] - 1} exceed the sequence "
                             f"(0..{self.config.num_tokens - 1})")
        return self._run(h, start_pos, last_only)


def create_gpt(name: str, vocab_size: int, num_tokens: int, num_classes: int,
               grid: tuple[int, int] | None = None, **overrides: Any) -> GPT:
    """Build the registered architecture ``name`` for a tokenizer (vocab, length, grid) and a class count."""
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown GPT config field(s) {unknown}; known: {sorted(fields)}")
    if vocab_size is None:
        raise ValueError("vocab_size is None: a GPT needs a discrete tokenizer")
    cfg = GPTConfig(**{**AR_MODELS.get(name), "vocab_size": int(vocab_size), "num_tokens": int(num_tokens),
                       "num_classes": int(num_classes), "grid": tuple(grid) if grid is not None else None,
                       **overrides})
    model = GPT(cfg)
    model.registry_name = name
    return model


#: extra keys some GPT checkpoints carry that hold no weights
TOLERATED_EXTRA = ("freqs_cis", "causal_mask", "layers.*.attention.kv_cache.*")


def load_gpt_checkpoint(model: GPT, path: str | Path,
                        containers: tuple[str, ...] = ("ema", "model", "module", "state_dict"), *,
                        weights: str | None = None) -> GPT:
    """Load our own or released (LlamaGen, VFMTok) GPT weights into ``model`` and return it.

    The state dict is the first of ``containers`` present in the file, else the file itself (FSDP consolidated
    files); ``weights="model"`` or ``"ema"`` picks one set explicitly instead. The default prefers ``ema``, which
    suits the project's own training files; for released files use :func:`vfmtok.load_official` with
    ``llamagen_gpt`` / ``vfmtok_gpt``, whose default is what each family's own sampler reads. ``module.`` /
    ``_orig_mod.`` prefixes are stripped; ``freqs_cis`` and KV-cache entries are ignored; anything else missing,
    unexpected or mis-shaped raises :class:`vfmtok.checkpoint.CheckpointKeyError`. The model records the choice in
    ``loaded_weights`` / ``loaded_container`` / ``source_path``. The trainer's step checkpoints hold the EMA state
    (``ema``, or ``ema_state`` in those of earlier versions), whose averaged weights count as ``ema`` weights.
    """
    ckpt = _ema_as_weights(load_checkpoint_file(path))
    selected = select_weights(path, weights, (*containers, ""), family="GPT checkpoint", ckpt=ckpt)
    cleaned = {}
    for key, value in selected.state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        cleaned[key] = value
    load_state_dict_strict(model, cleaned, tolerated_extra=TOLERATED_EXTRA, source=str(path))
    return tag_loaded(model, selected, "gpt")


def _ema_as_weights(ckpt: dict) -> dict:
    """``ckpt`` with a training checkpoint's EMA state (``{"shadow": weights, ...}``) as its ``ema`` weights."""
    for key in ("ema", "ema_state"):
        state = ckpt.get(key)
        if isinstance(state, dict) and isinstance(state.get("shadow"), dict):
            return {**ckpt, "ema": state["shadow"]}
    return ckpt
