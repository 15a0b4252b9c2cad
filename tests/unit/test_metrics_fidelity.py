"""FID, KID, precision/recall and IS equal torch-fidelity's on identical feature arrays; image sources agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from tests.conftest import random_images
from vfmtok.data import ArrayDataset, make_loader
from vfmtok.metrics import fidelity
from vfmtok.metrics.fidelity import (
    GaussianStats,
    cleanfid_fid,
    fid_from_features,
    frechet_distance,
    inception_score_from_logits,
    kid_from_features,
    precision_recall,
    trace_sqrt_product,
)
from vfmtok.metrics.reference import ReferenceStats, distance_results
from vfmtok.metrics.sources import content_hash, iter_batches


def _features(seed: int, n: int = 300, d: int = 64, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) * (1.0 + shift) + shift).relu()  # non-negative, like pool3


def _tf_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    return fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)[
        "frechet_inception_distance"]


@pytest.mark.parametrize(("n1", "n2", "d"), [(300, 300, 64), (500, 400, 256), (2000, 1500, 32)])
def test_fid_matches_torch_fidelity(n1: int, n2: int, d: int) -> None:
    a, b = _features(0, n1, d), _features(1, n2, d, shift=0.3)
    ours = fid_from_features(a, b)
    assert ours > 1.0
    assert ours == pytest.approx(_tf_fid(a, b), rel=1e-6)
    assert fid_from_features(b, a) == pytest.approx(ours, rel=1e-9)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("n", "d"), [(40, 64), (300, 256), (1000, 128)])
def test_trace_sqrt_product_is_exact_and_agrees_with_the_general_eigenvalue_route(n: int, d: int) -> None:
    """Tr sqrt(S1 S2) is the nuclear norm of X1c X2c^T (centred features over sqrt(N - 1)): exact for any N."""
    a, b = (np.asarray(_features(seed, n, d, shift=0.1 * seed), np.float64) for seed in (4, 5))
    ac, bc = ((f - f.mean(0)) / np.sqrt(n - 1) for f in (a, b))
    exact = np.linalg.svd(ac @ bc.T, compute_uv=False).sum()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert trace_sqrt_product(s1, s2) == pytest.approx(exact, rel=1e-10)
    general = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(np.complex128)).real.sum()  # torch-fidelity's route
    assert trace_sqrt_product(s1, s2) == pytest.approx(general, rel=1e-10 if n > d else 1e-5)


def test_fid_of_known_gaussians() -> None:
    """Diagonal covariances: FID = |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2))."""
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    a = GaussianStats(np.zeros(3), np.diag(s1), 100)
    b = GaussianStats(np.array([1.0, 2.0, 0.0]), np.diag(s2), 100)
    assert frechet_distance(a, b) == pytest.approx(5.0 + float((s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()), rel=1e-12)
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(a, GaussianStats(np.zeros(2), np.eye(2), 10))


def test_fid_with_fewer_samples_than_dimensions_and_non_finite_features() -> None:
    a, b = _features(2, 20, 64), _features(3, 20, 64, shift=0.2)
    assert fid_from_features(a, b) == pytest.approx(_tf_fid(a, b), rel=1e-6)  # rank-deficient covariances
    a[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fid_from_features(a, b)


@pytest.mark.parametrize(("n1", "n2", "size"), [(120, 150, 100), (60, 90, 1000)])
def test_kid_matches_torch_fidelity(n1: int, n2: int, size: int) -> None:
    a, b = _features(2, n1), _features(3, n2, shift=0.2)
    mean, std = kid_from_features(a, b, subsets=20, subset_size=size)
    used = min(size, n1, n2)  # torch-fidelity refuses subsets larger than a set: compare with the clamped size
    ref = kid_features_to_metric(a.double(), b.double(), kid_subsets=20, kid_subset_size=used, verbose=False,
                                 rng_seed=2020, kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)
    assert mean > 0 and kid_from_features(a, a.flip(0), subsets=5, subset_size=50)[0] < mean


@pytest.mark.parametrize(("n1", "n2"), [(150, 120), (1200, 1100)])
def test_reported_kid_is_torch_fidelitys_default(n1: int, n2: int) -> None:
    """The KID the stages report: torch-fidelity's 100 subsets of 1000, or of the smaller set's size below that."""
    fake, real = _features(7, n1, d=16), _features(8, n2, d=16, shift=0.2)
    stats = GaussianStats.of(real)
    results = distance_results("rfid", fake, ReferenceStats(stats.mu, stats.sigma, real, stats.n, "key"))
    size = min(1000, n1, n2)
    ref = kid_features_to_metric(fake.double(), real.double(), kid_subsets=100, kid_subset_size=size, verbose=False,
                                 rng_seed=2020, kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1)
    assert results["kid"].value == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert results["kid"].n == n1 and results["kid"].setting == {"subsets": 100, "subset_size": size}
    assert results["rfid"].value == pytest.approx(fid_from_features(fake, real), rel=1e-12)


def test_precision_recall_matches_torch_fidelity() -> None:
    fake, real = _features(4, n=200, d=4, shift=0.5), _features(5, n=230, d=4)
    p, r = precision_recall(fake, real, k=3)
    ref = prc_features_to_metric(fake.double(), real.double(), prc_neighborhood=3, prc_batch_size=10000,
                                 save_cpu_ram=False, verbose=False)
    assert p == pytest.approx(ref["precision"], rel=1e-6) and r == pytest.approx(ref["recall"], rel=1e-6)
    assert 0.0 < p < 1.0 and 0.0 < r <= 1.0 and p != r
    assert precision_recall(fake, real, k=3, block=7) == (p, r)  # blocking does not change the answer
    assert precision_recall(real, real) == (1.0, 1.0)
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(fake[:3], real)


def test_inception_score_matches_torch_fidelity() -> None:
    logits = _features(6, n=100, d=20) * 3
    for shuffle in (True, False):
        mean, std = inception_score_from_logits(logits, splits=10, seed=2020 if shuffle else None)
        ref = isc_features_to_metric(logits, splits=10, shuffle=shuffle, rng_seed=2020)
        assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-9)
        assert std == pytest.approx(ref["inception_score_std"], rel=1e-9)
    confident = torch.eye(10).repeat(10, 1) * 50  # every class equally often, each predicted with certainty
    assert inception_score_from_logits(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


def _write_pngs(folder, images: torch.Tensor) -> None:
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")


def test_image_sources_agree(tmp_path) -> None:
    images = random_images(7, 16, seed=9)
    labels = torch.arange(7) % 2
    np.savez(tmp_path / "batch.npz", arr_0=images.permute(0, 2, 3, 1).numpy())
    _write_pngs(tmp_path / "pngs", images)
    ds = ArrayDataset(images, labels, ["a", "b"])
    sources = [images, images.permute(0, 2, 3, 1).numpy(), tmp_path / "batch.npz", str(tmp_path / "pngs"), ds,
               make_loader(ds, batch_size=3), ((x, y) for x, y in zip(images.split(2), labels.split(2)))]
    expected = content_hash(images)
    for i, source in enumerate(sources):
        batches = list(iter_batches(source, batch_size=4))
        if i < 5:  # map-style sources are batched by us; loaders and iterables keep their own batches
            assert [len(b) for b in batches] == [4, 3], type(source)
        assert torch.equal(torch.cat(batches), images)
    assert all(content_hash(s)[0] == expected[0] for s in sources[:6])
    changed = images.clone()
    changed[3, 1, 2, 2] ^= 1
    assert content_hash(changed)[0] != expected[0]


def test_mixed_sizes_are_batched_separately_and_bad_input_is_named() -> None:
    class Mixed(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.zeros(3, 8 if i < 2 else 12, 8, dtype=torch.uint8), 0

    assert [tuple(b.shape) for b in iter_batches(Mixed(), 4)] == [(2, 3, 8, 8), (3, 3, 12, 8)]
    with pytest.raises(ValueError, match="uint8"):
        list(iter_batches(torch.zeros(2, 3, 8, 8)))
    with pytest.raises(ValueError, match="no images"):
        list(iter_batches(iter([])))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        list(iter_batches("missing.npz"))


def test_cleanfid_backend_is_skipped_with_a_reason_without_its_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fidelity, "cleanfid_weights_path", lambda mode="clean": tmp_path / "inception-2015-12-05.pt")
    out = cleanfid_fid(random_images(4, 16), random_images(4, 16, seed=1))
    assert out["value"] is None and str(tmp_path / "inception-2015-12-05.pt") in out["reason"]
    assert out["backend"] == "clean-fid (clean)"
