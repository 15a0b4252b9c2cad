"""Baselines: official key names, shapes and parameter counts; official checkpoint layouts load; grid wiring."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from baselines.vqgan import ours_to_taming, taming_to_ours
from tests.conftest import random_images
from vfmtok import create_tokenizer, load_official
from vfmtok.checkpoint import CheckpointKeyError
from vfmtok.images import to_model_range


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
    leaf = re.compile(r"^(encoder|decoder|quantize|quant_conv|post_quant_conv)(\.|$)")
    assert all(leaf.match(k) for k in sd)


def test_llamagen_vq8_params() -> None:
    model = create_tokenizer("llamagen_vq_f8_k16384")
    assert _count(model) == 70_109_835
    assert model.spec.token_grid == (32, 32) and model.spec.num_tokens == 1024
    assert {k.split(".")[2] for k in model.state_dict() if re.match(r"encoder\.conv_blocks\.\d\.attn", k)} == {"3"}


@pytest.mark.parametrize("name,total", [("vqgan_f16_k16384", 76_073_859), ("vqgan_f16_k1024", 72_141_699)])
def test_vqgan_params_and_taming_names(name: str, total: int) -> None:
    model = create_tokenizer(name)
    assert _count(model) == total
    assert _count(model.encoder) + _count(model.decoder) == 71_747_971
    assert not hasattr(model.quantize, "codebook_used")
    taming = {ours_to_taming(k): tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {  # taming names (spec 5.5): up.0 is the highest resolution (128 ch), up.4 the lowest (512 ch)
        "encoder.down.4.attn.1.q.weight": (512, 512, 1, 1),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.mid.block_1.conv1.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.mid.block_2.norm2.bias": (512,),
        "quantize.embedding.weight": (model.codebook_size, 256),
        "quant_conv.weight": (256, 256, 1, 1),
    }
    for key, shape in expected.items():
        assert taming.get(key) == shape, key
    assert not any(k.startswith("decoder.up.0.upsample") or k.startswith("encoder.down.4.downsample") for k in taming)
    assert not any("conv_blocks" in k or re.search(r"mid\.\d", k) for k in taming)
    assert {k.split(".")[2] for k in taming if re.match(r"decoder\.up\.\d\.attn", k)} == {"4"}
    assert all(taming_to_ours(ours_to_taming(k)) == k for k in model.state_dict())


def _perturbed(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v).clone()
            for k, v in model.state_dict().items()}


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Equal encoder, decoder and codebook outputs on small inputs (no 256 px forward)."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        za, zb = a.quant_conv(a.encoder(x)), b.quant_conv(b.encoder(x))  # [1, D, 2, 2]
        assert torch.equal(za, zb)
        assert torch.equal(a.decoder(a.post_quant_conv(za)), b.decoder(b.post_quant_conv(zb)))
        assert torch.equal(a.codebook(), b.codebook())


@pytest.mark.parametrize("name", ["vqgan_f16_k16384", "vqgan_f16_k1024", "llamagen_vq_f16_k16384"])
def test_official_layout_round_trip(name: str, tmp_path) -> None:
    source = create_tokenizer(name).eval()
    state = _perturbed(source, seed=1)
    source.load_state_dict(state)
    path = tmp_path / "official.ckpt"
    if name.startswith("vqgan"):
        taming = {ours_to_taming(k): v for k, v in state.items()}
        assert "encoder.down.0.block.0.conv1.weight" in taming and "decoder.up.4.attn.0.q.weight" in taming
        taming["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
        taming["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
        torch.save({"state_dict": taming, "epoch": 3, "global_step": 10}, path)
        loaded = load_official("vqgan", path)
    else:
        torch.save({"model": state, "optimizer": {"state": {}}, "steps": 5, "args": None}, path)
        loaded = load_official("llamagen_vq", path)
    assert loaded.spec.name == name and not loaded.training
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    _same_outputs(source, loaded)


def test_llamagen_loader_containers_and_usage_buffer(vq16, tmp_path) -> None:
    model_state = {k: v for k, v in vq16.state_dict().items() if k != "quantize.codebook_used"}  # buffer absent
    ema_state = _perturbed(vq16, seed=2)
    torch.save({"model": model_state, "ema": ema_state}, tmp_path / "both.pt")
    from_ema = load_official("llamagen_vq", tmp_path / "both.pt", container="ema")
    assert torch.equal(from_ema.quantize.embedding.weight, ema_state["quantize.embedding.weight"])
    from_model = load_official("llamagen_vq", tmp_path / "both.pt")  # "model" first, as LlamaGen's scripts
    assert torch.equal(from_model.quantize.embedding.weight, model_state["quantize.embedding.weight"])
    assert not from_model.quantize.codebook_used.any()
    # the same weights at 384 px: a 24 x 24 grid
    big = load_official("llamagen_vq", tmp_path / "both.pt", container="model", image_size=384)
    assert big.spec.token_grid == (24, 24) and big.spec.num_tokens == 576


def test_llamagen_loader_picks_vq8_from_layout(tmp_path) -> None:
    vq8 = create_tokenizer("llamagen_vq_f8_k16384")
    torch.save({"model": vq8.state_dict()}, tmp_path / "vq8.pt")
    assert load_official("llamagen_vq", tmp_path / "vq8.pt").spec.name == "llamagen_vq_f8_k16384"


def test_official_loader_names_bad_keys(vq16, tmp_path) -> None:
    state = dict(vq16.state_dict())
    state.pop("decoder.conv_out.bias")
    state["decoder.conv_outt.bias"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError) as err:
        load_official("llamagen_vq", tmp_path / "bad.pt")
    assert "missing: decoder.conv_out.bias" in str(err.value) and "decoder.conv_outt.bias" in str(err.value)
    torch.save({"model": {"foo.weight": torch.zeros(1)}}, tmp_path / "alien.pt")
    with pytest.raises(CheckpointKeyError, match="encoder.conv_in.weight"):
        load_official("llamagen_vq", tmp_path / "alien.pt")


def test_vqgan_loader_errors(tmp_path) -> None:
    model = create_tokenizer("vqgan_f16_k1024")
    taming = {ours_to_taming(k): v for k, v in model.state_dict().items()}
    taming.pop("decoder.up.0.block.2.conv2.bias")
    torch.save({"state_dict": taming}, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointKeyError) as err:
        load_official("vqgan", tmp_path / "missing.ckpt")
    assert "decoder.conv_blocks.4.res.2.conv2.bias" in str(err.value)
    assert "decoder.up.0.block.2.conv2.bias" in str(err.value)  # also named in taming's layout
    torch.save({"state_dict": {"quantize.embedding.weight": torch.zeros(512, 256)}}, tmp_path / "k512.ckpt")
    with pytest.raises(ValueError, match="512 codes"):
        load_official("vqgan", tmp_path / "k512.ckpt")
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "nocodes.ckpt")
    with pytest.raises(CheckpointKeyError, match="quantize.embedding.weight"):
        load_official("vqgan", tmp_path / "nocodes.ckpt")
    torch.save({"model": {}}, tmp_path / "wrong_container.ckpt")
    with pytest.raises(CheckpointKeyError, match="state_dict"):
        load_official("vqgan", tmp_path / "wrong_container.ckpt")


def test_small_configs_tokens() -> None:
    for name in ("vqgan_f4_k1024_cifar", "llamagen_vq_f4_k4096_cifar"):
        tok = create_tokenizer(name).eval()
        assert tok.spec.num_tokens == 64 and tok.spec.token_grid == (8, 8) and tok.spec.image_size == 32
        assert tok.tokenize(random_images(2, 32)).shape == (2, 64)


def test_describe_and_overrides() -> None:
    tok = create_tokenizer("test_vqgan", image_size=32, codebook_size=128)
    spec = tok.spec
    assert (spec.image_size, spec.num_tokens, spec.token_grid, spec.codebook_size) == (32, 64, (8, 8), 128)
    assert spec.encoder is None and spec.latent_dim == 8 and tok.codebook().shape == (128, 8)
    with pytest.raises(ValueError, match="multiple of the downsampling factor"):
        create_tokenizer("test_vqgan", image_size=18)


@pytest.mark.parametrize("name,l2", [("test_vqgan", False), ("test_llamagen_vq", True)])
def test_grid_wiring(name: str, l2: bool) -> None:
    tok = create_tokenizer(name).eval()
    x = to_model_range(random_images(2, tok.spec.image_size, seed=3))
    g = tok.spec.token_grid[0]
    with torch.no_grad():
        enc = tok.encode(x)
        grid = tok.quant_conv(tok.encoder(x))  # [B, D, g, g]
    # raster order: token r * g + c is grid cell (r, c)
    for r, c in ((0, 1), (1, 0), (g - 1, g - 2)):
        assert torch.equal(enc.aux["pre_quant"][:, r * g + c], grid[:, :, r, c])
    assert torch.equal(enc.latents, tok.codebook()[enc.indices])  # exact codebook rows
    norms = tok.codebook().norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms)) == l2
    with pytest.raises(ValueError, match="expected latents"):
        tok.decode(enc.latents[:, :-1])
    with pytest.raises(ValueError, match="expected images"):
        tok.encode(x[:, :, :-2, :-2])
    tok.train()
    out = tok(x)
    assert set(out.losses) == {"codebook", "commit"} and torch.equal(out.indices, enc.indices)
    z = enc.aux["pre_quant"]
    z = F.normalize(z, dim=-1) if l2 else z
    mse = F.mse_loss(tok.codebook()[enc.indices], z)
    # taming's legacy placement puts beta on the codebook term; LlamaGen on the commitment term
    beta_on, full = ("codebook", "commit") if not l2 else ("commit", "codebook")
    torch.testing.assert_close(out.losses[beta_on], 0.25 * mse)
    torch.testing.assert_close(out.losses[full], mse)
