"""Reference-statistics cache (content-addressed, invalidated by any input change), rFID/gFID entry points,
ADM npz export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import random_images
from vfmtok.data import ArrayDataset, make_loader
from vfmtok.metrics import reference
from vfmtok.metrics.fidelity import fid_from_features, kid_from_features, precision_recall
from vfmtok.metrics.inception import FeatureExtractor
from vfmtok.metrics.reference import NpzWriter, gfid, reference_statistics, rfid, save_npz


class _Pool(torch.nn.Module):
    """A cheap deterministic stand-in for Inception: 4x4 average pool, fixed projection to 16 dims."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, 16)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        self.calls += len(x)
        return (self.proj(torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)).relu(),)


def tiny_extractor(weights: str = "w0", resize: str = "none") -> FeatureExtractor:
    return FeatureExtractor(_Pool(), ("2048",), {"extractor": "tiny", "weights_sha256": weights, "resize": resize})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VFMTOK_WORK_CACHE", str(tmp_path))
    return tmp_path / "fid_reference"


def _entries(folder) -> int:
    return len(list(folder.glob("*/MANIFEST.json")))


def test_reference_cache_is_keyed_by_content_weights_and_resize(cache) -> None:
    images = random_images(12, 16, seed=1)
    ex = tiny_extractor()
    first = reference_statistics(images, extractor=ex)
    assert _entries(cache) == 1 and ex.module.calls == 12 and first.n == 12
    again = reference_statistics(ArrayDataset(images, [0] * 12, ["x"]), extractor=ex)  # same pixels, other type
    assert ex.module.calls == 12 and again.key == first.key  # served from the cache: no extraction
    assert torch.equal(again.features, first.features) and np.array_equal(again.sigma, first.sigma)
    changed = images.clone()
    changed[5, 0, 3, 3] ^= 1
    assert reference_statistics(changed, extractor=ex).key != first.key and _entries(cache) == 2
    assert reference_statistics(images[:11], extractor=ex).key != first.key and _entries(cache) == 3
    assert reference_statistics(images, extractor=tiny_extractor(weights="w1")).key != first.key
    assert reference_statistics(images, extractor=tiny_extractor(resize="bicubic")).key != first.key
    assert _entries(cache) == 5


def test_reference_statistics_are_right_and_streamed_sources_are_cached(cache) -> None:
    images = random_images(10, 16, seed=2)
    ex = tiny_extractor()
    stats = reference_statistics(make_loader(ArrayDataset(images, [0] * 10, ["x"]), batch_size=4), extractor=ex)
    feats = ex.module(images)[0].detach()
    torch.testing.assert_close(stats.features, feats)  # batched 4 + 4 + 2 vs all at once: float32 rounding only
    f64 = stats.features.double().numpy()
    np.testing.assert_allclose(stats.mu, f64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(f64, rowvar=False), rtol=1e-10)
    calls = ex.module.calls
    assert reference_statistics(images, extractor=ex).key == stats.key and ex.module.calls == calls


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_damaged_cache_entry_is_quarantined_and_recomputed(cache, caplog, damage) -> None:
    images = random_images(6, 16, seed=3)
    ex = tiny_extractor()
    first = reference_statistics(images, extractor=ex)
    stats = next(cache.glob("*/stats.pt"))
    raw = stats.read_bytes()
    if damage == "truncate":
        stats.write_bytes(raw[:9])
    elif damage == "edit":
        stats.write_bytes(raw[:-64] + bytes(b ^ 1 for b in raw[-64:]))  # same size
    else:
        stats.unlink()
    with caplog.at_level("WARNING", logger="vfmtok.store"):
        again = reference_statistics(images, extractor=ex)
    assert again.key == first.key and ex.module.calls == 12 and np.array_equal(again.sigma, first.sigma)
    assert len(caplog.records) == 1 and "FID reference statistics" in caplog.text and "stats.pt" in caplog.text
    assert len(list((cache.parent / ".quarantine" / "fid_reference").iterdir())) == 1  # moved aside, not deleted


def test_rfid_and_gfid_record_counts_and_match_the_features(cache) -> None:
    real, fake = random_images(16, 16, seed=4), random_images(16, 16, seed=5)
    ex = tiny_extractor()
    expected = fid_from_features(ex.module(fake)[0].detach(), ex.module(real)[0].detach())
    out = rfid(fake, real, extractor=ex)
    assert out["value"] == pytest.approx(expected, rel=1e-9) and out["n"] == out["n_reference"] == 16
    assert out["metric"] == "rfid" and out["weights_sha256"] == "w0" and out["extractor"] == "tiny"
    g = gfid(fake[:10], real, extractor=ex)
    assert g["n"] == 10 and g["n_reference"] == 16 and g["value"] > 0
    with pytest.raises(ValueError, match="10 reconstructions and 16 real"):
        rfid(fake[:10], real, extractor=ex)
    k = reference.kid(fake, real, subsets=5, subset_size=8, extractor=ex)
    assert k["value"] == pytest.approx(kid_from_features(ex.module(fake)[0].detach(), ex.module(real)[0].detach(),
                                                         subsets=5, subset_size=8)[0], rel=1e-9)
    results = reference.sample_results(fake[:10], real, extractor=ex, isc=False)
    f, r = ex.module(fake[:10])[0].detach(), ex.module(real)[0].detach()
    assert list(results) == ["gfid", "kid", "precision", "recall"] and results["gfid"].value == g["value"]
    assert (results["precision"].value, results["recall"].value) == precision_recall(f, r)
    assert results["kid"].n == 10 and results["kid"].setting == {"subsets": 100, "subset_size": 10}  # min(n)
    assert results["kid"].value == pytest.approx(kid_from_features(f, r, subset_size=10)[0], rel=1e-12)


def test_npz_export_is_adm_format_and_atomic(tmp_path) -> None:
    images = random_images(9, 16, seed=6)
    labels = torch.arange(9) % 3
    path = save_npz(tmp_path / "out" / "samples.npz", ArrayDataset(images, labels, ["a", "b", "c"]), labels)
    with np.load(path) as f:
        assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (9, 16, 16, 3)
        assert np.array_equal(f["arr_0"], images.permute(0, 2, 3, 1).numpy())
        assert np.array_equal(f["arr_1"], labels.numpy())
    with pytest.raises(RuntimeError), NpzWriter(tmp_path / "broken.npz") as writer:
        writer.add(images[:4])
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written, no temporary left
    with pytest.raises(ValueError, match="one npz holds one size"), NpzWriter(tmp_path / "x.npz") as writer:
        writer.add(images[:2])
        writer.add(random_images(2, 8))
