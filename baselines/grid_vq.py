"""Grid VQ tokenizer shared by taming VQGAN and LlamaGen VQ.

conv encoder -> ``quant_conv`` (1x1) -> vector quantizer -> ``post_quant_conv`` (1x1) -> conv decoder.
Tokens are the cells of the latent grid in raster (row-major) order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.interface import Decoded, Encoded, Tokenizer, TokenizerOutput
from vfmtok.models.conv import ConvDecoder, ConvEncoder
from vfmtok.quantizers.vq import VectorQuantizer


class GridVQTokenizer(Tokenizer):
    """A convolutional VQ tokenizer with a (image_size / 2^(L-1))^2 token grid.

    Args:
        image_size: side of the (square) input images.
        codebook_size, embed_dim: codebook K x D.
        l2_norm: l2-normalised codes and latents (LlamaGen) or raw (taming).
        legacy_beta: taming's beta placement on the codebook term.
        ch, ch_mult, num_res_blocks, z_channels: conv encoder/decoder widths and depth.
        attn_levels: resolution levels with attention in both encoder and decoder (0 = full resolution; ``None``
            = the lowest-resolution level only), see :mod:`vfmtok.models.conv`.
        usage_buffer: length of the official ``codebook_used`` buffer (0 = none).
        norm_groups: GroupNorm groups (32 in the released models).
    """

    def __init__(self, image_size: int = 256, codebook_size: int = 16384, embed_dim: int = 8, *,
                 l2_norm: bool = True, legacy_beta: bool = False, beta: float = 0.25, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 256,
                 attn_levels: Sequence[int] | None = None, usage_buffer: int = 0, norm_groups: int = 32,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.down = 2 ** (len(ch_mult) - 1)
        if image_size < self.down or image_size % self.down:
            raise ValueError(f"image_size {image_size} is not a positive multiple of the downsampling factor "
                             f"{self.down} (ch_mult {tuple(ch_mult)})")
        self.image_size, self.embed_dim, self.codebook_size = image_size, embed_dim, codebook_size
        self.encoder = ConvEncoder(3, ch, ch_mult, num_res_blocks, z_channels, attn_levels, dropout, norm_groups)
        self.decoder = ConvDecoder(z_channels, ch, ch_mult, num_res_blocks, 3, attn_levels, True, dropout,
                                   norm_groups)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.quantize = VectorQuantizer(codebook_size, embed_dim, l2_norm=l2_norm, beta=beta,
                                        legacy_beta=legacy_beta, usage_buffer=usage_buffer)

    @property
    def grid(self) -> int:
        """Side of the token grid."""
        return self.image_size // self.down

    def describe(self) -> dict[str, Any]:
        """Spec facts."""
        g = self.grid
        return {"image_size": self.image_size, "num_tokens": g * g, "latent_dim": self.embed_dim,
                "codebook_size": self.codebook_size, "token_grid": (g, g), "encoder": None}

    def adaptive_weight_layer(self) -> torch.Tensor:
        """The conv decoder's last weight."""
        return self.decoder.last_layer

    def codebook(self) -> torch.Tensor:
        """float [K, D] codes as the decoder sees them."""
        return self.quantize.codes()

    def _pre_quant(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected images [B, 3, {self.image_size}, {self.image_size}], got {tuple(x.shape)}")
        z = self.quant_conv(self.encoder(x))  # [B, D, g, g]
        return z.flatten(2).transpose(1, 2)  # [B, g*g, D], raster order

    def encode(self, x: torch.Tensor) -> Encoded:
        """float [B,3,H,W] -> indices [B, g*g] (raster order) and their codebook rows [B, g*g, D]."""
        pre = self._pre_quant(x)  # [B, L, D]
        z = F.normalize(pre.float(), dim=-1) if self.quantize.l2_norm else pre.float()
        indices = self.quantize.nearest(z.flatten(0, 1)).view(pre.shape[:2])  # [B, L]; no loss, no usage update
        return Encoded(indices=indices, latents=self.quantize.lookup(indices), aux={"pre_quant": pre})

    def decode(self, latents: torch.Tensor) -> Decoded:
        """float [B, g*g, D] -> image [B, 3, H, W]."""
        g = self.grid
        if latents.dim() != 3 or latents.shape[1:] != (g * g, self.embed_dim):
            raise ValueError(f"expected latents [B, {g * g}, {self.embed_dim}], got {tuple(latents.shape)}")
        b, _, d = latents.shape
        z = latents.transpose(1, 2).reshape(b, d, g, g)  # [B, D, g, g]
        return Decoded(image=self.decoder(self.post_quant_conv(z)))

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        """Training path: reconstruction plus the codebook and commitment terms."""
        q = self.quantize(self._pre_quant(x))
        recon = self.decode(q.quantized).image
        return TokenizerOutput(recon=recon, indices=q.indices, losses=dict(q.losses))
