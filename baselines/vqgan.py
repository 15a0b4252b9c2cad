"""taming-transformers VQGAN (un-normalised 256-dim codebook, legacy beta), with the official ``*.ckpt`` loader."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from baselines.grid_vq import GridVQTokenizer
from vfmtok.checkpoint import (
    OFFICIAL_LOADERS,
    CheckpointKeyError,
    check_family,
    load_checkpoint_file,
    load_state_dict_strict,
    select_weights,
    tag_loaded,
)
from vfmtok.factory import create_tokenizer, register_tokenizer

#: the ImageNet f16 configuration of the released models (spec: vqgan_imagenet_f16_*.yaml)
F16 = {"image_size": 256, "embed_dim": 256, "l2_norm": False, "legacy_beta": True, "z_channels": 256, "ch": 128,
       "ch_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2}
_MID = {"block_1": "0", "attn_1": "1", "block_2": "2"}


@register_tokenizer("vqgan_f16_k1024", released="vqgan")
def vqgan_f16_k1024(**overrides: Any) -> GridVQTokenizer:
    """taming VQGAN ImageNet f16, K=1024."""
    return GridVQTokenizer(**{**F16, "codebook_size": 1024, **overrides})


@register_tokenizer("vqgan_f16_k16384", released="vqgan")
def vqgan_f16_k16384(**overrides: Any) -> GridVQTokenizer:
    """taming VQGAN ImageNet f16, K=16384."""
    return GridVQTokenizer(**{**F16, "codebook_size": 16384, **overrides})


@register_tokenizer("vqgan_f4_k1024_cifar")
def vqgan_f4_k1024_cifar(**overrides: Any) -> GridVQTokenizer:
    """Small CIFAR-10 configuration: 32 px -> 8x8 = 64 tokens, K=1024, D=64, widths 64/128/256."""
    return GridVQTokenizer(**{"image_size": 32, "codebook_size": 1024, "embed_dim": 64, "l2_norm": False,
                              "legacy_beta": True, "ch": 64, "ch_mult": (1, 2, 4), "num_res_blocks": 1,
                              "z_channels": 128, **overrides})


@register_tokenizer("test_vqgan")
def test_vqgan(**overrides: Any) -> GridVQTokenizer:
    """Tiny variant for tests: 16 px -> 4x4 tokens, K=64, D=8."""
    return GridVQTokenizer(**{"image_size": 16, "codebook_size": 64, "embed_dim": 8, "l2_norm": False,
                              "legacy_beta": True, "ch": 16, "ch_mult": (1, 2, 2), "num_res_blocks": 1,
                              "z_channels": 16, "norm_groups": 8, **overrides})


def taming_to_ours(key: str, num_levels: int = 5) -> str:
    """Map a taming state-dict key onto our module names (identity for names that are already equal)."""
    key = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", key)
    key = re.sub(r"^encoder\.down\.(\d+)\.", r"encoder.conv_blocks.\1.", key)
    m = re.match(r"^decoder\.up\.(\d+)\.(block|attn|upsample)(.*)$", key)
    if m:
        part = "res" if m.group(2) == "block" else m.group(2)
        key = f"decoder.conv_blocks.{num_levels - 1 - int(m.group(1))}.{part}{m.group(3)}"
    return re.sub(r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.", lambda g: f"{g[1]}.mid.{_MID[g[2]]}.", key)


def ours_to_taming(key: str, num_levels: int = 5) -> str:
    """Inverse of :func:`taming_to_ours` (used to write checkpoints in the official layout)."""
    inverse_mid = {v: k for k, v in _MID.items()}
    key = re.sub(r"^(encoder|decoder)\.mid\.(\d)\.", lambda g: f"{g[1]}.mid.{inverse_mid[g[2]]}.", key)
    key = re.sub(r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"^encoder\.conv_blocks\.(\d+)\.", r"encoder.down.\1.", key)
    m = re.match(r"^decoder\.conv_blocks\.(\d+)\.(res|attn|upsample)(.*)$", key)
    if m:
        part = "block" if m.group(2) == "res" else m.group(2)
        key = f"decoder.up.{num_levels - 1 - int(m.group(1))}.{part}{m.group(3)}"
    return key


def load_vqgan(path: str | Path, name: str | None = None, *, weights: str | None = None,
               **overrides: Any) -> GridVQTokenizer:
    """Load a released taming VQGAN Lightning checkpoint (weights under ``state_dict``; ``loss.*`` dropped).

    taming keeps no EMA: ``weights`` may be None or ``"model"`` (both read ``state_dict``, as taming's
    ``init_from_ckpt``); ``"ema"`` is an error. ``name`` defaults to ``vqgan_f16_k1024`` or ``vqgan_f16_k16384``
    from the codebook shape; ``overrides`` go to the registry entry. The tokenizer records its source in
    ``loaded_weights``, ``source_path`` and ``checkpoint_record``.
    """
    ckpt = load_checkpoint_file(path)
    check_family(ckpt, "vqgan", path)
    if weights == "ema":
        raise CheckpointKeyError(f"{path}: taming VQGAN checkpoints hold no EMA weights (top-level keys: "
                                 f"{list(ckpt)}); use weights='model' or None")
    if weights not in (None, "model"):
        raise ValueError(f"weights must be 'model' or None for a taming VQGAN, got {weights!r}")
    selected = select_weights(path, None, ("state_dict",), family="vqgan", ckpt=ckpt)
    raw = selected.state
    if name is None:
        codes = raw.get("quantize.embedding.weight")
        if codes is None:
            raise CheckpointKeyError(f"{path}: no 'quantize.embedding.weight' in the checkpoint; not a taming VQGAN "
                                     f"state dict (first keys: {list(raw)[:5]})")
        name = {1024: "vqgan_f16_k1024", 16384: "vqgan_f16_k16384"}.get(codes.shape[0])
        if name is None:
            raise ValueError(f"{path}: a codebook of {codes.shape[0]} codes matches no released VQGAN (1024, 16384); "
                             f"pass name= for another configuration")
    model = create_tokenizer(name, **overrides)
    levels = len(model.decoder.conv_blocks)
    state = {taming_to_ours(k, levels): v for k, v in raw.items() if not k.startswith("loss.")}
    try:
        load_state_dict_strict(model, state, source=str(path))
    except CheckpointKeyError as err:
        missing = [ours_to_taming(k, levels) for k in model.state_dict() if k not in state]
        hint = f"\n  missing, in taming names: {', '.join(missing[:20])}" if missing else ""
        raise CheckpointKeyError(f"{err}{hint}\n  (key names above are after the taming -> vfmtok remap)") from None
    return tag_loaded(model.eval(), selected, "vqgan")


OFFICIAL_LOADERS.register("vqgan", load_vqgan)
