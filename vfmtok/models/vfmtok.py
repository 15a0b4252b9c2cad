"""VFMTok: a tokenizer on a frozen vision foundation model, in discrete (VQ) and continuous form.

Frozen encoder levels -> region-adaptive encoder (``encode_transformer``) -> bottleneck -> ViT decoder
(``decode_transformer``) -> conv pixel decoder (``decoder``). Training adds the semantic branch: the same ViT
decoder predicts the encoder's last-level features, scored by cosine distance (``losses["semantic"]``).
Module and parameter names equal the official release's, so its checkpoint loads directly (the frozen
encoder lives outside those names and is never saved).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.checkpoint import (
    OFFICIAL_LOADERS,
    check_family,
    load_checkpoint_file,
    load_state_dict_strict,
    select_weights,
    tag_loaded,
)
from vfmtok.encoders import FeatureOutput, FrozenEncoder, create_encoder
from vfmtok.factory import create_tokenizer, register_tokenizer
from vfmtok.interface import Decoded, Encoded, Tokenizer, TokenizerOutput, TokenLayout
from vfmtok.losses.semantic import cosine_feature_loss
from vfmtok.models.conv import ConvDecoder
from vfmtok.models.region_encoder import RegionEncoder
from vfmtok.models.vit_decoder import ViTDecoder
from vfmtok.quantizers.vq import VectorQuantizer

Features = FeatureOutput | Sequence[torch.Tensor]
Bottleneck = tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]


def _gaussian_blur_axis(x: torch.Tensor, dim: int, size: int, sigma: float) -> torch.Tensor:
    """Normalised Gaussian of ``size`` taps (odd) along ``dim`` (-2 or -1) of x [B, C, H, W], reflect borders."""
    if size <= 1:
        return x
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    taps = torch.exp(-offsets.square() / (2.0 * sigma**2))
    taps = (taps / taps.sum()).to(dtype=x.dtype, device=x.device)
    c, half = x.shape[1], size // 2
    if dim == -2:
        x = F.pad(x, (0, 0, half, half), mode="reflect")
        weight = taps.view(1, 1, size, 1).expand(c, 1, size, 1)
    else:
        x = F.pad(x, (half, half, 0, 0), mode="reflect")
        weight = taps.view(1, 1, 1, size).expand(c, 1, 1, size)
    return F.conv2d(x, weight, groups=c)


def official_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize float [B, C, H, W] to ``size`` as the official VFMTok preprocessing (kornia ``resize``).

    Bicubic with ``align_corners=True``; with anti-aliasing when shrinking: along each axis a Gaussian blur of
    sigma = max((factor - 1) / 2, 0.001), factor = input / output side, over the odd number of taps nearest
    above max(4 sigma, 3) (one tap on a singleton axis), reflect borders, before the interpolation. Images
    already at ``size`` are returned as they are.
    """
    h, w = x.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return x
    factors = (h / size[0], w / size[1])
    if max(factors) > 1:  # anti-alias only when some axis shrinks
        for dim, factor, side in ((-2, factors[0], h), (-1, factors[1], w)):
            sigma = max((factor - 1.0) / 2.0, 0.001)
            taps = int(max(4.0 * sigma, 3))
            taps = 1 if side == 1 else taps if taps % 2 else taps + 1
            x = _gaussian_blur_axis(x, dim, taps, sigma)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


class VFMTokBase(Tokenizer):
    """Everything but the bottleneck: frozen encoder, region encoder, ViT decoder, conv decoder, semantic loss.

    Args:
        image_size: input and output image side.
        encoder: frozen encoder name (see ``vfmtok.encoders.list_encoders``).
        encoder_pretrained: ``True`` (pretrained weights), a local weights file, or ``False`` (random weights).
        encoder_input_size: side images are resized to for the encoder (``None``: the encoder's default).
        encoder_levels: which encoder levels to use (``None``: the encoder's default).
        encoder_seed: seed of the encoder's random weights when ``encoder_pretrained=False``.
        num_queries: region tokens (a perfect square: they are anchored on a g x g grid).
        dim: width of region tokens and of the ViT decoder.
        enc_depth, enc_heads, enc_points, enc_ffn_dim: deformable encoder layers.
        dec_depth, dec_heads, dec_mlp_dim, dec_registers, dec_dropout: ViT decoder.
        mask_grid: side of the ViT decoder's pixel grid; the conv decoder upsamples it to ``image_size``.
        pix_ch, pix_ch_mult, pix_num_res_blocks: conv decoder.
        causal: causal attention in the region encoder and the ViT decoder (official).
        semantic: compute the semantic loss in training.
    """

    frozen_modules = ("encoder",)
    accepts_any_size = True  # resized inside features(), as the official model does
    #: parameters no loss reaches: decoder registers come last under the causal mask
    no_grad_params: tuple[str, ...] = ("decode_transformer.register_tokens",)

    def __init__(self, image_size: int = 336, encoder: str = "dinov2_vitl14_reg4",
                 encoder_pretrained: bool | str = True, encoder_input_size: int | None = None,
                 encoder_levels: Sequence[Any] | None = None, encoder_seed: int = 0, num_queries: int = 256,
                 dim: int = 512, enc_depth: int = 6, enc_heads: int = 8, enc_points: int = 4, enc_ffn_dim: int = 1024,
                 dec_depth: int = 6, dec_heads: int = 8, dec_mlp_dim: int = 2048, dec_registers: int = 4,
                 dec_dropout: float = 0.1, mask_grid: int = 21, pix_ch: int = 128,
                 pix_ch_mult: Sequence[int] = (1, 1, 2, 2, 4), pix_num_res_blocks: int = 1, causal: bool = True,
                 semantic: bool = True) -> None:
        super().__init__()
        up = 2 ** (len(pix_ch_mult) - 1)
        if mask_grid * up != image_size:
            raise ValueError(f"mask_grid {mask_grid} x {up} (conv decoder upsampling) != image_size {image_size}")
        self.image_size, self.encoder_name, self.semantic = image_size, encoder, semantic
        self.encoder = create_encoder(encoder, seed=encoder_seed, pretrained=encoder_pretrained,
                                      input_size=encoder_input_size,
                                      levels=None if encoder_levels is None else tuple(encoder_levels))
        self.encode_transformer = RegionEncoder(self.encoder.level_channels, dim=dim, num_queries=num_queries,
                                                depth=enc_depth, n_heads=enc_heads, n_points=enc_points,
                                                ffn_dim=enc_ffn_dim, causal=causal)
        self.query_grid = (self.encode_transformer.side, self.encode_transformer.side)
        self._build_bottleneck(dim)
        self.decode_transformer = ViTDecoder(dim, dec_depth, dec_heads, dec_mlp_dim, num_queries=num_queries,
                                             semantic_grid=self.encoder.semantic_grid, mask_grid=mask_grid,
                                             semantic_dim=self.encoder.semantic_dim, num_registers=dec_registers,
                                             dropout=dec_dropout, causal=causal)
        # no attention in the up-path (official); num_res_blocks=1 gives 2 residual blocks per level
        self.decoder = ConvDecoder(z_channels=dim, ch=pix_ch, ch_mult=tuple(pix_ch_mult),
                                   num_res_blocks=pix_num_res_blocks, attn_levels=())
        if not semantic:
            self.no_grad_params = (*type(self).no_grad_params, "decode_transformer.mask_dino",
                                   "decode_transformer.norm_post2.weight", "decode_transformer.norm_post2.bias",
                                   "decode_transformer.proj.weight", "decode_transformer.proj.bias")
        self.freeze_frozen_modules()

    # ----------------------------------------------------------------- bottleneck (subclasses)
    def _build_bottleneck(self, dim: int) -> None:
        raise NotImplementedError

    def _bottleneck(self, z: torch.Tensor, exact: bool = False) -> Bottleneck:
        """Pre-quant tokens [B, L, D'] -> (latents [B, L, D], indices [B, L] | None, losses).

        ``exact``: inference values (codebook rows, posterior means) instead of training ones
        (straight-through values, posterior samples) and no loss terms.
        """
        raise NotImplementedError

    # ----------------------------------------------------------------- pieces
    def features(self, x: torch.Tensor, features: Features | None = None) -> FeatureOutput:
        """Encoder features of ``x`` [B, 3, H, W] in [-1, 1], any H and W, or the given precomputed ones.

        Images of another size than ``image_size`` are first resized to it as the official model does
        (:func:`official_resize`); at ``image_size`` they go to the encoder untouched.
        """
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 2:
            raise ValueError(f"{self.registry_name} expects images [B, 3, H, W] in [-1, 1] (resized to "
                             f"{self.image_size} x {self.image_size}), got {tuple(x.shape)}")
        if features is None:
            return self.encoder(official_resize(x, (self.image_size, self.image_size)))
        levels = list(features.levels if isinstance(features, FeatureOutput) else features)
        want = [(x.shape[0], c, *hw) for c, hw in zip(self.encoder.level_channels, self.encoder.level_sizes)]
        got = [tuple(t.shape) for t in levels]
        if got != want:
            raise ValueError(f"precomputed features of shapes {got} do not match encoder {self.encoder_name} "
                             f"(expected {want})")
        return FeatureOutput(levels=[t.to(device=x.device, dtype=torch.float32) for t in levels])

    def _region_tokens(self, x: torch.Tensor, features: Features | None) -> tuple[torch.Tensor, FeatureOutput]:
        feats = self.features(x, features)
        return self.encode_transformer(feats.levels), feats

    def _memory(self, latents: torch.Tensor) -> torch.Tensor:
        d = self.describe()
        if latents.dim() != 3 or latents.shape[1:] != (d["num_tokens"], d["latent_dim"]):
            raise ValueError(f"expected latents [B, {d['num_tokens']}, {d['latent_dim']}], "
                             f"got {tuple(latents.shape)}")
        return self.post_slots_quant(latents)  # [B, L, dim]

    # ----------------------------------------------------------------- Tokenizer API
    def encode(self, x: torch.Tensor, features: Features | None = None) -> Encoded:
        """Images float [B, 3, H, W] in [-1, 1], any size (or their precomputed ``features``) -> indices, latents."""
        z, _ = self._region_tokens(x, features)
        pre = self.pre_slots_quant(z)  # [B, L, D or 2D]
        latents, indices, _ = self._bottleneck(pre, exact=True)
        return Encoded(indices=indices, latents=latents, aux={"pre_quant": pre})

    def decode(self, latents: torch.Tensor) -> Decoded:
        """Latents float [B, L, D] -> images float [B, 3, H, W]."""
        pix = self.decode_transformer.pixel_features(self._memory(latents))  # [B, dim, m, m]
        return Decoded(image=self.decoder(pix))

    def forward(self, x: torch.Tensor, features: Features | None = None) -> TokenizerOutput:
        """Training path: reconstruction, indices and the bottleneck + semantic loss terms (unweighted)."""
        z, feats = self._region_tokens(x, features)
        latents, indices, losses = self._bottleneck(self.pre_slots_quant(z), exact=not self.training)
        memory = self._memory(latents)
        recon = self.decoder(self.decode_transformer.pixel_features(memory))
        if self.training and self.semantic:
            pred = self.decode_transformer.semantic_features(memory)
            losses["semantic"] = cosine_feature_loss(pred, feats.semantic_target)
        logs = {k: float(v.detach()) for k, v in losses.items()}
        return TokenizerOutput(recon=recon, indices=indices, losses=losses, logs=logs)


    @property
    def frozen_encoder(self) -> FrozenEncoder:
        """The frozen vision foundation model (multi-level features and the semantic target)."""
        return self.encoder

    def token_layout(self) -> TokenLayout:
        """Region-adaptive query tokens, laid out on a square grid for the GPT's 2-D positions."""
        return TokenLayout("query", self.query_grid)

    def adaptive_weight_layer(self) -> torch.Tensor:
        """The pixel decoder's last conv weight."""
        return self.decoder.last_layer

    @torch.no_grad()
    def semantic_eval_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic-branch cosine loss on ``x`` with inference latents (how well tokens keep encoder semantics)."""
        z, feats = self._region_tokens(x, None)
        latents, _, _ = self._bottleneck(self.pre_slots_quant(z), exact=True)
        pred = self.decode_transformer.semantic_features(self._memory(latents))
        return cosine_feature_loss(pred, feats.semantic_target)

    def extra_metrics(self, x: torch.Tensor) -> dict[str, float]:
        """``semantic_loss``: :meth:`semantic_eval_loss` on ``x``."""
        return {"semantic_loss": float(self.semantic_eval_loss(x))}


class VFMTok(VFMTokBase):
    """Discrete VFMTok: Linear dim -> code_dim, l2-normalised VQ, Linear code_dim -> dim.

    Args:
        codebook_size: number of codes K.
        code_dim: code dimension.
        entropy_weight: weight of the quantizer's anti-collapse entropy term (0, as the official recipe).
        **kwargs: see :class:`VFMTokBase`.
    """

    def __init__(self, codebook_size: int = 16384, code_dim: int = 12, entropy_weight: float = 0.0,
                 **kwargs: Any) -> None:
        self.codebook_size, self.code_dim, self.entropy_weight = codebook_size, code_dim, entropy_weight
        super().__init__(**kwargs)

    def _build_bottleneck(self, dim: int) -> None:
        self.pre_slots_quant = nn.Linear(dim, self.code_dim)
        self.slot_quantize = VectorQuantizer(self.codebook_size, self.code_dim, l2_norm=True, beta=0.25,
                                             usage_buffer=65536, entropy_weight=self.entropy_weight)
        self.post_slots_quant = nn.Linear(self.code_dim, dim)

    def _bottleneck(self, z: torch.Tensor, exact: bool = False) -> Bottleneck:
        q = self.slot_quantize(z)
        # exact: the codebook rows themselves (inference); else straight-through values (training)
        latents = self.slot_quantize.lookup(q.indices) if exact else q.quantized
        return latents, q.indices, dict(q.losses)

    def codebook(self) -> torch.Tensor:
        """float [K, code_dim]: the l2-normalised codes."""
        return self.slot_quantize.codes()

    def describe(self) -> dict[str, Any]:
        """Spec facts: tokens in region-query order (row-major over the query grid), no token grid."""
        return {"image_size": self.image_size, "num_tokens": self.encode_transformer.num_queries,
                "latent_dim": self.code_dim, "codebook_size": self.codebook_size, "token_grid": None,
                "encoder": self.encoder_name}


class VFMTokContinuous(VFMTokBase):
    """Continuous VFMTok: Linear dim -> latent_dim (mean, and log-variance when variational), Linear back.

    Args:
        latent_dim: continuous latent width per region token.
        variational: sample latents in training and return ``losses["kl"]`` (KL to N(0, I), mean per element);
            the trainer applies its weight. Eval and ``encode`` use the mean.
        **kwargs: see :class:`VFMTokBase`.
    """

    def __init__(self, latent_dim: int = 32, variational: bool = False, **kwargs: Any) -> None:
        self.latent_dim, self.variational = latent_dim, variational
        super().__init__(**kwargs)

    def _build_bottleneck(self, dim: int) -> None:
        self.pre_slots_quant = nn.Linear(dim, self.latent_dim * (2 if self.variational else 1))
        self.post_slots_quant = nn.Linear(self.latent_dim, dim)

    def _bottleneck(self, z: torch.Tensor, exact: bool = False) -> Bottleneck:
        if not self.variational:
            return z, None, {}
        mean, logvar = z.chunk(2, dim=-1)
        logvar = logvar.clamp(-30.0, 20.0)
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        latents = mean if exact else mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        return latents, None, ({} if exact else {"kl": kl})

    def describe(self) -> dict[str, Any]:
        """Spec facts: continuous latents in region-query order."""
        return {"image_size": self.image_size, "num_tokens": self.encode_transformer.num_queries,
                "latent_dim": self.latent_dim, "codebook_size": None, "token_grid": None,
                "encoder": self.encoder_name}


# ----------------------------------------------------------------------------- registry entries
#: the paper model: DINOv2-L/14 reg4 at 336 px, levels 6/12/18/24, 256 queries, 21 x 21 mask grid
PAPER: dict[str, Any] = {
    "image_size": 336, "encoder": "dinov2_vitl14_reg4", "encoder_input_size": 336,
    "encoder_levels": (5, 11, 17, 23), "num_queries": 256, "dim": 512, "enc_depth": 6, "enc_heads": 8,
    "enc_points": 4, "enc_ffn_dim": 1024, "dec_depth": 6, "dec_heads": 8, "dec_mlp_dim": 2048,
    "dec_registers": 4, "dec_dropout": 0.1, "mask_grid": 21, "pix_ch": 128, "pix_ch_mult": (1, 1, 2, 2, 4),
    "pix_num_res_blocks": 1,
}
#: CIFAR-10 scale (32 px) on the offline FID Inception: 64 region tokens (8 x 8), a narrow decoder. The
#: images are upsampled to 139 px for the encoder (levels 15x15, 7x7, 3x3): about 7x cheaper than 299 px
#: (35x35, 17x17, 8x8; ``encoder_input_size=299``), with a 6x smaller feature cache. Widths are chosen so a
#: training step stays affordable on a CPU; attention dropout is off (it forces the slow attention path).
CIFAR_INCEPTION: dict[str, Any] = {
    "image_size": 32, "encoder": "inception_v3_fid", "encoder_input_size": 139, "num_queries": 64, "dim": 192,
    "enc_depth": 3, "enc_heads": 6, "enc_points": 4, "enc_ffn_dim": 384, "dec_depth": 3, "dec_heads": 6,
    "dec_mlp_dim": 768, "dec_registers": 4, "dec_dropout": 0.0, "mask_grid": 8, "pix_ch": 32,
    "pix_ch_mult": (1, 2, 4), "pix_num_res_blocks": 1,
}
#: tiny and fast, on a random tiny ViT: for tests
TEST: dict[str, Any] = {
    "image_size": 32, "encoder": "test_vit_tiny", "encoder_pretrained": False, "num_queries": 16, "dim": 32,
    "enc_depth": 2, "enc_heads": 2, "enc_points": 2, "enc_ffn_dim": 64, "dec_depth": 2, "dec_heads": 2,
    "dec_mlp_dim": 64, "dec_registers": 2, "dec_dropout": 0.0, "mask_grid": 8, "pix_ch": 32,
    "pix_ch_mult": (1, 1, 2), "pix_num_res_blocks": 1,
}


@register_tokenizer("vfmtok_dinov2_vitl14reg_l256_k16384", released="vfmtok")
def vfmtok_dinov2_vitl14reg_l256_k16384(**overrides: Any) -> VFMTok:
    """The paper tokenizer (73.3 M trainable). ``encoder_pretrained=False`` builds a random backbone."""
    return VFMTok(**{**PAPER, "codebook_size": 16384, "code_dim": 12, **overrides})


@register_tokenizer("vfmtok_dinov2_vitl14reg_l256_c32", released="vfmtok")
def vfmtok_dinov2_vitl14reg_l256_c32(**overrides: Any) -> VFMTokContinuous:
    """The paper architecture with a continuous 256 x 32 latent instead of the quantizer."""
    return VFMTokContinuous(**{**PAPER, "latent_dim": 32, **overrides})


@register_tokenizer("vfmtok_inception_l64_k4096")
def vfmtok_inception_l64_k4096(**overrides: Any) -> VFMTok:
    """CIFAR-10 (32 px) preset on the offline FID Inception-v3: 64 tokens, 4096 x 12 codebook.

    Unlike the paper recipe it adds the quantizer's entropy term (weight 0.1): at CPU budgets the codebook
    otherwise collapses to a handful of codes before the decoder learns to read the region tokens (measured on
    1,000 CIFAR-10 images, 400 steps of 16 at lr 3e-4: 11 codes used and 12.6 dB without it, 3,703 and 15.3 dB
    with it).
    """
    return VFMTok(**{**CIFAR_INCEPTION, "codebook_size": 4096, "code_dim": 12, "entropy_weight": 0.1, **overrides})


@register_tokenizer("vfmtok_inception_l64_c8")
def vfmtok_inception_l64_c8(**overrides: Any) -> VFMTokContinuous:
    """Continuous counterpart of ``vfmtok_inception_l64_k4096``: 64 x 8 latents."""
    return VFMTokContinuous(**{**CIFAR_INCEPTION, "latent_dim": 8, **overrides})


@register_tokenizer("test_vfmtok")
def test_vfmtok(**overrides: Any) -> VFMTok:
    """Tiny discrete VFMTok for tests: 32 px, 16 tokens, 64 codes."""
    return VFMTok(**{**TEST, "codebook_size": 64, "code_dim": 8, **overrides})


@register_tokenizer("test_vfmtok_continuous")
def test_vfmtok_continuous(**overrides: Any) -> VFMTokContinuous:
    """Tiny continuous (variational) VFMTok for tests: 32 px, 16 x 4 latents."""
    return VFMTokContinuous(**{**TEST, "latent_dim": 4, "variational": True, **overrides})


# ----------------------------------------------------------------------------- official checkpoint
OFFICIAL_TOLERATED_EXTRA = ("encode_transformer.backbone.*",)  # backbone weights, if a file carries them


#: containers VFMTok's tokenizer evaluation (vqgan_test.py) reads, in order; train_c2i.py / test_net.py read "ema"
VFMTOK_DEFAULT_CONTAINERS = ("ema", "model", "state_dict")


def load_official_vfmtok(path: str | Path, name: str = "vfmtok_dinov2_vitl14reg_l256_k16384", *,
                         weights: str | None = None, **overrides: Any) -> VFMTok:
    """Load the released ``vfmtok-tokenizer.pt``.

    ``weights=None`` reads ``ema`` (then ``model``, ``state_dict``), as VFMTok's own scripts; ``"model"`` /
    ``"ema"`` choose explicitly. The file holds no backbone weights: the frozen DINOv2 comes from
    ``encoder_pretrained`` -- Meta's ``dinov2_vitl14_reg4_pretrain.pth`` as a local file
    (``encoder_pretrained="/path/to/dinov2_vitl14_reg4_pretrain.pth"``), ``True`` for timm's hub weights, or
    ``False`` for random weights. ``slot_quantize.codebook_used`` may be present or absent. The tokenizer records
    its source in ``loaded_weights``, ``source_path`` and ``checkpoint_record``.
    """
    ckpt = load_checkpoint_file(path)
    check_family(ckpt, "vfmtok", path)
    selected = select_weights(path, weights, VFMTOK_DEFAULT_CONTAINERS, family="vfmtok", ckpt=ckpt)
    del ckpt
    model = create_tokenizer(name, **overrides)
    load_state_dict_strict(
        model, selected.state, tolerated_extra=OFFICIAL_TOLERATED_EXTRA, source=str(path),
        ignore_missing=lambda k: model._is_frozen_key(k) or k == "slot_quantize.codebook_used",
    )
    return tag_loaded(model.eval(), selected, "vfmtok")


OFFICIAL_LOADERS.register("vfmtok", load_official_vfmtok)
