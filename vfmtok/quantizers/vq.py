"""Vector quantization: nearest-code lookup with straight-through gradients.

Covers both conventions the compared tokenizers use:

* LlamaGen VQ / VFMTok: codes and inputs are l2-normalised at use time (``l2_norm=True``);
  ``codebook = mse(z_q, sg z)``, ``commit = beta * mse(sg z_q, z)``.
* taming VQGAN: no normalisation, and the legacy beta placement (``legacy_beta=True``):
  ``codebook = beta * mse(z_q, sg z)``, ``commit = mse(sg z_q, z)``.

Optionally (``entropy_weight > 0``; 0 in every official recipe) LlamaGen's entropy term
``H(mean_i p_i)`` subtracted from ``mean_i H(p_i)``, with ``p_i = softmax(-||z_i - e_k||^2 / T)``: confident
assignments that spread over the codebook, against codebook collapse in short runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class QuantizerOutput:
    """Result of :meth:`VectorQuantizer.forward`."""

    quantized: torch.Tensor  # float [B, L, D], straight-through in training
    indices: torch.Tensor  # int64 [B, L]
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # "codebook", "commit" (already beta-weighted)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer over ``num_codes`` learnable codes of dimension ``dim``.

    Args:
        num_codes: codebook size K.
        dim: code dimension D.
        l2_norm: normalise inputs and codes before the lookup (the stored rows are normalised on use).
        beta: commitment weight.
        legacy_beta: taming's placement of ``beta`` on the codebook term instead of the commitment term.
        usage_buffer: length of the ``codebook_used`` FIFO of recent indices kept by the official LlamaGen and
            VFMTok modules (0 = none). It exists for checkpoint parity; metrics never read it.
        entropy_weight: weight of the entropy term (``losses["entropy"]``; 0 = off, the official setting).
        entropy_temperature: its softmax temperature on squared distances (LlamaGen: 0.01).
    """

    def __init__(self, num_codes: int, dim: int, *, l2_norm: bool = True, beta: float = 0.25,
                 legacy_beta: bool = False, usage_buffer: int = 0, entropy_weight: float = 0.0,
                 entropy_temperature: float = 0.01) -> None:
        super().__init__()
        self.num_codes, self.dim, self.l2_norm = num_codes, dim, l2_norm
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.beta, self.legacy_beta = beta, legacy_beta
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)
        if l2_norm:
            with torch.no_grad():
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        if usage_buffer:
            self.register_buffer("codebook_used", torch.zeros(usage_buffer))

    def codes(self) -> torch.Tensor:
        """float [K, D]: the codes as used for lookup and decoding."""
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """int64 [...] -> float [..., D]."""
        return F.embedding(indices, self.codes())

    @torch.no_grad()
    def nearest(self, z: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """float [N, D] (already normalised if l2_norm) -> int64 [N] index of the nearest code."""
        codes = self.codes()
        sq_codes = codes.pow(2).sum(-1)  # [K]
        out = []
        for part in z.split(chunk):
            dist = part.pow(2).sum(-1, keepdim=True) + sq_codes - 2.0 * part @ codes.t()  # [n, K]
            out.append(dist.argmin(-1))
        return torch.cat(out)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize float [B, L, D] latents."""
        if z.dim() != 3 or z.shape[-1] != self.dim:
            raise ValueError(f"expected latents [B, L, {self.dim}], got {tuple(z.shape)}")
        z = z.float()
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        b, n, d = z.shape
        indices = self.nearest(z.reshape(b * n, d)).view(b, n)  # [B, L]
        z_q = self.lookup(indices)  # [B, L, D]
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            codebook_term = F.mse_loss(z_q, z.detach())
            commit_term = F.mse_loss(z_q.detach(), z)
            if self.legacy_beta:
                losses = {"codebook": self.beta * codebook_term, "commit": commit_term}
            else:
                losses = {"codebook": codebook_term, "commit": self.beta * commit_term}
            if self.entropy_weight > 0:
                losses["entropy"] = self.entropy_weight * self._entropy_term(z.reshape(b * n, d))
            self._record_usage(indices)
        z_q = z + (z_q - z).detach()  # straight-through; equals the code exactly in value
        return QuantizerOutput(quantized=z_q, indices=indices, losses=losses)

    def _entropy_term(self, z: torch.Tensor) -> torch.Tensor:
        """mean per-token entropy minus the entropy of the mean assignment, for z float [N, D]."""
        codes = self.codes()
        dist = z.pow(2).sum(-1, keepdim=True) + codes.pow(2).sum(-1) - 2.0 * z @ codes.t()  # [N, K]
        log_p = F.log_softmax(-dist / self.entropy_temperature, dim=-1)
        p = log_p.exp()
        per_token = -(p * log_p).sum(-1).mean()
        mean_p = p.mean(0)
        return per_token + (mean_p * torch.log(mean_p + 1e-8)).sum()

    @torch.no_grad()
    def _record_usage(self, indices: torch.Tensor) -> None:
        buf = getattr(self, "codebook_used", None)
        if buf is None:
            return
        flat = indices.flatten().to(buf.dtype)[-buf.numel():]
        buf.copy_(torch.cat([buf[flat.numel():], flat]))
