"""VFMTok: the paper model's official key names, shapes and counts; official-checkpoint loading; model behaviour."""

from __future__ import annotations

import argparse
import gc
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import random_images
from vfmtok import create_tokenizer, load_official
from vfmtok.checkpoint import CheckpointKeyError
from vfmtok.images import to_model_range
from vfmtok.models.vit_decoder import ViTDecoder

PAPER = "vfmtok_dinov2_vitl14reg_l256_k16384"


def _wb(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


def official_keys() -> set[str]:
    """The 430 non-backbone keys of the released checkpoint, written out from the official module tree."""
    keys = ["encode_transformer.carrier_tokens", "encode_transformer.slots_pos",
            *_wb("encode_transformer.norm_pre1")]
    for i in range(4):
        p = f"encode_transformer.projectors.{i}.mlp"
        keys += [f"{p}.0.weight", *_wb(f"{p}.1"), f"{p}.3.weight", *_wb(f"{p}.4")]
        keys += _wb(f"encode_transformer.norm_layers.{i}")
    for i in range(6):
        p = f"encode_transformer.transformer.layers.{i}"
        for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            keys += _wb(f"{p}.cross_attn.{m}")
        for m in ("norm1", "norm2", "norm3", "linear1", "linear2"):
            keys += _wb(f"{p}.{m}")
        for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys += _wb(f"{p}.self_attn.{m}")
    keys += [*_wb("pre_slots_quant"), "slot_quantize.embedding.weight", "slot_quantize.codebook_used",
             *_wb("post_slots_quant")]
    d = "decode_transformer"
    keys += [f"{d}.{n}" for n in ("position_embedding", "slot_position_embedding", "mask_embedding", "mask_dino",
                                  "cls_token", "register_tokens")]
    for i in range(6):
        p = f"{d}.transformer.layers.{i}"
        keys += _wb(f"{p}.norm1") + _wb(f"{p}.norm2") + _wb(f"{p}.ffnet.w12") + _wb(f"{p}.ffnet.w3")
        for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys += _wb(f"{p}.attn1.{m}")
    keys += _wb(f"{d}.norm_post1") + _wb(f"{d}.norm_post2") + _wb(f"{d}.proj")

    def res(p: str, shortcut: bool = False) -> list[str]:
        out = [k for m in ("norm1", "conv1", "norm2", "conv2") for k in _wb(f"{p}.{m}")]
        return out + (_wb(f"{p}.nin_shortcut") if shortcut else [])

    keys += _wb("decoder.conv_in") + res("decoder.mid.0") + res("decoder.mid.2")
    keys += [k for m in ("norm", "q", "k", "v", "proj_out") for k in _wb(f"decoder.mid.1.{m}")]
    for k in range(5):
        for j in range(2):
            keys += res(f"decoder.conv_blocks.{k}.res.{j}", shortcut=(j == 0 and k in (1, 3)))
        if k < 4:
            keys += _wb(f"decoder.conv_blocks.{k}.upsample.conv")
    keys += _wb("decoder.norm_out") + _wb("decoder.conv_out")
    assert len(keys) == len(set(keys)) == 430
    return set(keys)


SHAPES = {
    "encode_transformer.carrier_tokens": (1, 256, 512),
    "encode_transformer.projectors.0.mlp.0.weight": (512, 1024),
    "encode_transformer.projectors.3.mlp.3.weight": (512, 512),
    "encode_transformer.transformer.layers.0.cross_attn.sampling_offsets.weight": (256, 512),
    "encode_transformer.transformer.layers.5.cross_attn.attention_weights.weight": (128, 512),
    "encode_transformer.transformer.layers.2.linear1.weight": (1024, 512),
    "pre_slots_quant.weight": (12, 512),
    "slot_quantize.embedding.weight": (16384, 12),
    "slot_quantize.codebook_used": (65536,),
    "post_slots_quant.weight": (512, 12),
    "decode_transformer.position_embedding": (1, 577, 512),
    "decode_transformer.slot_position_embedding": (1, 256, 512),
    "decode_transformer.register_tokens": (1, 4, 512),
    "decode_transformer.transformer.layers.0.ffnet.w12.weight": (2736, 512),
    "decode_transformer.transformer.layers.0.ffnet.w3.weight": (512, 1368),
    "decode_transformer.proj.weight": (1024, 512),
    "decoder.conv_in.weight": (512, 512, 3, 3),
    "decoder.conv_blocks.1.res.0.nin_shortcut.weight": (256, 512, 1, 1),
    "decoder.conv_blocks.3.res.0.nin_shortcut.weight": (128, 256, 1, 1),
    "decoder.conv_out.weight": (3, 128, 3, 3),
}
PART_PARAMS = {  # spec 5.3
    "encode_transformer.projectors": 3_153_920, "encode_transformer.norm_layers": 4_096,
    "encode_transformer.transformer": 16_956_672, "encode_transformer.norm_pre1": 1_024,
    "pre_slots_quant": 6_156, "slot_quantize": 196_608, "post_slots_quant": 6_656,
    "decode_transformer": 19_900_448, "decoder": 32_799_107,
}


def test_paper_model_matches_the_official_layout_and_loads_a_release_style_checkpoint(tmp_path) -> None:
    model = create_tokenizer(PAPER, encoder_pretrained=False)
    state = model.trainable_state_dict()
    assert set(state) == official_keys()
    for key, shape in SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    named = dict(model.trainable_named_parameters())
    for prefix, count in PART_PARAMS.items():
        assert sum(p.numel() for n, p in named.items() if n.startswith(prefix + ".")) == count, prefix
    assert model.spec.trainable_params == 73_286_831
    assert model.spec.num_tokens == 256 and model.spec.latent_dim == 12 and model.spec.codebook_size == 16384
    assert model.spec.image_size == 336 and model.spec.token_grid is None
    assert model.encoder.level_sizes == ((24, 24),) * 4 and model.encoder.level_channels == (1024,) * 4
    assert model.decode_transformer.mask_positions().shape == (1, 441, 512)

    # a checkpoint in the official layout: weights under "ema", other entries, no backbone keys
    g = torch.Generator().manual_seed(0)
    ema = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() for k, v in state.items()}
    ema["slot_quantize.codebook_used"] = torch.arange(65536, dtype=torch.float32) % 16384
    path = tmp_path / "vfmtok-tokenizer.pt"
    torch.save({"model": ema, "ema": ema, "optimizer": {}, "discriminator": {}, "steps": 10,
                "args": argparse.Namespace(image_size=336)}, path)
    del model, state, named
    gc.collect()
    loaded = load_official("vfmtok", path, encoder_pretrained=False)
    assert not loaded.training
    got = loaded.trainable_state_dict()
    assert all(torch.equal(got[k], v) for k, v in ema.items())


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    state = create_tokenizer("test_vfmtok").trainable_state_dict()
    return tmp_path, {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}


def test_official_loader_tolerates_absent_codebook_used_and_reads_model_entry(tiny_checkpoint) -> None:
    tmp, state = tiny_checkpoint
    state.pop("slot_quantize.codebook_used")
    torch.save({"model": state, "steps": 3}, tmp / "ckpt.pt")
    model = load_official("vfmtok", tmp / "ckpt.pt", name="test_vfmtok")
    assert torch.equal(model.decoder.conv_in.weight, state["decoder.conv_in.weight"])


def test_official_loader_rejects_a_wrong_key(tiny_checkpoint) -> None:
    tmp, state = tiny_checkpoint
    state["decoder.conv_inx.weight"] = state.pop("decoder.conv_in.weight")
    torch.save({"ema": state}, tmp / "bad.pt")
    with pytest.raises(CheckpointKeyError, match=r"missing: decoder\.conv_in\.weight") as err:
        load_official("vfmtok", tmp / "bad.pt", name="test_vfmtok")
    assert "decoder.conv_inx.weight" in str(err.value)


def test_mask_positions_use_the_official_scale_factor() -> None:
    dec = ViTDecoder(dim=8, depth=1, num_heads=2, mlp_dim=16, num_queries=4, semantic_grid=(24, 24), mask_grid=21,
                     semantic_dim=8, num_registers=1)
    grid = dec.position_embedding[:, 1:].detach().transpose(1, 2).reshape(1, 8, 24, 24)
    by_scale = F.interpolate(grid, scale_factor=21.1 / 24, mode="bicubic", align_corners=False)
    by_size = F.interpolate(grid, size=(21, 21), mode="bicubic", align_corners=False)
    got = dec.mask_positions().detach().transpose(1, 2).reshape(1, 8, 21, 21)
    torch.testing.assert_close(got, by_scale, rtol=0, atol=0)
    assert (got - by_size).abs().max() > 1e-3


def _tiny(name: str = "test_vfmtok"):
    torch.manual_seed(0)
    return create_tokenizer(name)


def test_region_tokens_are_causal() -> None:
    model = _tiny().eval()
    levels = model.encoder(to_model_range(random_images(1, 32))).levels
    enc = model.encode_transformer
    with torch.no_grad():
        before = enc(levels)
        enc.carrier_tokens[:, 9] += 1.0
        after = enc(levels)
    assert torch.equal(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


def test_reference_points_are_a_row_major_grid() -> None:
    ref = _tiny().encode_transformer.reference_points  # 16 queries on 4 x 4
    torch.testing.assert_close(ref[6], torch.tensor([2.5 / 4, 1.5 / 4]))  # row 1, column 2


@pytest.mark.parametrize("name", ["test_vfmtok", "test_vfmtok_continuous"])
def test_precomputed_features_give_the_same_result(name: str) -> None:
    model = _tiny(name).eval()
    x = to_model_range(random_images(2, 32, seed=1))
    feats = model.encoder(x)
    with torch.no_grad():
        a, b = model.encode(x), model.encode(x, features=feats.levels)
        assert torch.equal(a.latents, b.latents)
        torch.testing.assert_close(model(x).recon, model(x, features=feats).recon, rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not match encoder"):
        model.encode(x, features=[t[:1] for t in feats.levels])


def test_losses_by_mode() -> None:
    model = _tiny().train()
    x = to_model_range(random_images(2, 32, seed=2))
    out = model(x)
    assert set(out.losses) == {"codebook", "commit", "semantic"}
    assert 0.0 <= float(out.losses["semantic"].detach()) <= 2.0
    model.eval()
    with torch.no_grad():
        out = model(x)
        enc = model.encode(x)
        assert torch.equal(out.indices, enc.indices)
        torch.testing.assert_close(out.recon, model.decode_indices(enc.indices).image, rtol=0, atol=0)
    assert "semantic" not in out.losses
    cont = _tiny("test_vfmtok_continuous").train()
    assert set(cont(x).losses) == {"kl", "semantic"}
    assert cont.spec.codebook_size is None and cont.encode(x).indices is None


def test_bad_input_is_a_clear_error() -> None:
    model = _tiny().eval()
    with pytest.raises(ValueError, match="expects images"):
        model.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="expected latents"):
        model.decode(torch.zeros(1, 15, 8))
    with pytest.raises(ValueError, match="perfect square"):
        create_tokenizer("test_vfmtok", num_queries=15)
    with pytest.raises(ValueError, match="image_size"):
        create_tokenizer("test_vfmtok", mask_grid=4)


# ----------------------------------------------------------------------------- input of any size
def _bicubic_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """float64 [n_out, n_in]: bicubic (cubic convolution, a = -0.75), align_corners=True, clamped borders."""
    a, m = -0.75, torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1)
        base = int(src // 1)
        t = src - base
        for k, d in zip(range(-1, 3), (1 + t, t, 1 - t, 2 - t)):
            w = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
            m[i, min(max(base + k, 0), n_in - 1)] += w
    return m


def _gaussian_matrix(n: int, factor: float) -> torch.Tensor:
    """float64 [n, n]: the anti-alias blur for a shrink by ``factor`` (identity when not shrinking)."""
    if factor <= 1:
        return torch.eye(n, dtype=torch.float64)
    sigma = max((factor - 1) / 2, 0.001)
    taps = int(max(4 * sigma, 3))
    taps += 1 - taps % 2
    half = taps // 2
    weights = torch.tensor([math.exp(-(k * k) / (2 * sigma * sigma)) for k in range(-half, half + 1)],
                           dtype=torch.float64)
    weights /= weights.sum()
    m = torch.zeros(n, n, dtype=torch.float64)
    for j in range(n):
        for k, w in zip(range(-half, half + 1), weights):
            i = j + k
            i = -i if i < 0 else 2 * (n - 1) - i if i > n - 1 else i  # reflect, edge not repeated
            m[j, i] += w
    return m


def _reference_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The official preprocessing resize in float64 from its formula, as separable matrices."""
    h, w = x.shape[-2:]
    shrink = max(h / size[0], w / size[1]) > 1
    gh = _gaussian_matrix(h, h / size[0] if shrink else 0.0)
    gw = _gaussian_matrix(w, w / size[1] if shrink else 0.0)
    if shrink:  # an axis that does not shrink still gets the sigma-0.001 blur: numerically the identity
        gh = gh if h > size[0] else torch.eye(h, dtype=torch.float64)
        gw = gw if w > size[1] else torch.eye(w, dtype=torch.float64)
    rows, cols = _bicubic_matrix(h, size[0]) @ gh, _bicubic_matrix(w, size[1]) @ gw
    return rows @ x.double() @ cols.T


@pytest.mark.parametrize("hw", [(256, 256), (512, 512), (512, 256)])
def test_official_resize_matches_the_float64_formula(hw: tuple[int, int]) -> None:
    from vfmtok.models.vfmtok import official_resize

    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0)) * 2 - 1
    got = official_resize(x, (336, 336))
    assert got.shape == (1, 3, 336, 336) and got.dtype == torch.float32
    # torch computes sampling positions in float32 (errors up to ~2e-5 px): up to ~7e-5 on noise in [-1, 1]
    torch.testing.assert_close(got.double(), _reference_resize(x, (336, 336)), rtol=0, atol=1e-4)
    if max(hw) > 336:  # the anti-alias blur is part of it: plain bicubic is measurably different
        plain = F.interpolate(x, size=(336, 336), mode="bicubic", align_corners=True)
        assert (plain - got).abs().max() > 1e-3  # 10x the tolerance above


def test_native_size_is_untouched_and_other_sizes_are_resized() -> None:
    from vfmtok.models.vfmtok import official_resize

    x = torch.rand(2, 3, 336, 336) * 2 - 1
    assert official_resize(x, (336, 336)) is x  # the paper model's 336 px input: bit-identical, no resampling
    model = _tiny().eval()
    native = to_model_range(random_images(2, 32))
    direct = model.encoder(native).levels
    assert all(torch.equal(a, b) for a, b in zip(model.features(native).levels, direct))
    big = to_model_range(random_images(2, 48, seed=3))
    enc = model.encode(big)
    ref = model.encode(official_resize(big, (32, 32)))
    assert torch.equal(enc.indices, ref.indices) and torch.equal(enc.latents, ref.latents)
    assert model.tokenize(random_images(1, 40)).shape == (1, 16)  # uint8 of any size through tokenize
    assert model.reconstruct(random_images(1, 24)).shape == (1, 3, 32, 32)


def test_missing_dinov2_weights_error_names_the_file(tmp_path, monkeypatch) -> None:
    from vfmtok.encoders import timm_vit

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(timm_vit, "_hub_reachable", lambda *a, **k: False)
    state = create_tokenizer("test_vfmtok").trainable_state_dict()
    torch.save({"ema": state}, tmp_path / "vfmtok-tokenizer.pt")
    with pytest.raises(RuntimeError) as err:
        load_official("vfmtok", tmp_path / "vfmtok-tokenizer.pt")  # the paper model, hub weights by default
    msg = str(err.value)
    assert "dinov2_vitl14_reg4_pretrain.pth" in msg and "encoder_pretrained='/path/to/dinov2_vitl14_reg4" in msg
    with pytest.raises(FileNotFoundError, match="dinov2_vitl14_reg4_pretrain.pth"):
        create_tokenizer(PAPER, encoder_pretrained=str(tmp_path / "absent.pth"))


def test_fetch_assets_help_names_the_dinov2_file() -> None:
    from vfmtok.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["fetch-assets"].format_help() + next(
        c.help for c in sub._choices_actions if c.dest == "fetch-assets")
    assert "dinov2_vitl14_reg4_pretrain.pth" in text and "encoder_pretrained=" in text


def test_official_dinov2_layout_loads_through_encoder_pretrained(tmp_path) -> None:
    """Meta's .pth layout (cls position inside pos_embed, register_tokens, mask_token) loads as a local file."""
    from vfmtok.encoders import create_encoder

    source = create_encoder("test_vit_tiny", seed=3)
    sd = source.model.state_dict()
    pos0 = torch.randn(1, 1, sd["pos_embed"].shape[-1], generator=torch.Generator().manual_seed(1))
    official = {k: v for k, v in sd.items() if k not in ("cls_token", "reg_token", "pos_embed")}
    official.update({"cls_token": sd["cls_token"] - pos0, "pos_embed": torch.cat([pos0, sd["pos_embed"]], 1),
                     "register_tokens": sd["reg_token"], "mask_token": torch.zeros(1, sd["pos_embed"].shape[-1])})
    torch.save(official, tmp_path / "dinov2_tiny_pretrain.pth")
    loaded = create_encoder("test_vit_tiny", pretrained=str(tmp_path / "dinov2_tiny_pretrain.pth"))
    x = to_model_range(random_images(2, 32))
    for a, b in zip(source(x).levels, loaded(x).levels):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # cls_token - pos0 + pos0: float rounding only
    assert not torch.allclose(create_encoder("test_vit_tiny", seed=4)(x).levels[-1], source(x).levels[-1])
