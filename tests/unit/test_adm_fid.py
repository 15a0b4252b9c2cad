"""ADM-evaluator-style scoring (`vfmtok fid`): stored reference statistics, streamed npz samples, bad input."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import random_images
from vfmtok.commands.fid import run_fid
from vfmtok.evaluation.adm import adm_inception_score, evaluate_samples, read_reference_batch, spatial_tap
from vfmtok.metrics.fidelity import GaussianStats, fid_from_features, precision_recall
from vfmtok.metrics.inception import POOL3, FeatureExtractor, fid_extractor
from vfmtok.metrics.sources import NpzStream, iter_batches, load_npz_images


class _Proj(torch.nn.Module):
    """Cheap deterministic stand-in for the Inception: 4x4 average pool, fixed projection to ``dim`` dims."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, dim)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.proj(torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)).relu(),)


def tiny(dim: int = 16) -> FeatureExtractor:
    """A stand-in extractor; 2048-d where stored ADM statistics (2048-d) are involved."""
    return FeatureExtractor(_Proj(dim), (POOL3,), {"extractor": "tiny", "weights_sha256": "t0", "resize": "none"})


def _nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def _folder(path, images: torch.Tensor):
    path.mkdir()
    for i, image in enumerate(_nhwc(images)):
        Image.fromarray(image).save(path / f"{i:04d}.png")
    return path


@pytest.fixture(autouse=True)
def _work_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VFMTOK_WORK_CACHE", str(tmp_path / "work-cache"))


def test_npz_samples_are_memory_mapped_or_streamed_never_loaded_whole(tmp_path) -> None:
    images = random_images(21, 8, seed=3)
    np.savez(tmp_path / "stored.npz", arr_0=_nhwc(images))
    np.savez_compressed(tmp_path / "packed.npz", arr_0=_nhwc(images))
    stored, packed = load_npz_images(tmp_path / "stored.npz"), load_npz_images(tmp_path / "packed.npz")
    assert isinstance(stored, np.memmap) and isinstance(packed, NpzStream)
    for name in ("stored.npz", "packed.npz"):
        assert torch.equal(torch.cat(list(iter_batches(tmp_path / name, 4))), images)


def test_command_fid_and_sfid_match_closed_form_against_stored_statistics(tmp_path) -> None:
    """mu = samples' mu + shift and sigma = samples' sigma give FID = |shift|^2 exactly (and sFID likewise)."""
    samples, ref_images = random_images(4, 32, seed=1), random_images(4, 32, seed=2)
    extractor = fid_extractor()
    with spatial_tap(extractor) as spatial:
        pool3 = extractor(samples)[POOL3]
    stats, sstats = GaussianStats.of(pool3), GaussianStats.of(torch.cat(spatial))
    shift, shift_s = np.zeros(2048), np.zeros(2023)
    # |shift|^2 = 2500, |shift_s|^2 = 10000. With N = 4 < D the null space of sigma leaves ~1e-4 absolute noise in
    # Tr sqrt(sigma sigma) (in any implementation); large shifts keep the check at 1e-6 relative.
    shift[[7, 900]], shift_s[[0, 2000]] = [30.0, 40.0], [-60.0, 80.0]
    np.savez(tmp_path / "ref.npz", arr_0=_nhwc(ref_images), mu=stats.mu + shift, sigma=stats.sigma,
             mu_s=sstats.mu + shift_s, sigma_s=sstats.sigma)
    np.savez(tmp_path / "samples.npz", arr_0=_nhwc(samples))
    out = tmp_path / "fid.json"
    run_fid(tmp_path / "samples.npz", tmp_path / "ref.npz", batch_size=4, device="cpu", out=out)
    record = json.loads(out.read_text())
    assert record["metrics"]["fid"] == pytest.approx(2500.0, rel=1e-6)
    assert record["metrics"]["sfid"] == pytest.approx(10000.0, rel=1e-6)
    assert record["n"] == 4 and record["n_reference"] == 4
    assert record["fid_backend"]["weights_sha256"] == extractor.identity["weights_sha256"]
    assert record["fid_reference"].startswith("stored mu/sigma")
    assert record["reference"]["stored_dtypes"]["mu"] == "float64" and record["code"]["version"]
    assert 0.0 <= record["metrics"]["precision"] <= 1.0 and 0.0 <= record["metrics"]["recall"] <= 1.0


def test_without_stored_statistics_fid_and_pr_equal_the_metric_code_and_folders_agree(tmp_path) -> None:
    samples, ref_images = random_images(9, 16, seed=4), random_images(7, 16, seed=5)
    ex = tiny()
    f_s, f_r = ex(samples)[POOL3], ex(ref_images)[POOL3]
    np.savez(tmp_path / "samples.npz", arr_0=_nhwc(samples))
    np.savez(tmp_path / "ref.npz", arr_0=_nhwc(ref_images))
    res = evaluate_samples(tmp_path / "samples.npz", tmp_path / "ref.npz", batch_size=4, extractor=ex)
    assert res["fid"] == pytest.approx(fid_from_features(f_s, f_r), rel=1e-6)
    assert (res["precision"], res["recall"]) == precision_recall(f_s, f_r, k=3)
    assert res["n"] == 9 and res["n_reference"] == 7 and res["fid_reference"].startswith("statistics of the 7")
    assert res["inception_score"] is None and res["inception_score_reason"]
    folders = evaluate_samples(_folder(tmp_path / "s", samples), _folder(tmp_path / "r", ref_images), batch_size=4,
                               extractor=ex)
    assert folders["fid"] == pytest.approx(res["fid"], rel=1e-12)
    assert (folders["precision"], folders["recall"]) == (res["precision"], res["recall"])
    assert folders["samples_sha256"] == res["samples_sha256"]  # same pixels, whatever the container


def test_stored_statistics_drive_fid_while_pr_uses_the_reference_images(tmp_path) -> None:
    samples, ref_images = random_images(8, 16, seed=6), random_images(6, 16, seed=7)
    ex = tiny(2048)
    f_s, f_r = ex(samples)[POOL3], ex(ref_images)[POOL3]
    stats, shift = GaussianStats.of(f_s), np.zeros(2048)
    shift[[3, 1000]] = [30.0, -40.0]
    mu32 = (stats.mu + shift).astype(np.float32)  # ADM stores float32 mu; it is used as stored
    np.savez(tmp_path / "ref.npz", arr_0=_nhwc(ref_images), mu=mu32, sigma=stats.sigma)
    res = evaluate_samples(_nhwc(samples), tmp_path / "ref.npz", extractor=ex)
    diff = mu32.astype(np.float64) - stats.mu
    assert res["fid"] == pytest.approx(diff @ diff, rel=1e-6)  # not the FID against the 6 arr_0 images
    assert (res["precision"], res["recall"]) == precision_recall(f_s, f_r, k=3)
    assert res["n_reference"] == 6
    assert res["reference"]["stored_dtypes"] == {"arr_0": "uint8", "mu": "float32", "sigma": "float64"}


def test_inception_score_uses_adm_consecutive_chunks() -> None:
    logits = torch.randn(12, 1008, generator=torch.Generator().manual_seed(0)) * 3

    def adm(chunk: np.ndarray) -> float:  # independent float64 NumPy version of ADM's per-chunk score
        p = np.exp(chunk - chunk.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0, keepdims=True))), 1))))

    x = logits.double().numpy()
    expected = np.mean([adm(x[0:5]), adm(x[5:10]), adm(x[10:12])])  # the last partial chunk is kept
    assert adm_inception_score(logits, chunk=5) == pytest.approx(expected, rel=1e-9)


def test_sfid_features_are_the_torchscript_mixed_6_conv_output() -> None:
    """Our tap (Mixed_6d.branch1x1 of torch-fidelity's port) equals the TF graph's mixed_6/conv as computed by the
    TorchScript FID Inception itself, channels [:7] in H, W, C order."""
    from vfmtok.assets import fid_inception_path

    images = random_images(2, 299, seed=9)  # 299 px: the extractor's resize is the identity
    extractor = fid_extractor()
    with spatial_tap(extractor) as spatial:
        extractor(images)
    layers = torch.jit.load(str(fid_inception_path()), map_location="cpu").net.layers
    x = (images.float() - 128) / 128
    with torch.inference_mode():
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1",
                     "mixed_2", "mixed_3", "mixed_4", "mixed_5"):
            x = getattr(layers, name)(x)
        conv = layers.mixed_6.conv(x)  # [2, 192, 17, 17]
    expected = conv.permute(0, 2, 3, 1)[..., :7].reshape(2, -1)
    assert spatial[0].shape == (2, 2023)
    torch.testing.assert_close(spatial[0], expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------- bad input
def test_reference_mu_of_wrong_dimension_is_a_clear_error_and_loses_nothing(tmp_path) -> None:
    np.savez(tmp_path / "ref.npz", arr_0=_nhwc(random_images(4, 16)), mu=np.zeros(1000), sigma=np.eye(1000))
    np.savez(tmp_path / "samples.npz", arr_0=_nhwc(random_images(4, 16, seed=1)))
    out = tmp_path / "fid.json"
    out.write_text('{"previous": true}')
    with pytest.raises(ValueError, match=r"'mu' has shape \(1000,\), expected \(2048,\)"):
        run_fid(tmp_path / "samples.npz", tmp_path / "ref.npz", out=out)
    assert json.loads(out.read_text()) == {"previous": True}
    np.savez(tmp_path / "half.npz", arr_0=_nhwc(random_images(4, 16)), mu=np.zeros(2048))
    with pytest.raises(ValueError, match="but not \\['sigma'\\]"):
        read_reference_batch(tmp_path / "half.npz")


def test_samples_of_wrong_dtype_or_size_are_rejected_before_any_work(tmp_path) -> None:
    np.savez(tmp_path / "ref.npz", arr_0=_nhwc(random_images(4, 16)))
    np.savez(tmp_path / "float.npz", arr_0=_nhwc(random_images(4, 16)).astype(np.float32))
    np.savez(tmp_path / "big.npz", arr_0=_nhwc(random_images(4, 32)))
    out = tmp_path / "fid.json"
    with pytest.raises(ValueError, match="uint8 .*float32"):
        run_fid(tmp_path / "float.npz", tmp_path / "ref.npz", out=out)
    with pytest.raises(ValueError, match="32x32 px but the reference images are 16x16"):
        run_fid(tmp_path / "big.npz", tmp_path / "ref.npz", out=out)
    with pytest.raises(ValueError, match="32x32 px, but the reference images are 16x16"):  # folders: found in-stream
        evaluate_samples(_folder(tmp_path / "s", random_images(4, 32)), tmp_path / "ref.npz", extractor=tiny())
    with pytest.raises(FileNotFoundError, match="missing.npz do not exist"):
        run_fid(tmp_path / "missing.npz", tmp_path / "ref.npz", out=out)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
        run_fid(tmp_path / "big.npz", tmp_path / "broken.npz", out=out)
    assert not out.exists()
    assert zipfile.is_zipfile(tmp_path / "ref.npz")
