"""Generation throughput (tokens/s) of a small GPT with and without the KV cache. Run: ``nox -s perf``."""

from __future__ import annotations

import pytest
import torch

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
