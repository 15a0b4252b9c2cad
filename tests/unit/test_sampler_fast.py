"""The fast sampler stays exact: frozen token sequences, cache == recompute (greedy), packed weights, guidance rules,
the cfg-interval shortcut, bf16 autocast against float32, and the opt-in ``compile`` switch."""

from __future__ import annotations

import pytest
import torch

import vfmtok.ar.sampling as sampling
from vfmtok.ar import GPT, create_gpt, generate
from vfmtok.ar.gpt import PACK_MIN_WEIGHTS, packing_available
from vfmtok.ar.sampling import guidance_applies

CLASSES = 10


def _gpt(name: str = "test_gpt", vocab: int = 64, grid: tuple[int, int] = (4, 4), seed: int = 0,
         std: float = 0.3) -> GPT:
    """A GPT with non-trivial random weights (the zero-initialised head would make logits uniform)."""
    torch.manual_seed(seed)
    model = create_gpt(name, vocab, grid[0] * grid[1], CLASSES, grid=grid)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


@pytest.fixture(scope="module")
def nano() -> GPT:
    return _gpt("gpt_nano", 256, (8, 8), seed=1, std=0.1)


@pytest.fixture(scope="module")
def small() -> GPT:
    return _gpt("gpt_nano", 256, (4, 8), seed=2, std=0.1)


# Sequences sampled by the sampler before it was optimised (per-step SDPA, row-major weights, both branches to the
# end): test_gpt (vocab 64, 4x4, N(0, 0.3) weights, seed 0), labels [0, 3, 7, 9], generator seed 5.
FROZEN_TINY = {
    "cfg1": ({"cfg_scale": 1.0}, [
        [22, 4, 45, 48, 33, 15, 37, 34, 0, 48, 43, 21, 0, 43, 14, 14],
        [14, 57, 61, 28, 41, 38, 63, 15, 46, 45, 24, 32, 48, 37, 10, 51],
        [42, 40, 53, 2, 8, 43, 45, 9, 22, 25, 58, 43, 16, 28, 11, 6],
        [52, 8, 50, 29, 56, 52, 25, 20, 29, 39, 8, 18, 7, 41, 10, 39]]),
    "cfg3_topk": ({"cfg_scale": 3.0, "top_k": 10}, [
        [14, 61, 5, 48, 61, 25, 41, 63, 41, 48, 51, 21, 17, 47, 14, 47],
        [5, 43, 12, 60, 41, 55, 31, 48, 9, 28, 55, 38, 48, 8, 45, 29],
        [25, 18, 41, 16, 48, 48, 57, 7, 46, 48, 51, 42, 41, 13, 4, 40],
        [1, 27, 48, 29, 18, 5, 48, 20, 48, 10, 8, 47, 21, 48, 10, 47]]),
    "cfg1.5_interval_topp_temp": ({"cfg_scale": 1.5, "cfg_interval": 4, "top_p": 0.8, "temperature": 0.7}, [
        [14, 61, 1, 48, 1, 41, 19, 63, 41, 48, 50, 21, 19, 27, 16, 14],
        [60, 43, 5, 55, 44, 41, 63, 29, 37, 6, 39, 38, 8, 8, 4, 29],
        [25, 25, 53, 61, 40, 48, 57, 18, 32, 25, 58, 60, 16, 25, 11, 25],
        [1, 27, 20, 29, 18, 5, 50, 20, 48, 39, 8, 60, 44, 41, 44, 39]]),
    "cfg2_linear": ({"cfg_scale": 2.0, "cfg_schedule": "linear"}, [
        [22, 4, 45, 48, 33, 51, 30, 34, 60, 5, 43, 8, 28, 43, 49, 14],
        [14, 57, 61, 28, 41, 38, 63, 15, 46, 45, 24, 32, 48, 37, 56, 51],
        [42, 40, 53, 2, 8, 43, 45, 9, 22, 25, 58, 60, 16, 28, 11, 6],
        [52, 8, 50, 28, 18, 48, 35, 20, 29, 39, 8, 18, 24, 41, 10, 18]]),
}

# The same for gpt_nano (vocab 256, 8x8, N(0, 0.1) weights, seed 1), labels [2, 5, 10] (10 = null), generator seed 9;
# the first 16 of 64 tokens per sequence.
FROZEN_NANO = {
    "cfg1": ({"cfg_scale": 1.0}, [
        [168, 48, 228, 54, 82, 117, 87, 113, 83, 159, 35, 220, 112, 134, 28, 165],
        [178, 151, 161, 244, 238, 0, 17, 38, 0, 228, 37, 8, 62, 62, 115, 48],
        [67, 44, 8, 103, 213, 74, 121, 184, 210, 204, 57, 112, 127, 72, 12, 196]]),
    "cfg2_topk": ({"cfg_scale": 2.0, "top_k": 50, "temperature": 0.9}, [
        [249, 160, 228, 28, 143, 156, 237, 113, 83, 224, 31, 220, 72, 134, 190, 165],
        [118, 249, 218, 244, 146, 0, 68, 166, 0, 220, 146, 40, 63, 52, 197, 48],
        [67, 27, 8, 15, 252, 49, 73, 13, 210, 204, 155, 126, 50, 72, 12, 104]]),
}


@pytest.mark.parametrize("case", sorted(FROZEN_TINY))
def test_sequences_equal_frozen_expectations(case: str) -> None:
    kwargs, expected = FROZEN_TINY[case]
    out = generate(_gpt(), torch.tensor([0, 3, 7, 9]), generator=torch.Generator().manual_seed(5), **kwargs)
    assert out.tolist() == expected


@pytest.mark.parametrize("case", sorted(FROZEN_NANO))
def test_sequences_equal_frozen_expectations_nano(nano: GPT, case: str) -> None:
    kwargs, expected = FROZEN_NANO[case]
    out = generate(nano, torch.tensor([2, 5, 10]), generator=torch.Generator().manual_seed(9), **kwargs)
    assert out[:, :16].tolist() == expected


@pytest.mark.parametrize("kwargs", [
    {"cfg_scale": 1.0},
    {"cfg_scale": 4.0},
    {"cfg_scale": 4.0, "cfg_interval": 6},
    {"cfg_scale": 3.0, "cfg_schedule": "linear", "cfg_interval": 0},
])
def test_greedy_cached_equals_recompute(small: GPT, kwargs: dict) -> None:
    labels = torch.tensor([0, 4, 9, 10])
    cached = generate(small, labels, top_k=1, **kwargs)
    full = generate(small, labels, top_k=1, use_cache=False, **kwargs)
    assert torch.equal(cached, full)
    assert len(set(cached.flatten().tolist())) > 10  # greedy decoding did not collapse to one token


def _record_batches(model: GPT, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    step = model.step
    monkeypatch.setattr(model, "step", lambda tokens, lab, pos: seen.append(
        (tokens if tokens is not None else lab).shape[0]) or step(tokens, lab, pos))
    return seen


def test_uncond_branch_dropped_after_cfg_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _gpt()
    seen = _record_batches(model, monkeypatch)
    generate(model, torch.tensor([1, 2]), cfg_scale=3.0, cfg_interval=4, generator=torch.Generator().manual_seed(0))
    assert seen == [4] * 6 + [2] * 10  # tokens 0..5 are guided (cfg_interval + 1 = 5), then the cond half alone


def test_guidance_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [guidance_applies(s) for s in (0.5, 1.0, 2.0)] == [True, False, True]
    assert [guidance_applies(s, "above_one") for s in (0.5, 1.0, 2.0)] == [False, False, True]
    with pytest.raises(ValueError, match="guidance must be one of"):
        guidance_applies(2.0, "always")
    model = _gpt()
    labels = torch.tensor([1, 2, 3])
    seen = _record_batches(model, monkeypatch)

    def run(scale: float, rule: str) -> torch.Tensor:
        seen.clear()
        return generate(model, labels, cfg_scale=scale, guidance=rule, generator=torch.Generator().manual_seed(4))

    unguided = run(1.0, "not_one")
    assert set(seen) == {3}
    assert torch.equal(run(0.5, "above_one"), unguided) and set(seen) == {3}  # LlamaGen: 0.5 samples cond alone
    assert not torch.equal(run(0.5, "not_one"), unguided) and set(seen) == {6}  # project default: 0.5 guides
    assert torch.equal(run(2.0, "above_one"), run(2.0, "not_one")) and set(seen) == {6}
    with pytest.raises(ValueError, match="guidance must be one of"):
        generate(model, labels, cfg_scale=2.0, guidance="sometimes")


def _step_logits(model: GPT, tokens: torch.Tensor, labels: torch.Tensor, **setup) -> torch.Tensor:
    """Incremental logits [B, T, K]: the class token, then one token per step."""
    model.setup_cache(tokens.shape[0], **setup)
    try:
        parts = [model.step(None, labels, 0)]
        parts += [model.step(tokens[:, t - 1:t], None, t) for t in range(1, tokens.shape[1])]
    finally:
        model.clear_cache()
    return torch.cat(parts, dim=1)


@pytest.mark.skipif(not packing_available(), reason="this PyTorch build cannot pack weights for oneDNN")
def test_packed_weights_match_and_are_transient(nano: GPT) -> None:
    tokens = torch.randint(256, (3, 64), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2, 10])
    with torch.inference_mode():
        plain = _step_logits(nano, tokens, labels, pack_weights=False)
        packed = _step_logits(nano, tokens, labels, pack_weights=True)
        full = nano(tokens, labels)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed, full, rtol=1e-4, atol=1e-4)
    keys = set(nano.state_dict())
    nano.setup_cache(2, pack_weights=True)
    try:
        assert all("packed_weight" in m.__dict__ for m in nano.modules() if isinstance(m, torch.nn.Linear))
        assert set(nano.state_dict()) == keys  # the packed copies are not state
    finally:
        nano.clear_cache()
    assert not any("packed_weight" in m.__dict__ for m in nano.modules())
    wide = create_gpt("test_gpt", PACK_MIN_WEIGHTS // 64, 16, CLASSES)  # dim 64: only the output head is large
    wide.setup_cache(2)  # auto: only layers large enough to be bound by reading their weights are packed
    try:
        assert [name for name, m in wide.named_modules() if "packed_weight" in m.__dict__] == ["output"]
    finally:
        wide.clear_cache()
    with pytest.raises(ValueError, match="pack_weights needs float32"):
        _gpt().to(torch.bfloat16).setup_cache(2, pack_weights=True)


def test_incremental_step_keeps_autograd_with_packed_weights() -> None:
    model = _gpt()
    model.setup_cache(2)
    try:
        logits = model.step(torch.tensor([[3], [4]]), torch.tensor([1, 2]), 0)
        logits.sum().backward()  # grad mode bypasses the packed copies, so the weights get gradients
    finally:
        model.clear_cache()
    assert model.layers[0].attention.wqkv.weight.grad is not None


def test_step_last_only(nano: GPT) -> None:
    tokens = torch.randint(256, (2, 6), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 4])
    with torch.inference_mode():
        for last_only in (False, True):
            nano.setup_cache(2)
            try:
                out = nano.step(tokens, labels, 0, last_only=last_only)
            finally:
                nano.clear_cache()
            if not last_only:
                full = out
    assert out.shape == (2, 1, 256) and full.shape == (2, 7, 256)
    torch.testing.assert_close(out, full[:, -1:], rtol=1e-5, atol=1e-5)


#: bf16 keeps 8 mantissa bits (unit roundoff 2^-8 ~ 0.4%); logits may differ from float32 by this relative norm
BF16_REL_TOL = 3e-2


def test_bf16_autocast_logits_close_to_fp32(small: GPT) -> None:
    tokens = torch.randint(256, (3, 32), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 7, 10])
    with torch.inference_mode():
        ref = _step_logits(small, tokens, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = _step_logits(small, tokens, labels, dtype=torch.bfloat16, pack_weights=False)
    assert low.dtype == torch.float32
    rel = float((low - ref).norm() / ref.norm())
    assert 0 < rel < BF16_REL_TOL  # really ran in bf16, and stayed close


def test_bf16_generate_runs(small: GPT) -> None:
    labels = torch.tensor([0, 7])
    fp32 = generate(small, labels, cfg_scale=2.0, top_k=1)
    low = generate(small, labels, cfg_scale=2.0, top_k=1, precision="bf16")
    assert low.shape == (2, 32) and low.dtype == torch.int64 and int(low.min()) >= 0 and int(low.max()) < 256
    assert (low == fp32).float().mean() > 0.5  # greedy paths mostly agree; rounding may fork a few sequences
    assert all(layer.attention.kv_cache is None for layer in small.layers)


def test_runtime_options_are_validated() -> None:
    model = _gpt()
    labels = torch.tensor([1])
    with pytest.raises(ValueError, match="precision must be one of"):
        generate(model, labels, precision="fp16")
    with pytest.raises(ValueError, match="compile must be a bool"):
        generate(model, labels, compile="yes")
    with pytest.raises(ValueError, match="needs use_cache=True"):
        generate(model, labels, compile=True, use_cache=False)


def test_compile_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _gpt()
    labels = torch.tensor([1, 2])
    compiled: list[object] = []

    def fake_compile(fn, **kwargs):
        compiled.append(kwargs)
        return fn

    monkeypatch.setattr(sampling.torch, "compile", fake_compile)
    plain = generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert compiled == []  # off by default
    out = generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0), compile=True)
    assert compiled == [{"dynamic": True}]
    assert torch.equal(out, plain)
