"""LlamaGen VQ tokenizers (l2-normalised 8-dim codebook), with the official ``vq_ds*_c2i.pt`` loader."""

from __future__ import annotations

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

#: official configurations (spec: LlamaGen tokenizer_image/vq_model.py factories)
VQ16 = {"ch_mult": (1, 1, 2, 2, 4)}
VQ8 = {"ch_mult": (1, 2, 2, 4)}
OFFICIAL = {"codebook_size": 16384, "embed_dim": 8, "l2_norm": True, "z_channels": 256, "ch": 128,
            "num_res_blocks": 2, "usage_buffer": 65536}
#: the training-time FIFO of recent indices: part of the official state dict, unused at inference
USAGE_KEY = "quantize.codebook_used"


def _make(**kwargs: Any) -> GridVQTokenizer:
    return GridVQTokenizer(**kwargs)


@register_tokenizer("llamagen_vq_f16_k16384", released="llamagen_vq")
def llamagen_vq_f16_k16384(**overrides: Any) -> GridVQTokenizer:
    """LlamaGen VQ-16: 256 px -> 16x16 tokens, K=16384, D=8 (released as ``vq_ds16_c2i.pt``)."""
    return _make(**{"image_size": 256, **OFFICIAL, **VQ16, **overrides})


@register_tokenizer("llamagen_vq_f8_k16384", released="llamagen_vq")
def llamagen_vq_f8_k16384(**overrides: Any) -> GridVQTokenizer:
    """LlamaGen VQ-8: 256 px -> 32x32 tokens (released as ``vq_ds8_c2i.pt``)."""
    return _make(**{"image_size": 256, **OFFICIAL, **VQ8, **overrides})


@register_tokenizer("llamagen_vq_f4_k4096_cifar")
def llamagen_vq_f4_k4096_cifar(**overrides: Any) -> GridVQTokenizer:
    """Small CIFAR-10 configuration: 32 px -> 8x8 = 64 tokens, K=4096, D=8, widths 64/128/256."""
    return _make(**{"image_size": 32, "codebook_size": 4096, "embed_dim": 8, "l2_norm": True, "ch": 64,
                    "ch_mult": (1, 2, 4), "num_res_blocks": 1, "z_channels": 128, **overrides})


@register_tokenizer("test_llamagen_vq")
def test_llamagen_vq(**overrides: Any) -> GridVQTokenizer:
    """Tiny variant for tests: 16 px -> 4x4 tokens, K=64."""
    return _make(**{"image_size": 16, "codebook_size": 64, "embed_dim": 4, "l2_norm": True, "ch": 16,
                    "ch_mult": (1, 2, 2), "num_res_blocks": 1, "z_channels": 16, "norm_groups": 8, **overrides})


def load_llamagen_vq(path: str | Path, name: str | None = None, container: str | None = None, *,
                     weights: str | None = None, **overrides: Any) -> GridVQTokenizer:
    """Load a released LlamaGen tokenizer (``vq_ds16_c2i.pt`` / ``vq_ds8_c2i.pt``).

    ``weights=None`` reads ``model``, as LlamaGen's sampling and code-extraction scripts do (spec 1.7); ``"ema"``
    / ``"model"`` choose explicitly; ``container`` names any top-level key directly. ``name`` defaults to VQ-16
    or VQ-8 from the key layout; ``overrides`` (e.g. ``image_size=384``) go to the registry entry.
    ``quantize.codebook_used`` may be present or absent. The tokenizer records its source in ``loaded_weights``,
    ``source_path`` and ``checkpoint_record``.
    """
    ckpt = load_checkpoint_file(path)
    check_family(ckpt, "llamagen_vq", path)
    if container is not None:
        if weights is not None:
            raise ValueError("pass either container= or weights=, not both")
        selected = select_weights(path, None, (container,), family="llamagen_vq", ckpt=ckpt)
    else:
        selected = select_weights(path, weights, ("model",), family="llamagen_vq", ckpt=ckpt)
    state = selected.state
    if name is None:
        if "encoder.conv_in.weight" not in state:
            raise CheckpointKeyError(f"{path}: 'encoder.conv_in.weight' not found; not a LlamaGen VQ state dict "
                                     f"(first keys: {list(state)[:5]})")
        name = "llamagen_vq_f16_k16384" if "encoder.conv_blocks.4.res.0.conv1.weight" in state else \
            "llamagen_vq_f8_k16384"
    model = create_tokenizer(name, **overrides)
    load_state_dict_strict(model, state, tolerated_extra=[USAGE_KEY], ignore_missing=lambda k: k == USAGE_KEY,
                           source=str(path))
    return tag_loaded(model.eval(), selected, "llamagen_vq")


OFFICIAL_LOADERS.register("llamagen_vq", load_llamagen_vq)
