"""evaluate_reconstruction: the numbers equal the tokenizer's own reconstruct/tokenize path, outputs are lossless,
missing weights give a reason; throughput helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unit.test_metrics_reference import tiny_extractor
from vfmtok import create_tokenizer
from vfmtok.assets import MissingAssetError
from vfmtok.data import make_loader, synthetic
from vfmtok.metrics import evaluate as evaluate_module
from vfmtok.metrics.codebook import CodebookMeter
from vfmtok.metrics.evaluate import evaluate_reconstruction
from vfmtok.metrics.fidelity import fid_from_features, kid_from_features
from vfmtok.metrics.recon import psnr_per_image, ssim_per_image
from vfmtok.metrics.throughput import measure


@pytest.fixture(scope="module")
def vq():
    torch.manual_seed(0)
    return create_tokenizer("test_vqgan").eval()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VFMTOK_WORK_CACHE", str(tmp_path / "cache"))


def test_discrete_tokenizer_numbers_equal_its_own_paths(vq, tmp_path) -> None:
    data = synthetic(10, size=16, seed=1)
    images = data.tensors()[0]
    ex = tiny_extractor()
    res = evaluate_reconstruction(vq, data, batch_size=4, out_dir=tmp_path / "out", extractor=ex)
    recon = vq.reconstruct(images)
    assert res["n"] == 10
    assert res["psnr"] == pytest.approx(float(psnr_per_image(images, recon).mean()), rel=1e-12)
    assert res["ssim"] == pytest.approx(float(ssim_per_image(images, recon).mean()), rel=1e-12)
    meter = CodebookMeter(vq.spec.codebook_size)
    meter.update(vq.tokenize(images))
    for key, value in meter.compute().items():
        assert res[key] == pytest.approx(value, rel=1e-12)
    assert res["tokens"] == 10 * vq.spec.num_tokens
    feats = lambda x: ex.module(x)[0].detach()  # noqa: E731
    assert res["rfid"] == pytest.approx(fid_from_features(feats(recon), feats(images)), rel=1e-6)
    assert res["rfid_n"] == 10 and res["fid_info"]["weights_sha256"] == "w0"
    results = res["results"]
    assert list(results) == ["psnr", "ssim", "lpips", "rfid", "kid", "codebook_usage", "codebook_perplexity",
                             "codebook_entropy_bits"]
    assert results["rfid"].value == res["rfid"] and results["codebook_usage"].value == res["codebook_usage"]
    kid = kid_from_features(feats(recon), feats(images), subset_size=10)[0]  # same pool3 features, subsets of n
    assert results["kid"].value == pytest.approx(kid, rel=1e-6) and results["kid"].setting["subset_size"] == 10
    assert results["lpips"].value is None and results["lpips"].reason.startswith("LPIPS unavailable")
    with np.load(res["recon_npz"]) as f:  # lossless ADM batch of exactly the reconstructions
        assert np.array_equal(f["arr_0"], recon.permute(0, 2, 3, 1).numpy())


def test_streamed_loader_gives_the_same_numbers(vq) -> None:
    data = synthetic(9, size=16, seed=2)
    a = evaluate_reconstruction(vq, data, batch_size=4, extractor=tiny_extractor())
    b = evaluate_reconstruction(vq, make_loader(data, batch_size=3), batch_size=4, extractor=tiny_extractor())
    for key in ("psnr", "ssim", "n", "codebook_usage", "codebook_perplexity"):
        assert a[key] == pytest.approx(b[key], rel=1e-9)
    assert a["rfid"] == pytest.approx(b["rfid"], rel=1e-3)  # float32 batching noise, amplified: 9 samples, 16 dims


def test_continuous_tokenizer_and_missing_weights(monkeypatch) -> None:
    torch.manual_seed(0)
    tok = create_tokenizer("test_vfmtok_continuous").eval()

    def missing(*args, **kwargs):
        raise MissingAssetError("FID Inception weights not found (test)")

    monkeypatch.setattr(evaluate_module, "fid_extractor", missing)
    res = evaluate_reconstruction(tok, synthetic(4, size=32, seed=3).tensors()[0], batch_size=2)
    assert res["rfid"] is None and "weights not found" in res["rfid_reason"]
    assert res["results"]["kid"].reason == res["rfid_reason"] and "codebook_usage" not in res["results"]
    assert "codebook_usage" not in res and res["n"] == 4 and np.isfinite(res["psnr"])
    off = evaluate_reconstruction(tok, synthetic(2, size=32, seed=3), batch_size=2, fid=False)
    assert off["rfid"] is None and off["rfid_reason"] == "FID disabled in this run"
    with pytest.raises(ValueError, match="expects uint8 images"):
        evaluate_reconstruction(tok, synthetic(2, size=16, seed=3), batch_size=2, fid=False)


def test_throughput_counts_calls_and_tokens() -> None:
    calls = []
    out = measure(lambda: calls.append(1), batch_items=8, tokens_per_item=16, warmup=2, iters=3)
    assert len(calls) == 5 and out.iters == 3 and out.batch_items == 8 and out.device == "cpu"
    assert out.items_per_s > 0 and out.tokens_per_s == pytest.approx(out.items_per_s * 16)
    assert measure(lambda: None, batch_items=1).tokens_per_s is None
