"""Class-conditional sampling at scale: ordered resumable shards streamed into ``samples.npz`` + ``samples.json``.

The counterpart of LlamaGen's ``sample_c2i_ddp.py``. Samples are made in chunks of ``batch_size``; chunk ``c``
draws its tokens from a generator on the GPT's device seeded with ``derive_seed(seed, c)``, exactly as
:func:`sample_images` (the benchmark's in-memory sampler) does, so the samples depend on ``seed`` and
``batch_size`` only -- not on the number of processes, nor on where a killed run was resumed. Shards go to disk
as they are made (:mod:`vfmtok.evaluation.shards`); no rank ever holds all samples.

Class labels (``labels=``), drawn once for all ``num`` samples from a CPU generator seeded with ``seed``:

* ``"uniform"``: i.i.d. uniform over the classes, ``torch.randint(num_classes, (num,))``. This is the rule of
  LlamaGen's ``sample_c2i_ddp.py`` (``torch.randint(0, 1000)`` per sample, not class-balanced) and of VFMTok's
  ``test_net.py``; LlamaGen draws per rank from ``seed * world + rank``, so its exact labels depend on the GPU
  count -- here they do not. The same labels as ``sample_images``.
* ``"balanced"``: exactly ``num // num_classes`` samples of every class (the first ``num % num_classes`` classes
  get one more), in an order shuffled by ``torch.randperm`` (50 per class for 50,000 ImageNet samples).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmtok.ar.gpt import GPT
from vfmtok.ar.sampling import generate
from vfmtok.distributed import barrier, derive_seed, is_main, ordered_map
from vfmtok.evaluation.shards import ShardPlan, iter_shards, run_shards
from vfmtok.fileio import atomic_write_json
from vfmtok.images import resize_model_range, to_uint8
from vfmtok.interface import Tokenizer
from vfmtok.metrics.reference import NpzWriter
from vfmtok.version import code_version

SAMPLES_FILE = "samples.npz"
SAMPLES_JSON = "samples.json"
LABEL_SCHEMES = ("uniform", "balanced")
LABEL_RULES = {
    "uniform": "i.i.d. uniform: torch.randint(num_classes, (num,)) from a CPU generator seeded with seed "
               "(LlamaGen sample_c2i_ddp.py / VFMTok test_net.py draw torch.randint labels, not class-balanced)",
    "balanced": "class-balanced: arange(num) % num_classes, shuffled by torch.randperm(num) from a CPU generator "
                "seeded with seed (num // num_classes per class, the first num % num_classes classes one more)",
}


def draw_labels(num: int, num_classes: int, seed: int, scheme: str = "uniform") -> torch.Tensor:
    """int64 [num] class labels by ``scheme`` (see the module docstring)."""
    if scheme not in LABEL_SCHEMES:
        raise ValueError(f"labels must be one of {LABEL_SCHEMES}, got {scheme!r}")
    if num <= 0 or num_classes <= 0:
        raise ValueError(f"need num > 0 and num_classes > 0, got {num} and {num_classes}")
    gen = torch.Generator().manual_seed(seed)
    if scheme == "uniform":
        return torch.randint(num_classes, (num,), generator=gen)
    return (torch.arange(num) % num_classes)[torch.randperm(num, generator=gen)]


def _check(gpt: GPT, tokenizer: Tokenizer, num: int, batch_size: int, num_classes: int) -> None:
    spec, cfg = tokenizer.spec, gpt.config
    if num <= 0 or batch_size <= 0:
        raise ValueError(f"the number of samples and the batch size must be positive, got {num} and {batch_size}")
    if not 0 < num_classes <= cfg.num_classes:
        raise ValueError(f"num_classes must lie in [1, {cfg.num_classes}] (the GPT's classes), got {num_classes}")
    if spec.codebook_size != cfg.vocab_size or spec.num_tokens != cfg.num_tokens:
        raise ValueError(f"GPT (vocab {cfg.vocab_size}, {cfg.num_tokens} tokens) does not fit tokenizer "
                         f"{spec.name} (codebook {spec.codebook_size}, {spec.num_tokens} tokens)")


def sample_images(gpt: GPT, tokenizer: Tokenizer, *, num_samples: int, num_classes: int, cfg_scale: float,
                  seed: int, batch_size: int, **sampling: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``num_samples`` images uint8 [N, 3, H, W] and their labels int64 [N] (both on the CPU), in memory.

    The same samples and labels as :func:`sample_to_npz` with ``labels="uniform"``: labels from
    :func:`draw_labels`, chunk ``c`` of ``batch_size`` drawing its tokens from a generator on the GPT's device
    seeded with ``derive_seed(seed, c)``. Under ``torchrun`` the chunks are shared out across ranks and every
    rank returns the same full set, identical to a one-process run. ``sampling`` is passed to
    :func:`vfmtok.ar.sampling.generate` (temperature, top_k, ...). Every rank holds all samples: this is for the
    benchmark's small sample sets; 50,000 samples go through :func:`sample_to_npz`.
    """
    _check(gpt, tokenizer, num_samples, batch_size, num_classes)
    device = gpt.tok_embeddings.weight.device
    labels = draw_labels(num_samples, num_classes, seed)

    def chunk(items: range) -> tuple[torch.Tensor]:
        gen = torch.Generator(device=device).manual_seed(derive_seed(seed, items.start // batch_size))
        tokens = generate(gpt, labels[items.start:items.stop].to(device), cfg_scale=cfg_scale, generator=gen,
                          **sampling)
        return (tokenizer.detokenize(tokens).cpu(),)

    was_training = tokenizer.training
    tokenizer.eval()
    try:
        (images,) = ordered_map(chunk, num_samples, batch_size)
    finally:
        tokenizer.train(was_training)
    return images, labels


@torch.inference_mode()
def sample_to_npz(gpt: GPT, tokenizer: Tokenizer, *, num: int, seed: int, batch_size: int,
                  out_dir: str | Path, labels: str = "uniform", num_classes: int | None = None,
                  eval_size: int | None = None, precision: str = "fp32", shard_size: int | None = None,
                  max_shards: int | None = None, provenance: dict[str, Any] | None = None,
                  **sampling: Any) -> dict[str, Any]:
    """Sample ``num`` images into ``out_dir/samples.npz`` (ADM batch: ``arr_0`` uint8 NHWC, ``arr_1`` labels) and
    ``out_dir/samples.json`` (every setting with its provenance); return that record.

    ``sampling`` (temperature, top_k, top_p, cfg_scale, cfg_schedule, cfg_interval, guidance; None = the default)
    goes to :func:`vfmtok.ar.sampling.generate`. ``num_classes`` defaults to the GPT's. ``eval_size``: decode at
    the tokenizer's size, then resize the float image bicubic (no antialias) to ``eval_size`` before the uint8
    conversion (LlamaGen's 384 -> 256). ``precision``: ``"bf16"`` casts the GPT to bfloat16 (LlamaGen's
    sampler), the tokenizer stays in float32. ``max_shards``: see :func:`vfmtok.evaluation.shards.run_shards`.
    """
    start = time.time()
    num_classes = int(num_classes or gpt.config.num_classes)
    _check(gpt, tokenizer, num, batch_size, num_classes)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16":
        gpt = gpt.to(torch.bfloat16)
    device = gpt.tok_embeddings.weight.device
    tokenizer.to(device).eval()
    kwargs = {k: v for k, v in sampling.items() if v is not None}
    y = draw_labels(num, num_classes, seed, labels)
    plan = ShardPlan.make(num, batch_size, shard_size)
    gpt_prov = dict(getattr(gpt, "provenance", {}))
    tok_prov = dict(getattr(tokenizer, "provenance", {"name": tokenizer.spec.name}))
    settings = {"seed": seed, "labels": labels, "num_classes": num_classes, "eval_size": eval_size,
                "precision": precision, "sampling": kwargs, "gpt_sha256": gpt_prov.get("weights_sha256"),
                "tokenizer_sha256": tok_prov.get("weights_sha256"), "device_type": device.type}
    size = tokenizer.spec.image_size

    def compute(items: range) -> dict[str, np.ndarray]:
        images, tokens = [], []
        for first in range(items.start, items.stop, batch_size):
            chunk = range(first, min(first + batch_size, items.stop))
            gen = torch.Generator(device=device).manual_seed(derive_seed(seed, first // batch_size))
            t = generate(gpt, y[chunk.start:chunk.stop].to(device), generator=gen, **kwargs)
            if eval_size is None or eval_size == size:
                im = tokenizer.detokenize(t)
            else:
                im = to_uint8(resize_model_range(tokenizer.decode_indices(t).image.float(), eval_size))
            images.append(im.cpu().numpy())
            tokens.append(t.cpu().numpy())
        return {"images": np.concatenate(images), "labels": y[items.start:items.stop].numpy(),
                "tokens": np.concatenate(tokens)}

    complete = run_shards(out_dir, plan, compute, settings=settings, max_shards=max_shards)
    if not complete:
        return {"complete": False, "n": num, "num_shards": plan.num_shards}
    out_dir = Path(out_dir)
    if is_main():
        with NpzWriter(out_dir / SAMPLES_FILE) as writer:
            for _, arrays in iter_shards(out_dir, plan):
                writer.add(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]))
        record = {"complete": True, "n": num, "samples_npz": str(out_dir / SAMPLES_FILE),
                  "image_size": eval_size or size, "seed": seed, "batch_size": batch_size,
                  "seeding": "chunk c of batch_size samples draws from derive_seed(seed, c) on the GPT's device",
                  "labels": {"scheme": labels, "rule": LABEL_RULES[labels], "num_classes": num_classes,
                             "counts": torch.bincount(y, minlength=num_classes).tolist()},
                  "sampling": kwargs, "precision": precision, "eval_size": eval_size, "gpt": gpt_prov,
                  "tokenizer": tok_prov, "shard_size": plan.shard_size, "device": str(device),
                  "code": code_version(), "seconds": time.time() - start, **(provenance or {})}
        atomic_write_json(out_dir / SAMPLES_JSON, record)
    barrier()
    return json.loads((out_dir / SAMPLES_JSON).read_text())
