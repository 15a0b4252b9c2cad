"""Frozen encoders: frozen state, output shapes, level semantics and preprocessing."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_images
from vfmtok.encoders import FeatureOutput, create_encoder, list_encoders
from vfmtok.encoders.inception import InceptionEncoder
from vfmtok.fid_inception import random_fid_inception
from vfmtok.images import to_model_range


def _assert_frozen(enc) -> None:
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert all(not p.requires_grad for p in enc.parameters())
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    out = enc(x)
    assert all(t.grad_fn is None and not t.requires_grad for t in out.levels)


def test_registry_lists_the_encoders() -> None:
    names = list_encoders()
    for name in ("dinov2_vitl14_reg4", "dinov2_vitb14", "clip_vitb16", "siglip_vitb16", "inception_v3_fid",
                 "test_vit_tiny"):
        assert name in names
    with pytest.raises(KeyError, match="did you mean"):
        create_encoder("dinov2_vitl14_reg")


def test_tiny_vit_shapes_and_frozen() -> None:
    enc = create_encoder("test_vit_tiny")
    assert enc.level_channels == (32, 32) and enc.level_sizes == ((8, 8), (8, 8))
    out = enc(to_model_range(random_images(2, 32)))
    assert isinstance(out, FeatureOutput)
    assert [tuple(t.shape) for t in out.levels] == [(2, 32, 8, 8), (2, 32, 8, 8)]
    assert out.semantic_target.shape == (2, 64, 32)
    torch.testing.assert_close(out.semantic_target[:, 9], out.levels[-1][:, :, 1, 1])  # row-major tokens
    _assert_frozen(enc)


def test_last_level_is_final_norm_output_and_early_levels_are_raw() -> None:
    normed = create_encoder("test_vit_tiny", levels=(0, 2, 3))
    raw = create_encoder("test_vit_tiny", levels=(0, 2, 3), last_norm=False)
    assert normed.weights_id() == raw.weights_id()  # random weights come from a fixed seed
    x = to_model_range(random_images(2, 32, seed=3))
    a, b = normed(x).levels, raw(x).levels
    for i in range(2):
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
    expected = normed.model.norm(b[-1].flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b[-1].shape)
    torch.testing.assert_close(a[-1], expected)
    assert not torch.allclose(a[-1], b[-1])
    # the final LayerNorm makes every token zero-mean over channels (its bias is zero at init)
    torch.testing.assert_close(a[-1].mean(1), torch.zeros(2, 8, 8), atol=1e-5, rtol=0)


def test_random_weights_are_seeded_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = create_encoder("test_vit_tiny")
    assert torch.equal(torch.rand(3), expected)
    assert a.weights_id() == create_encoder("test_vit_tiny").weights_id()
    assert a.weights_id() != create_encoder("test_vit_tiny", seed=1).weights_id()


def test_resize_to_input_size() -> None:
    enc = create_encoder("test_vit_tiny", input_size=48)
    assert enc.level_sizes == ((12, 12), (12, 12))
    out = enc(to_model_range(random_images(1, 64)))  # resized 64 -> 48
    assert out.levels[0].shape == (1, 32, 12, 12)


@pytest.mark.parametrize(("name", "mean", "std"), [
    ("dinov2_vitb14_reg4", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("clip_vitb16", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ("siglip_vitb16", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
])
def test_each_model_uses_its_own_normalisation(name: str, mean, std) -> None:
    enc = create_encoder(name, pretrained=False, depth=1, levels=(0,))  # one block: cheap to build
    torch.testing.assert_close(enc.mean.flatten(), torch.tensor(mean))
    torch.testing.assert_close(enc.std.flatten(), torch.tensor(std))
    x = torch.full((1, 3, enc.input_size, enc.input_size), 0.2)
    expected = ((0.2 + 1) / 2 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(enc.preprocess(x)[0, :, 0, 0], expected)


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file"):
        create_encoder("test_vit_tiny", pretrained=str(tmp_path / "nope.safetensors"))


def test_local_weights_file_is_loaded(tmp_path) -> None:
    source = create_encoder("test_vit_tiny", seed=3)
    torch.save(source.model.state_dict(), tmp_path / "tiny.pth")
    loaded = create_encoder("test_vit_tiny", pretrained=str(tmp_path / "tiny.pth"))
    assert loaded.weights_id() == source.weights_id() != create_encoder("test_vit_tiny").weights_id()


def test_unreachable_hub_fails_fast_with_advice(monkeypatch) -> None:
    from vfmtok.encoders import timm_vit

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(timm_vit, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1"):
        create_encoder("test_vit_tiny", pretrained=True)


def test_inception_levels_and_frozen() -> None:
    enc = create_encoder("inception_v3_fid", pretrained=False, input_size=299)
    assert enc.level_channels == (288, 768, 2048)
    assert enc.level_sizes == ((35, 35), (17, 17), (8, 8))
    small = create_encoder("inception_v3_fid", pretrained=False, input_size=139)
    out = small(to_model_range(random_images(2, 32)))  # CIFAR-sized input upsampled to 139
    assert [tuple(t.shape) for t in out.levels] == [(2, 288, 15, 15), (2, 768, 7, 7), (2, 2048, 3, 3)]
    assert out.semantic_target.shape == (2, 9, 2048)
    _assert_frozen(small)
    with pytest.raises(ValueError, match="Mixed blocks"):
        create_encoder("inception_v3_fid", pretrained=False, levels=("Mixed_6e", "Mixed_5d"))


def test_inception_pooled_last_level_is_the_fid_feature() -> None:
    torch.manual_seed(0)
    network = random_fid_inception()
    enc = InceptionEncoder(network, input_size=299)
    images = random_images(1, 32, seed=4)
    pooled = enc(to_model_range(images)).levels[-1].mean((2, 3))  # [1, 2048]
    (fid_feature,) = network.eval()(images)  # torch-fidelity's own preprocessing from uint8
    torch.testing.assert_close(pooled, fid_feature, rtol=1e-4, atol=1e-4)
