"""The contract of the class-conditional GPT and its sampler: shapes, causality, cache == recompute, guidance."""

from __future__ import annotations

import pytest
import torch

import vfmtok.ar.sampling as sampling
from vfmtok import create_tokenizer, list_tokenizers
from vfmtok.ar import GPT, create_gpt, generate
from vfmtok.ar.sampling import filter_logits, guidance_scale, sample_logits
from vfmtok.evaluation.samples import sample_images

VOCAB, CLASSES = 64, 10
GRIDS = [(4, 4), (2, 8)]  # square (raster) and non-square (e.g. a query grid)


def _gpt(grid: tuple[int, int] = (4, 4), seed: int = 0, std: float = 0.3) -> GPT:
    """A tiny GPT with non-trivial random weights (the zero-initialised head would make logits uniform)."""
    torch.manual_seed(seed)
    model = create_gpt("test_gpt", VOCAB, grid[0] * grid[1], CLASSES, grid=grid)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def _data(model: GPT, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(VOCAB, (batch, model.config.num_tokens), generator=g)
    return tokens, torch.randint(CLASSES, (batch,), generator=g)


@pytest.mark.parametrize("grid", GRIDS)
def test_logits_shape_and_dtype(grid: tuple[int, int]) -> None:
    model = _gpt(grid)
    tokens, labels = _data(model)
    logits = model(tokens, labels)
    assert logits.shape == (3, grid[0] * grid[1], VOCAB) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert model(tokens[:, :5], labels).shape == (3, 5, VOCAB)  # a prefix gives the prefix's logits
    torch.testing.assert_close(model(tokens[:, :5], labels), logits[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid", GRIDS)
def test_causality(grid: tuple[int, int]) -> None:
    model = _gpt(grid)
    tokens, labels = _data(model)
    base = model(tokens, labels)
    for t in (0, 5, model.config.num_tokens - 2):
        changed = tokens.clone()
        changed[:, t:] = (changed[:, t:] + 1 + torch.arange(changed.shape[1] - t)) % VOCAB  # token t and later
        out = model(changed, labels)
        torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-5)
        assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-3  # the next position does see token t


def test_labels_condition_every_position() -> None:
    model = _gpt()
    tokens, labels = _data(model)
    other = (labels + 1) % CLASSES
    diff = (model(tokens, labels) - model(tokens, other)).abs().amax(dim=(0, 2))  # [L]
    assert (diff > 1e-4).all()


@pytest.mark.parametrize("grid", GRIDS)
def test_incremental_logits_equal_full_forward(grid: tuple[int, int]) -> None:
    model = _gpt(grid)
    tokens, labels = _data(model)
    full = model(tokens, labels)
    model.setup_cache(tokens.shape[0])
    try:
        parts = [model.step(tokens[:, :3], labels, 0)]  # prefill: class + 3 tokens -> 4 positions
        parts += [model.step(tokens[:, t - 1:t], None, t) for t in range(4, model.config.num_tokens)]
    finally:
        model.clear_cache()
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs", [
    {"cfg_scale": 1.0},
    {"cfg_scale": 3.0},
    {"cfg_scale": 2.0, "cfg_schedule": "linear", "top_k": 10},
    {"cfg_scale": 1.5, "cfg_interval": 4, "top_p": 0.8, "temperature": 0.7},
])
@pytest.mark.parametrize("grid", GRIDS)
def test_kv_cache_generation_equals_recompute(grid: tuple[int, int], kwargs: dict) -> None:
    model = _gpt(grid)
    _, labels = _data(model, batch=4)
    cached = generate(model, labels, generator=torch.Generator().manual_seed(7), use_cache=True, **kwargs)
    full = generate(model, labels, generator=torch.Generator().manual_seed(7), use_cache=False, **kwargs)
    assert cached.dtype == torch.int64 and cached.shape == (4, model.config.num_tokens)
    assert torch.equal(cached, full)
    assert int(cached.min()) >= 0 and int(cached.max()) < VOCAB


def _reference_unguided(model: GPT, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Conditional-only sampling written out step by step, without the cache."""
    out = torch.zeros(labels.shape[0], model.config.num_tokens, dtype=torch.int64)
    with torch.no_grad():
        for t in range(model.config.num_tokens):
            logits = model(torch.cat([out[:, :t], out.new_zeros(labels.shape[0], 1)], 1), labels)[:, -1]
            out[:, t] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
    return out


def test_cfg_scale_one_is_unguided_and_runs_one_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _gpt()
    _, labels = _data(model, batch=3)
    seen = []
    step = model.step
    monkeypatch.setattr(model, "step", lambda tokens, lab, pos: seen.append(
        (tokens if tokens is not None else lab).shape[0]) or step(tokens, lab, pos))
    out = generate(model, labels, cfg_scale=1.0, generator=torch.Generator().manual_seed(3))
    assert set(seen) == {3}  # no null-class half in the batch
    assert torch.equal(out, _reference_unguided(model, labels, torch.Generator().manual_seed(3)))
    seen.clear()
    generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(3))
    assert set(seen) == {6}


def test_seeded_generation_is_reproducible() -> None:
    model = _gpt()
    _, labels = _data(model, batch=4)
    a = generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(11))
    b = generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(11))
    c = generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generation_restores_train_mode_and_frees_cache() -> None:
    model = _gpt().train()
    _, labels = _data(model, batch=2)
    generate(model, labels, generator=torch.Generator().manual_seed(0))
    assert model.training and all(layer.attention.kv_cache is None for layer in model.layers)


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_cfg_combination_on_logits(monkeypatch: pytest.MonkeyPatch, scale: float) -> None:
    model = _gpt()
    _, labels = _data(model, batch=2)
    recorded = []

    def greedy(logits: torch.Tensor, **kwargs) -> torch.Tensor:
        recorded.append(logits.clone())
        return logits.argmax(-1)

    monkeypatch.setattr(sampling, "sample_logits", greedy)
    tokens = generate(model, labels, cfg_scale=scale)
    null = torch.full_like(labels, CLASSES)
    for t in (0, 1, 7):
        feed = torch.cat([tokens[:, :t], tokens.new_zeros(2, 1)], 1)
        cond, uncond = model(feed, labels)[:, -1], model(feed, null)[:, -1]
        torch.testing.assert_close(recorded[t], uncond + scale * (cond - uncond), rtol=1e-4, atol=1e-4)


def test_guidance_schedule_and_interval() -> None:
    assert guidance_scale(5, 16, 3.0) == 3.0
    assert [guidance_scale(t, 4, 3.0, "linear") for t in range(4)] == [1.0, 1.5, 2.0, 2.5]
    assert [guidance_scale(t, 16, 3.0, cfg_interval=2) for t in range(5)] == [3.0, 3.0, 3.0, 3.0, 1.0]
    assert guidance_scale(15, 16, 3.0, cfg_interval=-1) == 3.0


def test_filters() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, False, True, False, False]]
    probs = logits.softmax(-1)[0]  # sorted order 0, 2, 1, 3, 4
    p = float(probs[0] + probs[2]) - 1e-3  # the two most likely exceed p; the first alone does not
    assert torch.isfinite(filter_logits(logits, top_p=p)).tolist() == [[True, False, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).sum() == 1  # always keeps the most likely
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), logits * 2)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_logits(logits, top_k=2, generator=g) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 2}


def test_bad_inputs_are_rejected() -> None:
    model = _gpt()
    tokens, labels = _data(model)
    with pytest.raises(ValueError, match="labels must lie"):
        model(tokens, labels + CLASSES + 1)
    with pytest.raises(ValueError, match="int64"):
        model(tokens.int(), labels)
    with pytest.raises(ValueError, match="T <= 16"):
        model(torch.cat([tokens, tokens], 1), labels)
    with pytest.raises(ValueError, match="token indices"):
        model(tokens + VOCAB, labels)
    with pytest.raises(ValueError, match="cfg_schedule"):
        generate(model, labels, cfg_schedule="cosine")
    with pytest.raises(ValueError, match="top_p"):
        generate(model, labels, top_p=0.0)
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.step(None, labels, 0)


@pytest.mark.parametrize("name", list_tokenizers("test_*"))
def test_sample_images_through_each_test_tokenizer(name: str) -> None:
    tok = create_tokenizer(name).eval()
    spec = tok.spec
    if not spec.is_discrete:
        pytest.skip(f"{name} is continuous")
    grid = spec.token_grid or getattr(tok, "query_grid", None)
    model = create_gpt("test_gpt", spec.codebook_size, spec.num_tokens, CLASSES, grid=grid).eval()
    images, labels = sample_images(model, tok, num_samples=5, num_classes=CLASSES, cfg_scale=2.0, seed=0,
                                   batch_size=2, top_k=8)
    assert images.shape == (5, 3, spec.image_size, spec.image_size) and images.dtype == torch.uint8
    assert labels.shape == (5,) and labels.dtype == torch.int64 and int(labels.max()) < CLASSES
    again, labels2 = sample_images(model, tok, num_samples=5, num_classes=CLASSES, cfg_scale=2.0, seed=0,
                                   batch_size=2, top_k=8)
    assert torch.equal(images, again) and torch.equal(labels, labels2)
