"""Multi-scale deformable attention against a direct, loop-based bilinear reference."""

from __future__ import annotations

import math

import pytest
import torch

from vfmtok.models.deform_attn import MSDeformAttn, ms_deform_attn_sample


def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img [C, H, W]; (x, y) normalised in [0, 1]; align_corners=False, zeros outside."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=torch.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < w and 0 <= yi < h:
                out += wgt * img[:, yi, xi].double()
    return out


def _reference(value, shapes, locations, weights) -> torch.Tensor:
    b, _, heads, dh = value.shape
    _, lq, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, lq, heads * dh, dtype=torch.float64)
    for bi in range(b):
        for q in range(lq):
            for hd in range(heads):
                acc = torch.zeros(dh, dtype=torch.float64)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[bi, starts[lvl]:starts[lvl + 1], hd].t().reshape(dh, h, w)
                    for p in range(points):
                        x, y = locations[bi, q, hd, lvl, p].tolist()
                        acc += weights[bi, q, hd, lvl, p].item() * _bilinear_zero_pad(img, x, y)
                out[bi, q, hd * dh:(hd + 1) * dh] = acc
    return out


@pytest.mark.parametrize("shapes", [[(5, 5), (5, 5), (5, 5)], [(7, 6), (4, 3), (2, 2)]], ids=["equal", "unequal"])
def test_core_matches_loop_reference(shapes) -> None:
    g = torch.Generator().manual_seed(0)
    b, lq, heads, dh, points = 2, 5, 2, 3, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, heads, dh, generator=g)
    # locations spill outside [0, 1] so zero padding is exercised
    locations = torch.rand(b, lq, heads, len(shapes), points, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(b, lq, heads, len(shapes), points, generator=g)
    got = ms_deform_attn_sample(value, shapes, locations, weights)
    want = _reference(value, shapes, locations, weights)
    assert got.shape == (b, lq, heads * dh)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shapes", [[(4, 4), (4, 4)], [(6, 5), (3, 2)]], ids=["equal", "unequal"])
def test_module_matches_reference(shapes) -> None:
    torch.manual_seed(1)
    dim, heads, points = 8, 2, 2
    attn = MSDeformAttn(dim, n_levels=len(shapes), n_heads=heads, n_points=points)
    with torch.no_grad():  # non-trivial offsets and weights
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    b, lq = 2, 3
    query = torch.randn(b, lq, dim)
    ref = torch.rand(b, lq, len(shapes), 2)
    value = torch.randn(b, sum(h * w for h, w in shapes), dim)
    got = attn(query, ref, value, shapes)

    v = attn.value_proj(value).view(b, -1, heads, dim // heads)
    off = attn.sampling_offsets(query).view(b, lq, heads, len(shapes), points, 2)
    wts = attn.attention_weights(query).view(b, lq, heads, -1).softmax(-1).view(b, lq, heads, len(shapes), points)
    loc = torch.empty_like(off)
    for lvl, (h, w) in enumerate(shapes):  # offsets are in pixels of each level
        loc[:, :, :, lvl, :, 0] = ref[:, :, None, lvl, None, 0] + off[:, :, :, lvl, :, 0] / w
        loc[:, :, :, lvl, :, 1] = ref[:, :, None, lvl, None, 1] + off[:, :, :, lvl, :, 1] / h
    want = attn.output_proj(_reference(v.detach(), shapes, loc.detach(), wts.detach()).float())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_init_and_gradients() -> None:
    attn = MSDeformAttn(16, n_levels=2, n_heads=4, n_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points along +x, offsets grow with the point index, equal across levels
    torch.testing.assert_close(bias[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bias[0, 0, :, 1], torch.zeros(3), atol=1e-6, rtol=0)
    assert torch.equal(bias[:, 0], bias[:, 1])
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.sampling_offsets.weight.abs().sum() == 0
    shapes = [(4, 4), (2, 2)]
    out = attn(torch.randn(1, 3, 16), torch.rand(1, 3, 2, 2), torch.randn(1, 20, 16), shapes)
    out.square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_shapes_raise() -> None:
    attn = MSDeformAttn(8, n_levels=2, n_heads=2, n_points=1)
    with pytest.raises(ValueError, match="expected 2 levels"):
        attn(torch.randn(1, 2, 8), torch.rand(1, 2, 2, 2), torch.randn(1, 16, 8), [(4, 4)])
    with pytest.raises(ValueError, match="positions"):
        attn(torch.randn(1, 2, 8), torch.rand(1, 2, 2, 2), torch.randn(1, 18, 8), [(4, 4), (1, 1)])
