"""Full-size baselines have the official key names and shapes; official checkpoint layouts load."""

from __future__ import annotations

import re

import pytest
import torch

from baselines.vqgan import ours_to_taming, taming_to_ours
from tests.conftest import random_images
from vfmtok import create_tokenizer, load_official
from vfmtok.checkpoint import CheckpointKeyError


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def vq16() -> torch.nn.Module:
    return create_tokenizer("llamagen_vq_f16_k16384")


def test_llamagen_vq16_keys_shapes_and_params(vq16) -> None:
    sd = vq16.state_dict()
    assert len(sd) == 344
    assert _count(vq16) == 71_883_403
    assert _count(vq16.encoder) == 29_298_176 and _count(vq16.decoder) == 42_449_795
    expected = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.conv_blocks.2.res.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.conv_blocks.4.res.0.nin_shortcut.weight": (512, 256, 1, 1),
        "encoder.conv_blocks.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.conv_blocks.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.mid.1.q.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.conv_blocks.0.attn.2.v.weight": (512, 512, 1, 1),
        "decoder.conv_blocks.1.res.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.conv_blocks.3.res.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.conv_blocks.3.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
        "quantize.embedding.weight": (16384, 8),
        "quantize.codebook_used": (65536,),
        "quant_conv.weight": (8, 256, 1, 1),
        "post_quant_conv.weight": (256, 8, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # attention only at the lowest-resolution level; no upsample after the last decoder level
    assert {k.split(".")[2] for k in sd if re.match(r"encoder\.conv_blocks\.\d\.attn", k)} == {"4"}
    assert {k.split(".")[2] for k in sd if re.match(r"decoder\.conv_blocks\.\d\.attn", k)} == {"0"}
    assert not any(k.startswith("decoder.conv_blocks.4.upsample") for k in sd)
    assert not any(k.startswith("encoder.conv_blocks.4.downsample") for k in sd)


def test_llamagen_vq8_params() -> None:
    assert _count(create_tokenizer("llamagen_vq_f8_k16384")) == 70_109_835


@pytest.mark.parametrize("name,total", [("vqgan_f16_k16384", 76_073_859), ("vqgan_f16_k1024", 72_141_699)])
def test_vqgan_params_and_taming_names(name: str, total: int) -> None:
    model = create_tokenizer(name)
    assert _count(model) == total
    assert _count(model.encoder) + _count(model.decoder) == 71_747_971
    taming = {ours_to_taming(k) for k in model.state_dict()}
    for key in ("encoder.down.4.attn.1.q.weight", "encoder.down.2.block.0.nin_shortcut.weight",
                "encoder.mid.block_1.conv1.weight", "encoder.mid.attn_1.proj_out.weight",
                "decoder.up.4.attn.2.k.weight", "decoder.up.3.block.0.nin_shortcut.weight",
                "decoder.up.1.block.0.nin_shortcut.weight", "decoder.up.1.upsample.conv.weight",
                "decoder.mid.block_2.norm2.bias", "quantize.embedding.weight"):
        assert key in taming, key
    assert not any(k.startswith("decoder.up.0.upsample") for k in taming)
    assert all(taming_to_ours(ours_to_taming(k)) == k for k in model.state_dict())


def _perturbed(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v).clone()
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["vqgan_f16_k1024", "llamagen_vq_f16_k16384"])
def test_official_layout_round_trip(name: str, tmp_path) -> None:
    model = create_tokenizer(name).eval()
    state = _perturbed(model, seed=1)
    path = tmp_path / "official.ckpt"
    if name.startswith("vqgan"):
        taming = {ours_to_taming(k): v for k, v in state.items()}
        taming["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
        taming["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
        torch.save({"state_dict": taming, "epoch": 3, "global_step": 10}, path)
        loaded = load_official("vqgan", path)
    else:
        torch.save({"model": state, "steps": 5, "args": None}, path)
        loaded = load_official("llamagen_vq", path)
    assert loaded.spec.name == name and not loaded.training
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_official_loader_names_bad_keys(tmp_path) -> None:
    model = create_tokenizer("llamagen_vq_f16_k16384")
    state = dict(model.state_dict())
    state.pop("decoder.conv_out.bias")
    state["decoder.conv_outt.bias"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError) as err:
        load_official("llamagen_vq", tmp_path / "bad.pt")
    assert "missing: decoder.conv_out.bias" in str(err.value) and "decoder.conv_outt.bias" in str(err.value)


def test_small_configs_tokens() -> None:
    for name in ("vqgan_f4_k1024_c32", "llamagen_vq_f4_k4096_c32"):
        tok = create_tokenizer(name).eval()
        assert tok.spec.num_tokens == 64 and tok.spec.token_grid == (8, 8)
        assert tok.tokenize(random_images(2, 32)).shape == (2, 64)
