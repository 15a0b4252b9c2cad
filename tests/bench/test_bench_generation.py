"""Generation throughput (tokens/s) and peak memory. Run: ``nox -s perf``.

* a small GPT with and without the KV cache;
* GPT-B (LlamaGen's B: 12 layers, 768 wide, vocab 16384, 256 tokens, random weights) at batch 8 and 64, cfg 1 and 2,
  and at batch 8 the decode path before the sampler work (row-major weights, SDPA for the single query) in the
  same run. Peak memory: ``torch.cuda.max_memory_allocated`` on GPU, the process's peak RSS on CPU (a high-water
  mark since the process started, so it only grows from one benchmark to the next).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vfmtok.ar.gpt as gpt_module
from tests.bench.common import DEVICE, device_info, peak_memory_mb, reset_peak_memory, synchronize
from vfmtok.ar import create_gpt, generate

BATCH, GRID, VOCAB, CLASSES = 8, (8, 8), 1024, 10


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    gpt = create_gpt("gpt_micro", VOCAB, GRID[0] * GRID[1], CLASSES)
    with torch.no_grad():
        gpt.output.weight.normal_(0.0, 0.02)  # non-uniform logits, as after training
    return gpt.eval()


@pytest.mark.bench
@pytest.mark.parametrize("use_cache", [True, False], ids=["kv_cache", "recompute"])
def test_generation_throughput(benchmark, model: torch.nn.Module, use_cache: bool) -> None:
    labels = torch.arange(BATCH) % CLASSES

    def run() -> torch.Tensor:
        return generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0), use_cache=use_cache)

    tokens = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    assert tokens.shape == (BATCH, GRID[0] * GRID[1])
    benchmark.extra_info.update({"model": "gpt_micro", "batch": BATCH, "tokens_per_image": tokens.shape[1],
                                 "cfg_scale": 2.0, "threads": torch.get_num_threads(),
                                 "tokens_per_s": tokens.numel() / benchmark.stats.stats.mean})


@pytest.fixture(scope="module")
def gpt_b() -> torch.nn.Module:
    torch.manual_seed(0)
    gpt = create_gpt("gpt_b", vocab_size=16384, num_tokens=256, num_classes=1000)
    with torch.no_grad():
        gpt.output.weight.normal_(0.0, 0.02)
    return gpt.to(DEVICE).eval()


def _old_decode_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode path as it was: row-major weights (no oneDNN packing) and SDPA for the single new query."""
    monkeypatch.setattr(gpt_module, "PACK_MIN_WEIGHTS", float("inf"))
    monkeypatch.setattr(gpt_module, "_attend_one_query", lambda q, k, v: F.scaled_dot_product_attention(q, k, v))


PRECISIONS = ["fp32", "bf16"] if DEVICE.type == "cuda" else ["fp32"]
CASES = [(8, 1.0, "new"), (8, 2.0, "new"), (8, 1.0, "old"), (8, 2.0, "old"), (64, 1.0, "new"), (64, 2.0, "new")]


@pytest.mark.bench
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(("batch", "cfg_scale", "path"), CASES,
                         ids=[f"b{b}-cfg{c:g}-{p}" for b, c, p in CASES])
def test_gpt_b_sampling(benchmark, gpt_b: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, batch: int,
                        cfg_scale: float, path: str, precision: str) -> None:
    if path == "old":
        _old_decode_path(monkeypatch)
    labels = (torch.arange(batch) * 7) % 1000

    def run() -> torch.Tensor:
        out = generate(gpt_b, labels, cfg_scale=cfg_scale, precision=precision,
                       generator=torch.Generator(DEVICE).manual_seed(0))
        synchronize()
        return out

    reset_peak_memory()
    rounds = 2 if batch <= 8 else 1  # best-of-rounds is the number to quote on a shared machine
    tokens = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    assert tokens.shape == (batch, 256)
    weight_mb = sum(p.numel() * p.element_size() for n, p in gpt_b.named_parameters()
                    if "embedding" not in n) / 1e6  # read once per decode step (embeddings: a few rows)
    mem_key, mem_mb = peak_memory_mb()
    benchmark.extra_info.update({
        "model": "gpt_b", "batch": batch, "cfg_scale": cfg_scale, "path": path, "precision": precision,
        **device_info(), "tokens_per_image": 256,
        "tokens_per_s_best": tokens.numel() / benchmark.stats.stats.min,
        "tokens_per_s_mean": tokens.numel() / benchmark.stats.stats.mean,
        "weights_read_per_step_mb": round(weight_mb, 1), mem_key: round(mem_mb, 1)})
