"""The offline FID Inception: our loading path reproduces the TorchScript graph; FID end to end; caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from vfmtok.assets import MissingAssetError, fid_inception_path
from vfmtok.data import cifar10, kodak
from vfmtok.metrics import reference
from vfmtok.metrics.fidelity import fid_from_features, inception_features
from vfmtok.metrics.inception import inception_score_unavailable_reason, load_fid_inception


@pytest.fixture(scope="module")
def torchscript() -> torch.jit.ScriptModule:
    try:
        path = fid_inception_path()
    except MissingAssetError as e:
        pytest.skip(str(e))
    return torch.jit.load(str(path), map_location="cpu").eval()


@pytest.fixture(scope="module")
def extractor(torchscript):
    return load_fid_inception()


def _torchscript_features(ts, images: torch.Tensor) -> torch.Tensor:
    x = images.float()
    if x.shape[-2:] != (299, 299):
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    with torch.inference_mode():
        return ts((x - 128.0) / 128.0)


def test_pool3_features_match_torchscript(torchscript, extractor, data_root) -> None:
    cifar = torch.from_numpy(np.ascontiguousarray(cifar10("test", root=data_root).images[:6]))
    photos = torch.from_numpy(np.ascontiguousarray(kodak(root=data_root, size=299).images[:3]))
    for images in (cifar, photos):
        ours = inception_features(images, extractor=extractor)
        ref = _torchscript_features(torchscript, images)
        assert ours.shape == (len(images), 2048)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_reference_cache_is_keyed_by_content(extractor, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VFMTOK_WORK_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    first = reference.reference_features(images)
    assert len(list((tmp_path / "inception").glob("*.pt"))) == 1
    assert torch.equal(reference.reference_features(images), first)  # served from the cache
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    reference.reference_features(changed)
    assert len(list((tmp_path / "inception").glob("*.pt"))) == 2  # one changed pixel: a new entry
    monkeypatch.setattr(reference, "_weights_sha256", lambda: "other-weights")
    reference.reference_features(images)
    assert len(list((tmp_path / "inception").glob("*.pt"))) == 3  # other weights: a new entry


def test_inception_score_is_unavailable_not_invented(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("VFMTOK_INCEPTION_WEIGHTS", str(tmp_path / "absent.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reason = inception_score_unavailable_reason()
    assert reason and "logits" in reason
    out = reference.inception_score(torch.zeros(10, 3, 32, 32, dtype=torch.uint8))
    assert out["value"] is None and out["reason"] == reason


@pytest.mark.slow
def test_cifar10_train5000_vs_test5000_matches_torch_fidelity(extractor, data_root) -> None:
    """FID(train[:5000], test[:5000]) by our path equals torch-fidelity's calculate_metrics (same weights)."""
    import torch_fidelity

    from vfmtok.metrics.inception import converted_weights_path

    train = torch.from_numpy(np.ascontiguousarray(cifar10("train", root=data_root, order="official").images[:5000]))
    test = torch.from_numpy(np.ascontiguousarray(cifar10("test", root=data_root, order="official").images[:5000]))
    ours = fid_from_features(inception_features(train, extractor=extractor),
                             inception_features(test, extractor=extractor))

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    ref = torch_fidelity.calculate_metrics(input1=Images(train), input2=Images(test), fid=True, cuda=False,
                                           feature_extractor_weights_path=str(converted_weights_path()),
                                           cache=False, verbose=False, batch_size=64)
    print(f"FID CIFAR-10 train[:5000] vs test[:5000]: ours {ours:.4f}, torch-fidelity "
          f"{ref['frechet_inception_distance']:.4f}")
    assert ours == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)
