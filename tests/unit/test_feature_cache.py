"""The frozen-feature cache: equal to fresh features, flip variant, keys, atomic writes, dataset wrapper."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import random_images
from vfmtok.encoders import create_encoder
from vfmtok.encoders.feature_cache import CachedFeatureDataset, FeatureCache, build_feature_cache
from vfmtok.images import to_model_range

N = 10


@pytest.fixture
def dataset() -> list[tuple[torch.Tensor, int]]:
    images = random_images(N, 32, seed=7)
    return [(images[i], i % 3) for i in range(N)]


@pytest.fixture
def encoder():
    return create_encoder("test_vit_tiny")


def _fresh(encoder, image: torch.Tensor) -> list[torch.Tensor]:
    return [t[0] for t in encoder(to_model_range(image[None])).levels]


def _assert_fp16_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=2e-3, atol=2e-3)


def test_cached_features_equal_fresh_ones(tmp_path, dataset, encoder) -> None:
    cache = build_feature_cache(encoder, dataset, "fp-a", root=tmp_path, batch_size=4)
    assert cache.is_complete(["plain"]) and not cache.is_complete(["hflip"])
    for i in (0, 5, N - 1):
        _assert_fp16_close(cache.read(i), _fresh(encoder, dataset[i][0]))
    assert cache.path("plain").stat().st_size == N * cache.row_size * 2  # fp16
    with pytest.raises(IndexError):
        cache.read(N)
    with pytest.raises(FileNotFoundError, match="hflip"):
        cache.read(0, flipped=True)


def test_flip_variant_equals_features_of_flipped_images(tmp_path, dataset, encoder) -> None:
    cache = build_feature_cache(encoder, dataset, "fp-a", root=tmp_path, flip=True, batch_size=3)
    for i in (1, 8):
        flipped = _fresh(encoder, dataset[i][0].flip(-1))
        _assert_fp16_close(cache.read(i, flipped=True), flipped)
        assert not torch.allclose(cache.read(i, flipped=True)[0], cache.read(i)[0], atol=1e-2)


def test_key_changes_invalidate(tmp_path, dataset, encoder) -> None:
    base = build_feature_cache(encoder, dataset, "fp-a", root=tmp_path)
    other_data = FeatureCache.for_encoder(encoder, "fp-b", N, tmp_path)
    other_weights = FeatureCache.for_encoder(create_encoder("test_vit_tiny", seed=1), "fp-a", N, tmp_path)
    other_size = FeatureCache.for_encoder(create_encoder("test_vit_tiny", input_size=40), "fp-a", N, tmp_path)
    dirs = {base.directory, other_data.directory, other_weights.directory, other_size.directory}
    assert len(dirs) == 4
    assert not any(c.is_complete() for c in (other_data, other_weights, other_size))
    # the same key finds the finished cache and computes nothing
    same = FeatureCache.for_encoder(encoder, "fp-a", N, tmp_path)
    assert same.directory == base.directory and same.is_complete()

    same._write = lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed"))
    same.build(encoder, dataset)
    # a wrong-sized dataset for the same key is rejected
    with pytest.raises(ValueError, match="items"):
        FeatureCache.for_encoder(encoder, "fp-a", N + 1, tmp_path).build(encoder, dataset)


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path, dataset, encoder) -> None:
    class Broken(list):
        def __getitem__(self, i):
            if i >= 6:
                raise RuntimeError("corrupt image")
            return super().__getitem__(i)

    cache = FeatureCache.for_encoder(encoder, "fp-a", N, tmp_path)
    with pytest.raises(RuntimeError, match="corrupt image"):
        cache.build(encoder, Broken(dataset), batch_size=4)
    assert not cache.is_complete()
    assert not cache.path("plain").exists() and not (cache.directory / "meta.json").exists()
    assert list(cache.directory.iterdir()) == []  # no temp files left behind


def test_dataset_wrapper_flips_with_matching_features(tmp_path, dataset, encoder) -> None:
    cache = build_feature_cache(encoder, dataset, "fp-a", root=tmp_path, flip=True)
    wrapped = CachedFeatureDataset(dataset, cache, flip=True, seed=3)
    draws = [wrapped.flipped(i) for i in range(N)]
    assert any(draws) and not all(draws)
    assert draws == [CachedFeatureDataset(dataset, cache, flip=True, seed=3).flipped(i) for i in range(N)]
    wrapped.set_epoch(1)
    assert [wrapped.flipped(i) for i in range(N)] != draws
    wrapped.set_epoch(0)
    for i in range(N):
        image, label, feats = wrapped[i]
        assert label == dataset[i][1]
        assert torch.equal(image, dataset[i][0].flip(-1) if draws[i] else dataset[i][0])
        _assert_fp16_close(feats, _fresh(encoder, image))
    images, labels, feats = next(iter(DataLoader(wrapped, batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,)
    assert [tuple(f.shape) for f in feats] == [(4, 32, 8, 8), (4, 32, 8, 8)]


def test_wrapper_requires_the_flip_variant(tmp_path, dataset, encoder) -> None:
    cache = build_feature_cache(encoder, dataset, "fp-a", root=tmp_path, flip=False)
    with pytest.raises(FileNotFoundError, match="flip=True"):
        CachedFeatureDataset(dataset, cache, flip=True)
    assert len(CachedFeatureDataset(dataset, cache)) == N


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete", "manifest"])
def test_damaged_cache_is_quarantined_and_rebuilt(tmp_path, dataset, encoder, damage) -> None:
    root = tmp_path / "features"
    cache = build_feature_cache(encoder, dataset, "fp-a", root=root, batch_size=4)
    want = cache.read(3)
    target = cache.directory / "MANIFEST.json" if damage == "manifest" else cache.path("plain")
    raw = target.read_bytes()
    if damage == "truncate" or damage == "manifest":
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "edit":
        target.write_bytes(raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:])  # same size, one byte changed
    else:
        target.unlink()
    rebuilt = build_feature_cache(encoder, dataset, "fp-a", root=root, batch_size=4)
    assert rebuilt.is_complete() and torch.equal(rebuilt.read(3)[0], want[0])
    moved = list((tmp_path / ".quarantine" / "features").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith(cache.directory.name)  # kept aside, never deleted


def test_adding_the_flip_variant_keeps_the_plain_one(tmp_path, dataset, encoder) -> None:
    cache = build_feature_cache(encoder, dataset, "fp-a", root=tmp_path, batch_size=4)
    plain = cache.path("plain").read_bytes()
    both = build_feature_cache(encoder, dataset, "fp-a", root=tmp_path, flip=True, batch_size=4)
    assert both.is_complete(["plain", "hflip"]) and both.path("plain").read_bytes() == plain
