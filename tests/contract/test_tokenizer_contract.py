"""The contract every registered ``test_*`` tokenizer must satisfy."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_images
from vfmtok import create_tokenizer, from_pretrained, list_tokenizers
from vfmtok.images import to_model_range

NAMES = list_tokenizers("test_*")


def _build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_tokenizer(name)


def _batch(model, n: int = 2) -> torch.Tensor:
    return to_model_range(random_images(n, model.spec.image_size, seed=1))


def test_registry_has_test_variants() -> None:
    assert {"test_vqgan", "test_llamagen_vq"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_consistent(name: str) -> None:
    model = _build(name)
    spec = model.spec
    assert spec.name == name
    assert spec.trainable_params == sum(p.numel() for _, p in model.trainable_named_parameters()) > 0
    if spec.token_grid is not None:
        assert spec.token_grid[0] * spec.token_grid[1] == spec.num_tokens


@pytest.mark.parametrize("name", NAMES)
def test_encode_decode_shapes_and_dtypes(name: str) -> None:
    model = _build(name).eval()
    spec = model.spec
    x = _batch(model)
    with torch.no_grad():
        enc = model.encode(x)
        dec = model.decode(enc.latents)
    assert enc.latents.shape == (2, spec.num_tokens, spec.latent_dim)
    assert enc.latents.dtype == torch.float32
    if spec.is_discrete:
        assert enc.indices.dtype == torch.int64 and enc.indices.shape == (2, spec.num_tokens)
        assert int(enc.indices.min()) >= 0 and int(enc.indices.max()) < spec.codebook_size
        assert model.codebook().shape == (spec.codebook_size, spec.latent_dim)
    else:
        assert enc.indices is None
    assert dec.image.shape == x.shape and dec.image.dtype == torch.float32


@pytest.mark.parametrize("name", [n for n in NAMES if create_tokenizer(n).spec.is_discrete])
def test_decode_indices_equals_eval_reconstruction(name: str) -> None:
    model = _build(name).eval()
    x = _batch(model)
    with torch.no_grad():
        enc = model.encode(x)
        from_latents = model.decode(enc.latents).image
        from_indices = model.decode_indices(enc.indices).image
        lookup = model.indices_to_latents(enc.indices)
    torch.testing.assert_close(lookup, enc.latents, rtol=0, atol=1e-6)
    torch.testing.assert_close(from_indices, from_latents, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_uint8_edges(name: str) -> None:
    model = _build(name).eval()
    images = random_images(2, model.spec.image_size, seed=2)
    recon = model.reconstruct(images)
    assert recon.dtype == torch.uint8 and recon.shape == images.shape
    if model.spec.is_discrete:
        tokens = model.tokenize(images)
        assert torch.equal(model.detokenize(tokens), recon)
    other = random_images(1, model.spec.image_size + 4)
    with pytest.raises(ValueError, match="expects uint8 images"):
        model.prepare(other, require_size=True)
    if model.accepts_any_size:  # resized inside: the output has the model's size
        assert model.reconstruct(other).shape == (1, 3, model.spec.image_size, model.spec.image_size)
    else:
        with pytest.raises(ValueError, match="expects uint8 images"):
            model.reconstruct(other)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name: str) -> None:
    a, b = _build(name, seed=3).eval(), _build(name, seed=3).eval()
    x = _batch(a)
    with torch.no_grad():
        ea, eb = a.encode(x), b.encode(x)
        assert torch.equal(ea.latents, eb.latents)
        if ea.indices is not None:
            assert torch.equal(ea.indices, eb.indices)
        assert torch.equal(a.decode(ea.latents).image, b.decode(eb.latents).image)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name: str, tmp_path) -> None:
    model = _build(name, seed=4).eval()
    model.save_pretrained(tmp_path / "tok")
    loaded = from_pretrained(tmp_path / "tok")
    assert loaded.spec == model.spec
    frozen = set(model.frozen_modules)
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not any(k.split(".")[0] in frozen for k in loaded.trainable_state_dict())
    images = random_images(2, model.spec.image_size, seed=5)
    assert torch.equal(loaded.reconstruct(images), model.reconstruct(images))


@pytest.mark.parametrize("name", NAMES)
def test_every_trainable_parameter_gets_a_gradient(name: str) -> None:
    model = _build(name).train()
    out = model(_batch(model, n=2))
    assert out.recon.shape == (2, 3, model.spec.image_size, model.spec.image_size)
    for key, value in out.losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    total = out.recon.square().mean() + sum(out.losses.values())
    total.backward()
    exempt = set(getattr(model, "no_grad_params", ()))
    missing = [n for n, p in model.trainable_named_parameters()
               if n not in exempt and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no gradient reached: {missing}"


@pytest.mark.parametrize("name", [n for n in NAMES if create_tokenizer(n).frozen_modules])
def test_frozen_encoder_stays_frozen(name: str) -> None:
    model = _build(name).train()
    frozen = [getattr(model, n) for n in model.frozen_modules]
    assert all(not m.training for m in frozen)
    out = model(_batch(model))
    (out.recon.mean() + sum(out.losses.values())).backward()
    for m in frozen:
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    trainable = {n for n, _ in model.trainable_named_parameters()}
    assert not any(n.split(".")[0] in model.frozen_modules for n in trainable)
