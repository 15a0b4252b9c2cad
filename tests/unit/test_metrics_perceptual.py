"""LPIPS: our network loaded from weight files equals the lpips package's on the same (random) VGG16 weights, and
the reconstruction evaluation reports it whenever a network or the weight files exist (else a reason)."""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import lpips
import pytest
import torch
import torchvision

from benchmarks.records import stage_rows
from tests.conftest import random_images
from vfmtok import create_tokenizer
from vfmtok.data import synthetic
from vfmtok.evaluation.recon import evaluate_reconstruction_stream
from vfmtok.lpips_vgg import VGG16_FILE, load_lpips, lpips_unavailable_reason
from vfmtok.metrics import perceptual
from vfmtok.metrics.evaluate import evaluate_reconstruction
from vfmtok.metrics.perceptual import lpips_per_image


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A torch hub folder holding random VGG16 weights (torchvision's format), and the lpips package's network built
    on that very VGG16 (its ``pnet_rand`` backbone) with the package's linear heads."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vgg = torchvision.models.vgg16()
        folder = tmp_path_factory.mktemp("hub")
        (folder / "checkpoints").mkdir()
        torch.save({k: v for k, v in vgg.state_dict().items() if k.startswith("features.")},
                   folder / "checkpoints" / VGG16_FILE)
        with mock.patch.object(lpips.pretrained_networks.tv, "vgg16", lambda **_: vgg):
            package = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    return folder, package.eval()


@pytest.fixture(scope="module")
def vq() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_tokenizer("test_vqgan").eval()


def test_our_lpips_equals_the_package_on_the_same_weights(hub) -> None:
    folder, package = hub
    ours = load_lpips(folder / "checkpoints" / VGG16_FILE)
    real, recon = random_images(5, 32, seed=1), random_images(5, 32, seed=2)
    with torch.no_grad():
        expected = package(real.float() / 127.5 - 1, recon.float() / 127.5 - 1).flatten().double()
    got = lpips_per_image(ours, real, recon)
    assert (expected > 0).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(lpips_per_image(ours, real, real), torch.zeros(5, dtype=torch.float64))


def test_evaluation_reports_lpips_with_a_network(vq, hub, tmp_path) -> None:
    net = load_lpips(hub[0] / "checkpoints" / VGG16_FILE)
    data = synthetic(8, size=16, seed=3)
    images = data.tensors()[0]
    res = evaluate_reconstruction(vq, images, batch_size=3, fid=False, lpips_net=net)
    expected = float(lpips_per_image(net, images, vq.reconstruct(images)).mean())
    result = res["results"]["lpips"]
    assert result.value == pytest.approx(expected, rel=1e-5) and result.n == 8 and res["lpips"] == result.value
    row = next(r for r in stage_rows(res["results"]) if r["metric"] == "lpips")
    assert row == {"metric": "lpips", "value": result.value, "n": 8, "setting": {}, "reason": None}
    streamed = evaluate_reconstruction_stream(vq, data, batch_size=4, out_dir=tmp_path / "s", fid=False, lpips_net=net)
    assert streamed["results"]["lpips"].value == pytest.approx(result.value, rel=1e-6)
    assert streamed["results"]["psnr"] == res["results"]["psnr"]


def test_lpips_follows_the_weight_files(vq, hub, tmp_path, monkeypatch) -> None:
    images = synthetic(4, size=16, seed=4).tensors()[0]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no VGG16 weights here
    reason = lpips_unavailable_reason()
    assert reason == f"LPIPS needs torchvision's VGG16 weights ({VGG16_FILE} in the torch hub checkpoints folder; " \
                     "not available offline)"  # no machine path: the reason reaches committed tables
    missing = evaluate_reconstruction(vq, images, batch_size=2, fid=False)["results"]["lpips"]
    assert missing.value is None and missing.reason == f"LPIPS unavailable: {reason}"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub[0]))  # the weights exist: LPIPS by default
    monkeypatch.setattr(perceptual, "_networks", {})
    assert lpips_unavailable_reason() is None
    found = evaluate_reconstruction(vq, images, batch_size=2, fid=False)["results"]["lpips"]
    assert found.reason is None and found.value > 0
    assert "linear-layer weights" in lpips_unavailable_reason(linear_weights=tmp_path / "missing.pth")
