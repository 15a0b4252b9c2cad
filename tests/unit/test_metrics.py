"""Metrics agree with the reference tools on identical inputs, and obey their invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from tests.conftest import random_images
from vfmtok.metrics.codebook import CodebookMeter
from vfmtok.metrics.fidelity import (
    fid_from_features,
    inception_score_from_logits,
    kid_from_features,
    precision_recall,
)
from vfmtok.metrics.probe import linear_probe
from vfmtok.metrics.recon import ReconstructionMeter, psnr_per_image, ssim_per_image


def _features(seed: int, n: int = 300, d: int = 64, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * (1.0 + shift) + shift


def test_fid_matches_torch_fidelity() -> None:
    a, b = _features(0), _features(1, shift=0.3)
    ours = fid_from_features(a, b)
    ref = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    assert ours == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-9)


def test_kid_matches_torch_fidelity() -> None:
    a, b = _features(2, n=120), _features(3, n=150, shift=0.2)
    mean, std = kid_from_features(a, b, subsets=20, subset_size=100)
    ref = kid_features_to_metric(a.double(), b.double(), kid_subsets=20, kid_subset_size=100, verbose=False,
                                 rng_seed=2020, kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)


def test_precision_recall_matches_torch_fidelity() -> None:
    fake, real = _features(4, n=200, d=4, shift=0.5), _features(5, n=220, d=4)
    p, r = precision_recall(fake, real, k=3)
    ref = prc_features_to_metric(fake.double(), real.double(), prc_neighborhood=3, prc_batch_size=10000,
                                 save_cpu_ram=False, verbose=False)
    assert p == pytest.approx(ref["precision"], rel=1e-6) and r == pytest.approx(ref["recall"], rel=1e-6)
    assert 0.0 < p < 1.0 and 0.0 < r <= 1.0 and p != r


def test_inception_score_matches_torch_fidelity() -> None:
    logits = _features(6, n=100, d=20) * 3
    mean, std = inception_score_from_logits(logits, splits=10)
    ref = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-9)


def test_psnr_analytic_and_identity() -> None:
    a = random_images(3, 16)
    b = (a.int() + 5).clamp(0, 255).to(torch.uint8)
    a = a.clamp(0, 250)
    b = a + 5
    expected = 10 * math.log10(255**2 / 25)
    assert torch.allclose(psnr_per_image(a, b), torch.full((3,), expected, dtype=torch.float64))
    assert torch.isinf(psnr_per_image(a, a)).all()
    with pytest.raises(TypeError, match="uint8"):
        psnr_per_image(a.float(), b.float())


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Direct float64 SSIM: explicit 11x11 Gaussian windows over every valid position, per channel."""
    r = np.arange(-5, 6)
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(x.shape[0]):
        h, wd = x.shape[1:]
        for i in range(h - 10):
            for j in range(wd - 10):
                px, py = x[c, i:i + 11, j:j + 11], y[c, i:i + 11, j:j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
                cov = (w * px * py).sum() - mx * my
                vals.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_against_direct_reference() -> None:
    a = random_images(2, 16, seed=1)
    noise = torch.randint(-20, 21, a.shape, generator=torch.Generator().manual_seed(2))
    b = (a.int() + noise).clamp(0, 255).to(torch.uint8)
    ours = ssim_per_image(a, b)
    for i in range(2):
        assert ours[i].item() == pytest.approx(_ssim_reference(a[i].double().numpy(), b[i].double().numpy()),
                                               rel=1e-10)
    assert torch.allclose(ssim_per_image(a, a), torch.ones(2, dtype=torch.float64))
    skimage = pytest.importorskip("skimage.metrics")
    ref = skimage.structural_similarity(a[0].numpy(), b[0].numpy(), gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255, channel_axis=0)
    assert ours[0].item() == pytest.approx(ref, rel=1e-6)


def test_reconstruction_meter_streams() -> None:
    a, b = random_images(4, 16, seed=3), random_images(4, 16, seed=4)
    meter = ReconstructionMeter()
    meter.update(a[:2], b[:2])
    meter.update(a[2:], b[2:])
    out = meter.compute()
    assert out["n"] == 4 and out["psnr"] == pytest.approx(float(psnr_per_image(a, b).mean()))


def test_codebook_statistics() -> None:
    uniform = CodebookMeter(8)
    uniform.update(torch.arange(8).repeat(5))
    out = uniform.compute()
    assert out["codebook_usage"] == 1.0 and out["codebook_perplexity"] == pytest.approx(8.0)
    assert out["codebook_entropy_bits"] == pytest.approx(3.0)
    one = CodebookMeter(8)
    one.update(torch.full((10,), 3))
    assert one.compute()["codebook_usage"] == 1 / 8 and one.compute()["codebook_perplexity"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="outside"):
        one.update(torch.tensor([8]))


def test_probe_is_seeded_and_learns() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.randn(300, 8, generator=g) + torch.nn.functional.one_hot(y, 8).float() * 3
    acc1 = linear_probe(x[:200], y[:200], x[200:], y[200:], epochs=30, lr=1e-2, batch_size=64, seed=1)
    acc2 = linear_probe(x[:200], y[:200], x[200:], y[200:], epochs=30, lr=1e-2, batch_size=64, seed=1)
    assert acc1 == acc2 and acc1 > 0.8
