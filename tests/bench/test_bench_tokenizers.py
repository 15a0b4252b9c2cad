"""Tokenizer encode and decode throughput (images/s) and peak memory for every registered full-size model.

Random weights (timing only; a VFMTok on DINOv2 gets a random backbone). Batch sizes fit a 2-core CPU or one GPU.
Run: ``nox -s perf -- -k tokenizer`` (``-k vqgan_f16`` for one model).
"""

from __future__ import annotations

import pytest
import torch

from tests.bench.common import DEVICE, device_info, peak_memory_mb, reset_peak_memory, synchronize
from vfmtok import create_tokenizer, list_tokenizers
from vfmtok.interface import Tokenizer

MODELS = [name for name in list_tokenizers() if not name.startswith("test_")]


def _batch(image_size: int) -> int:
    small = image_size <= 64
    if DEVICE.type == "cuda":
        return 256 if small else 32
    return 32 if small else 2


def _random_tokenizer(name: str) -> Tokenizer:
    torch.manual_seed(0)
    kwargs = {"encoder_pretrained": False} if name.startswith("vfmtok_dinov2") else {"pretrained": False}
    return create_tokenizer(name, **kwargs).to(DEVICE).eval()


@pytest.mark.bench
@pytest.mark.parametrize("direction", ["encode", "decode"])
@pytest.mark.parametrize("name", MODELS)
def test_tokenizer_throughput(benchmark, name: str, direction: str) -> None:
    tok = _random_tokenizer(name)
    size = tok.spec.image_size
    batch = _batch(size)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(DEVICE) * 2 - 1
    with torch.inference_mode():
        latents = tok.encode(x).latents

    @torch.inference_mode()
    def run() -> torch.Tensor:
        out = tok.encode(x).latents if direction == "encode" else tok.decode(latents).image
        synchronize()
        return out

    reset_peak_memory()
    out = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    assert out.shape[0] == batch and torch.isfinite(out).all()
    mem_key, mem_mb = peak_memory_mb()
    benchmark.extra_info.update({"model": name, "direction": direction, "batch": batch, "image_size": size,
                                 "images_per_s_best": batch / benchmark.stats.stats.min, mem_key: round(mem_mb, 1),
                                 **device_info()})
