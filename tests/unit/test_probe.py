"""Linear probing: seeded determinism, last-epoch protocol, feature taps, feature cache keyed by weights + data."""

from __future__ import annotations

import pytest
import torch

from vfmtok import create_tokenizer
from vfmtok.data import synthetic
from vfmtok.interface import Encoded
from vfmtok.metrics.probe import cached_features, extract_probe_features, linear_probe, probe


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VFMTOK_WORK_CACHE", str(tmp_path))


@pytest.fixture
def vq():
    torch.manual_seed(0)
    return create_tokenizer("test_vqgan").eval()


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 8, generator=g) + torch.nn.functional.one_hot(y, 8).float() * 3, y


def test_linear_probe_is_seeded_and_learns() -> None:
    (x, y), (tx, ty) = _blobs(200, 0), _blobs(100, 1)
    acc1 = linear_probe(x, y, tx, ty, epochs=30, lr=1e-2, batch_size=64, seed=1)
    acc2 = linear_probe(x, y, tx, ty, epochs=30, lr=1e-2, batch_size=64, seed=1)
    assert acc1 == acc2 and acc1 > 0.8
    shuffled = linear_probe(x, y[torch.randperm(200, generator=torch.Generator().manual_seed(0))], tx, ty,
                            epochs=30, lr=1e-2, batch_size=64, seed=1)
    assert shuffled < 0.6  # labels carry the signal: no leakage from the test split
    with pytest.raises(ValueError, match="equal D"):
        linear_probe(x, y, tx[:, :4], ty)


def test_probe_reports_its_protocol_and_is_deterministic(vq) -> None:
    train, test = synthetic(40, size=16, num_classes=4, seed=1), synthetic(20, size=16, num_classes=4, seed=2)
    first = probe(vq, train, test, features="pre_quant", epochs=3, batch_size=16, seed=3)
    again = probe(vq, train, test, features="pre_quant", epochs=3, batch_size=16, seed=3)
    assert first == again and 0.0 <= first["value"] <= 1.0
    assert first["tap"] == "Encoded.aux['pre_quant']" and first["reported"] == "top-1 after the last epoch"
    assert (first["n_train"], first["n_test"]) == (40, 20)
    codes = probe(vq, train, test, features="codes", epochs=3, batch_size=16, seed=3)
    assert codes["tap"] == "Encoded.latents (quantized codes)"
    with pytest.raises(ValueError, match="needs labels"):
        probe(vq, train.tensors()[0], test, epochs=1)


def test_features_are_pooled_latents_and_fall_back_when_no_pre_quant(vq, monkeypatch) -> None:
    images, labels = synthetic(6, size=16, seed=4).tensors()
    feats = extract_probe_features(vq, (images, labels), batch_size=4)
    with torch.inference_mode():
        enc = vq.encode(vq.prepare(images))
    torch.testing.assert_close(feats["codes"], enc.latents.mean(1))
    torch.testing.assert_close(feats["pre_quant"], enc.aux["pre_quant"].mean(1))
    assert torch.equal(feats.labels, labels)
    original = vq.encode
    monkeypatch.setattr(vq, "encode", lambda x: Encoded(original(x).indices, original(x).latents, {}))
    fallback = extract_probe_features(vq, (images, labels))
    assert fallback.taps["pre_quant"] == "Encoded.latents (no pre_quant exposed)"
    torch.testing.assert_close(fallback["pre_quant"], fallback["codes"])


def test_feature_cache_is_keyed_by_weights_and_data(vq, monkeypatch) -> None:
    data = synthetic(8, size=16, seed=5)
    first = cached_features(vq, data)
    encode = vq.encode
    monkeypatch.setattr(vq, "encode", lambda x: (_ for _ in ()).throw(AssertionError("re-encoded")))
    hit = cached_features(vq, data)  # from the cache: no encode
    assert torch.equal(hit["pre_quant"], first["pre_quant"]) and hit.taps == first.taps
    monkeypatch.setattr(vq, "encode", encode)
    with torch.no_grad():
        next(vq.parameters()).add_(0.01)  # other weights: recomputed
    assert not torch.equal(cached_features(vq, data)["pre_quant"], first["pre_quant"])
    calls = []
    monkeypatch.setattr(vq, "encode", lambda x: calls.append(1) or encode(x))
    cached_features(vq, synthetic(8, size=16, seed=6))  # other data: recomputed
    assert calls
