"""PSNR, SSIM and codebook statistics: analytic values, invariants, agreement with reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import random_images
from vfmtok.metrics.codebook import CodebookMeter
from vfmtok.metrics.recon import ReconstructionMeter, psnr_per_image, ssim_per_image


def test_psnr_constant_offset_is_analytic() -> None:
    a = random_images(3, 16).clamp(0, 245)
    offsets = torch.tensor([1, 5, 10], dtype=torch.uint8).view(3, 1, 1, 1)
    b = a + offsets
    expected = torch.tensor([10 * math.log10(255**2 / d**2) for d in (1, 5, 10)], dtype=torch.float64)
    assert psnr_per_image(a, b).dtype == torch.float64
    torch.testing.assert_close(psnr_per_image(a, b), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(psnr_per_image(b, a), expected, rtol=1e-12, atol=0)  # symmetric, no uint8 wrap-around


def test_psnr_identical_is_inf_and_inputs_are_checked() -> None:
    a = random_images(2, 16)
    assert torch.isinf(psnr_per_image(a, a)).all()
    with pytest.raises(TypeError, match="uint8"):
        psnr_per_image(a.float(), a.float())
    with pytest.raises(ValueError, match="one shape"):
        psnr_per_image(a, a[:, :, :8])


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Direct float64 SSIM: explicit 11x11 Gaussian windows (sigma 1.5) at every valid position, per channel."""
    r = np.arange(-5, 6)
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    per_channel = []
    for c in range(x.shape[0]):
        h, wd = x.shape[1:]
        vals = []
        for i in range(h - 10):
            for j in range(wd - 10):
                px, py = x[c, i:i + 11, j:j + 11], y[c, i:i + 11, j:j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
                cov = (w * px * py).sum() - mx * my
                vals.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        per_channel.append(np.mean(vals))
    return float(np.mean(per_channel))


def _noisy(a: torch.Tensor, amplitude: int, seed: int) -> torch.Tensor:
    noise = torch.randint(-amplitude, amplitude + 1, a.shape, generator=torch.Generator().manual_seed(seed))
    return (a.int() + noise).clamp(0, 255).to(torch.uint8)


def test_ssim_matches_direct_reference_and_skimage() -> None:
    a = random_images(2, 16, seed=1)
    b = _noisy(a, 20, seed=2)
    ours = ssim_per_image(a, b)
    for i in range(2):
        assert ours[i].item() == pytest.approx(_ssim_reference(a[i].double().numpy(), b[i].double().numpy()),
                                               rel=1e-10)
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image (dev dependency) is not installed")
    c = random_images(2, 24, seed=5)
    c[:, :, 3:7] = 255  # saturated rows
    d = _noisy(c, 40, seed=6)
    ours = ssim_per_image(c, d)
    for i in range(2):
        ref = metrics.structural_similarity(c[i].numpy(), d[i].numpy(), gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=255, channel_axis=0)
        assert ours[i].item() == pytest.approx(ref, rel=1e-9)


def test_ssim_invariants() -> None:
    a = random_images(3, 16, seed=3)
    torch.testing.assert_close(ssim_per_image(a, a), torch.ones(3, dtype=torch.float64))
    small, large = ssim_per_image(a, _noisy(a, 5, 1)), ssim_per_image(a, _noisy(a, 60, 1))
    assert (large < small).all() and (small < 1).all()
    torch.testing.assert_close(ssim_per_image(a, _noisy(a, 20, 2)), ssim_per_image(_noisy(a, 20, 2), a))
    with pytest.raises(ValueError, match="at least 11"):
        ssim_per_image(a[..., :10, :10], a[..., :10, :10])


def test_reconstruction_meter_streams_per_image_means() -> None:
    a, b = random_images(5, 16, seed=3), random_images(5, 16, seed=4)
    meter = ReconstructionMeter()
    meter.update(a[:2], b[:2])
    meter.update(a[2:], b[2:])
    out = meter.compute()
    assert out["n"] == 5 and out["n_identical"] == 0
    assert out["psnr"] == pytest.approx(float(psnr_per_image(a, b).mean()), rel=1e-12)
    assert out["ssim"] == pytest.approx(float(ssim_per_image(a, b).mean()), rel=1e-12)
    mse = (a.double() - b.double()).pow(2).mean()
    assert out["psnr"] != pytest.approx(float(10 * torch.log10(255**2 / mse)), rel=1e-6)  # not the global-MSE PSNR
    meter.update(a[:1], a[:1])
    assert math.isinf(meter.compute()["psnr"]) and meter.compute()["n_identical"] == 1
    with pytest.raises(ValueError, match="no images"):
        ReconstructionMeter().compute()


def test_codebook_uniform_and_one_hot() -> None:
    uniform = CodebookMeter(8)
    uniform.update(torch.arange(8).repeat(5).view(5, 8))
    out = uniform.compute()
    assert out["codebook_usage"] == 1.0 and out["tokens"] == 40
    assert out["codebook_perplexity"] == pytest.approx(8.0, rel=1e-12)
    assert out["codebook_entropy_nats"] == pytest.approx(math.log(8), rel=1e-12)
    assert out["codebook_entropy_bits"] == pytest.approx(3.0, rel=1e-12)
    one = CodebookMeter(8)
    one.update(torch.full((10,), 3))
    out = one.compute()
    assert out["codebook_usage"] == 1 / 8 and out["codebook_perplexity"] == pytest.approx(1.0)
    assert out["codebook_entropy_bits"] == 0.0


def test_codebook_streaming_equals_global_histogram() -> None:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50, (12, 16), generator=g) ** 2 // 50  # skewed, some codes unused
    streamed = CodebookMeter(64)
    for part in idx.split(5):
        streamed.update(part)
    counts = torch.bincount(idx.flatten(), minlength=64).double()
    p = counts[counts > 0] / counts.sum()
    out = streamed.compute()
    assert out["codebook_usage"] == pytest.approx(float((counts > 0).sum()) / 64)
    assert out["codebook_perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-12)
    assert 1.0 < out["codebook_perplexity"] < 64 * out["codebook_usage"]


def test_codebook_rejects_bad_indices() -> None:
    meter = CodebookMeter(8)
    with pytest.raises(ValueError, match="outside"):
        meter.update(torch.tensor([8]))
    with pytest.raises(TypeError, match="integers"):
        meter.update(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="no indices"):
        meter.compute()
