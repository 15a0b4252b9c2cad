"""Sample images from a class-conditional GPT through a tokenizer's decoder (for gFID and sample grids)."""

from __future__ import annotations

from typing import Any

import torch

from vfmtok.ar.gpt import GPT
from vfmtok.ar.sampling import generate
from vfmtok.distributed import derive_seed, ordered_map
from vfmtok.interface import Tokenizer


def sample_images(model: GPT, tokenizer: Tokenizer, *, num_samples: int, num_classes: int, cfg_scale: float,
                  seed: int, batch_size: int, **sampling: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``num_samples`` images uint8 [N, 3, H, W] and their labels int64 [N] (both on the CPU).

    Labels are drawn uniformly (``torch.randint``, not class-balanced) from a CPU generator seeded with ``seed``.
    Samples are made in chunks of ``batch_size``; chunk ``c`` draws its tokens from a generator on the model's
    device seeded with ``derive_seed(seed, c)``, so the samples depend on ``seed`` and ``batch_size`` only. Under
    ``torchrun`` the chunks are shared out across ranks and every rank returns the same full set, identical to a
    one-process run. ``sampling`` is passed to :func:`vfmtok.ar.sampling.generate` (temperature, top_k, ...).

    Every rank holds all samples: this is for the benchmark's small sample sets. Large runs (50,000 samples)
    use :func:`vfmtok.evaluation.samples.sample_to_npz` (``vfmtok sample``), which streams shards to disk and
    gives exactly these samples and labels for ``labels="uniform"``.
    """
    spec, cfg = tokenizer.spec, model.config
    if num_samples <= 0 or batch_size <= 0:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    if not 0 < num_classes <= cfg.num_classes:
        raise ValueError(f"num_classes must lie in [1, {cfg.num_classes}] (the model's classes), got {num_classes}")
    if spec.codebook_size != cfg.vocab_size or spec.num_tokens != cfg.num_tokens:
        raise ValueError(f"GPT (vocab {cfg.vocab_size}, {cfg.num_tokens} tokens) does not fit tokenizer "
                         f"{spec.name} (codebook {spec.codebook_size}, {spec.num_tokens} tokens)")
    device = model.tok_embeddings.weight.device
    labels = torch.randint(num_classes, (num_samples,), generator=torch.Generator().manual_seed(seed))

    def chunk(items: range) -> tuple[torch.Tensor]:
        gen = torch.Generator(device=device).manual_seed(derive_seed(seed, items.start // batch_size))
        tokens = generate(model, labels[items.start:items.stop].to(device), cfg_scale=cfg_scale, generator=gen,
                          **sampling)
        return (tokenizer.detokenize(tokens).cpu(),)

    was_training = tokenizer.training
    tokenizer.eval()
    try:
        (images,) = ordered_map(chunk, num_samples, batch_size)
    finally:
        tokenizer.train(was_training)
    return images, labels
