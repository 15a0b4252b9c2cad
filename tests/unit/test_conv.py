"""Conv encoder/decoder: numerics against a functional reference, shapes, attention placement, module trees."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from vfmtok.models.conv import AttnBlock, ConvDecoder, ConvEncoder, Downsample, Upsample, group_norm

# ----------------------------------------------------------------------------- functional reference
# Written from the prose description of the taming/LlamaGen blocks, on a state dict, in float64.


def _gn(sd: dict, p: str, x: torch.Tensor, groups: int) -> torch.Tensor:
    return F.group_norm(x, groups, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def _conv(sd: dict, p: str, x: torch.Tensor, stride: int = 1, padding: int | None = None) -> torch.Tensor:
    w = sd[f"{p}.weight"]
    return F.conv2d(x, w, sd[f"{p}.bias"], stride=stride, padding=w.shape[-1] // 2 if padding is None else padding)


def _res(sd: dict, p: str, x: torch.Tensor, g: int) -> torch.Tensor:
    h = _conv(sd, f"{p}.conv1", F.silu(_gn(sd, f"{p}.norm1", x, g)))
    h = _conv(sd, f"{p}.conv2", F.silu(_gn(sd, f"{p}.norm2", h, g)))
    skip = _conv(sd, f"{p}.nin_shortcut", x) if f"{p}.nin_shortcut.weight" in sd else x
    return skip + h


def _attn(sd: dict, p: str, x: torch.Tensor, g: int) -> torch.Tensor:
    b, c, hh, ww = x.shape
    y = _gn(sd, f"{p}.norm", x, g)
    q, k, v = (_conv(sd, f"{p}.{n}", y).reshape(b, c, hh * ww) for n in "qkv")  # [B, C, N]
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c ** -0.5, dim=-1)  # [B, Nq, Nk]
    out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, hh, ww)
    return x + _conv(sd, f"{p}.proj_out", out)


def _level(sd: dict, p: str, x: torch.Tensor, g: int) -> torch.Tensor:
    j = 0
    while f"{p}.res.{j}.conv1.weight" in sd:
        x = _res(sd, f"{p}.res.{j}", x, g)
        if f"{p}.attn.{j}.q.weight" in sd:
            x = _attn(sd, f"{p}.attn.{j}", x, g)
        j += 1
    if f"{p}.downsample.conv.weight" in sd:
        x = _conv(sd, f"{p}.downsample.conv", F.pad(x, (0, 1, 0, 1)), stride=2, padding=0)
    if f"{p}.upsample.conv.weight" in sd:
        x = _conv(sd, f"{p}.upsample.conv", x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    return x


def _mid_ref(sd: dict, x: torch.Tensor, g: int) -> torch.Tensor:
    x = _res(sd, "mid.0", x, g)
    if "mid.1.q.weight" in sd:
        x = _attn(sd, "mid.1", x, g)
    return _res(sd, "mid.2", x, g)


def _encoder_ref(sd: dict, x: torch.Tensor, levels: int, g: int) -> torch.Tensor:
    h = _conv(sd, "conv_in", x)
    for i in range(levels):
        h = _level(sd, f"conv_blocks.{i}", h, g)
    h = _mid_ref(sd, h, g)
    return _conv(sd, "conv_out", F.silu(_gn(sd, "norm_out", h, g)))


def _decoder_ref(sd: dict, z: torch.Tensor, levels: int, g: int) -> torch.Tensor:
    h = _mid_ref(sd, _conv(sd, "conv_in", z), g)
    for k in range(levels):
        h = _level(sd, f"conv_blocks.{k}", h, g)
    return _conv(sd, "conv_out", F.silu(_gn(sd, "norm_out", h, g)))


def _randomize(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random non-trivial weights (GroupNorm affine included), in float64; returns the state dict."""
    g = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if name.endswith("weight") and p.dim() == 1 else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return {k: v.clone() for k, v in module.state_dict().items()}


SMALL = {"ch": 8, "ch_mult": (1, 2, 4), "num_res_blocks": 2, "norm_groups": 4}


@pytest.mark.parametrize("attn_levels", [None, (1, 2), ()])
def test_encoder_matches_functional_reference(attn_levels) -> None:
    enc = ConvEncoder(in_channels=3, z_channels=6, attn_levels=attn_levels, **SMALL)
    sd = _randomize(enc, seed=1)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = enc(x)
    assert out.shape == (2, 6, 4, 4)
    torch.testing.assert_close(out, _encoder_ref(sd, x, 3, 4), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("attn_levels,mid_attn", [(None, True), ((0, 2), True), ((), False)])
def test_decoder_matches_functional_reference(attn_levels, mid_attn: bool) -> None:
    dec = ConvDecoder(z_channels=6, out_channels=3, attn_levels=attn_levels, mid_attn=mid_attn, **SMALL)
    sd = _randomize(dec, seed=3)
    assert ("mid.1.q.weight" in sd) == mid_attn
    z = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = dec(z)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, _decoder_ref(sd, z, 3, 4), rtol=1e-9, atol=1e-9)


def test_blocks_numerics() -> None:
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    down = Downsample(4).double()
    # padding is right/bottom only: the top-left output sees input rows/cols 0..2, never a zero pad
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    assert down(x).shape == (1, 4, 3, 3) and torch.equal(down(x), ref)
    sym = F.conv2d(x, down.conv.weight, down.conv.bias, stride=2, padding=1)
    assert not torch.allclose(down(x), sym)
    up = Upsample(4).double()
    nearest = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # [1, 4, 12, 12]
    torch.testing.assert_close(up(x), F.conv2d(nearest, up.conv.weight, up.conv.bias, padding=1))
    attn = AttnBlock(4, groups=2)
    sd = _randomize(attn, seed=5)
    ref = _attn({f"a.{k}": v for k, v in sd.items()}, "a", x, 2)  # explicit softmax(q k^T / sqrt(C)) v
    torch.testing.assert_close(attn(x), ref, rtol=1e-9, atol=1e-9)


def test_group_norm_groups_and_eps() -> None:
    gn = group_norm(128)
    assert (gn.num_groups, gn.eps, gn.affine) == (32, 1e-6, True)
    assert group_norm(16).num_groups == 16  # narrow width: largest power-of-two divisor <= 32
    assert group_norm(24, groups=32).num_groups == 8
    assert group_norm(8, groups=4).num_groups == 4
    with pytest.raises(ValueError, match="positive"):
        group_norm(0)
    dec = ConvDecoder(z_channels=4, ch=16, ch_mult=(1, 2), num_res_blocks=1)  # widths 16/32, default 32 groups
    assert dec.norm_out.num_groups == 16 and dec.mid[0].norm1.num_groups == 32


@pytest.mark.parametrize("ch_mult,size", [((1,), 8), ((1, 2), 16), ((1, 1, 2, 2, 4), 32), ((1, 2, 2, 4), 24)])
def test_encoder_decoder_shapes(ch_mult: tuple[int, ...], size: int) -> None:
    f = 2 ** (len(ch_mult) - 1)
    enc = ConvEncoder(ch=8, ch_mult=ch_mult, num_res_blocks=1, z_channels=5, norm_groups=8)
    dec = ConvDecoder(z_channels=5, ch=8, ch_mult=ch_mult, num_res_blocks=1, norm_groups=8)
    assert enc.downsampling == dec.upsampling == f
    with torch.no_grad():
        z = enc(torch.randn(2, 3, size, size))
        assert z.shape == (2, 5, size // f, size // f)
        assert dec(z).shape == (2, 3, size, size)
        assert dec(torch.randn(1, 5, 3, 5)).shape == (1, 3, 3 * f, 5 * f)  # fully convolutional, non-square


def _attn_levels_of(module: torch.nn.Module) -> set[int]:
    return {int(m[1]) for k in module.state_dict() if (m := re.match(r"conv_blocks\.(\d+)\.attn\.", k))}


def test_attention_placement() -> None:
    kw = {"ch": 8, "ch_mult": (1, 2, 2, 4), "num_res_blocks": 1, "norm_groups": 8}
    # default: lowest-resolution level only (encoder level 3 == decoder conv_blocks.0)
    assert _attn_levels_of(ConvEncoder(**kw)) == {3} and _attn_levels_of(ConvDecoder(**kw)) == {0}
    # one numbering for both: resolution level i <-> decoder conv_blocks.{L-1-i}
    assert _attn_levels_of(ConvEncoder(attn_levels=(0, 2), **kw)) == {0, 2}
    assert _attn_levels_of(ConvDecoder(attn_levels=(0, 2), **kw)) == {3, 1}
    assert _attn_levels_of(ConvDecoder(attn_levels=(), **kw)) == set()
    dec = ConvDecoder(attn_levels=(3,), num_res_blocks=2, **{k: v for k, v in kw.items() if k != "num_res_blocks"})
    assert len(dec.conv_blocks[0].attn) == len(dec.conv_blocks[0].res) == 3
    for bad in ((4,), (-1,)):
        with pytest.raises(ValueError, match="attn_levels"):
            ConvEncoder(attn_levels=bad, **kw)
        with pytest.raises(ValueError, match="attn_levels"):
            ConvDecoder(attn_levels=bad, **kw)
    with pytest.raises(ValueError, match="ch_mult"):
        ConvDecoder(ch_mult=(), ch=8)


VFMTOK_DECODER = {"z_channels": 512, "ch": 128, "ch_mult": (1, 1, 2, 2, 4), "num_res_blocks": 1,
                  "attn_levels": (), "mid_attn": True}


def test_vfmtok_decoder_module_tree() -> None:
    dec = ConvDecoder(**VFMTOK_DECODER)
    sd = dec.state_dict()
    assert sum(p.numel() for p in dec.parameters()) == 32_799_107
    assert tuple(sd["conv_in.weight"].shape) == (512, 512, 3, 3)
    assert tuple(sd["mid.1.q.weight"].shape) == (512, 512, 1, 1)
    assert tuple(sd["conv_out.weight"].shape) == (3, 128, 3, 3)
    widths = [sd[f"conv_blocks.{k}.res.1.conv2.weight"].shape[0] for k in range(5)]
    assert widths == [512, 256, 256, 128, 128]
    assert {k.split(".")[1] for k in sd if ".nin_shortcut." in k} == {"1", "3"}
    assert {k.split(".")[1] for k in sd if ".upsample." in k} == {"0", "1", "2", "3"}
    assert not any(".attn." in k or ".res.2." in k for k in sd)  # 2 res blocks per level, no up-path attention
    leaf = re.compile(r"^(conv_in|norm_out|conv_out|mid\.[012]\.[a-z_12]+|conv_blocks\.[0-4]\.(res\.[01]\."
                      r"(norm1|conv1|norm2|conv2|nin_shortcut)|upsample\.conv))\.(weight|bias)$")
    assert all(leaf.match(k) for k in sd), [k for k in sd if not leaf.match(k)]


def test_vfmtok_decoder_spatial_path() -> None:
    narrow = {**VFMTOK_DECODER, "z_channels": 16, "ch": 8, "norm_groups": 8}
    dec = ConvDecoder(**narrow).eval()
    sizes = []
    hooks = [lvl.register_forward_hook(lambda _m, _i, o: sizes.append(o.shape[-1])) for lvl in dec.conv_blocks]
    with torch.no_grad():
        out = dec(torch.randn(1, 16, 21, 21))
    for h in hooks:
        h.remove()
    assert out.shape == (1, 3, 336, 336) and torch.isfinite(out).all()
    assert sizes == [42, 84, 168, 336, 336]
