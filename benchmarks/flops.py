"""FLOPs per image of the full-size ImageNet-256 models, counted with ``torch.utils.flop_counter.FlopCounterMode``.

``python -m benchmarks.flops [--json FILE]`` builds each paper-size model with random weights (the counts depend
on shapes only), runs it once at batch 1 and prints the FLOPs per image (one multiply-add = 2 FLOPs, the
counter's convention; only the ops the counter knows are counted: matmuls, convolutions, attention). The GPU
plan in ``results/README.md`` is derived from these counts.

* ``inception``: the FID Inception-v3 on one 256 px uint8 image (resized to 299 inside).
* ``encode/<tokenizer>`` and ``decode/<tokenizer>``: encode (with quantization) and decode of one image at the
  tokenizer's size (VFMTok: its frozen DINOv2-L/14 at its own input size included in encode).
* ``gpt/<size>``: one teacher-forced pass over the 256-token sequence, the same matmuls a KV-cached sampler runs
  over its 256 steps (attention over the cache is counted as in the full causal pass); classifier-free guidance
  runs the batch twice, so a guided sample costs 2x.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vfmtok import create_tokenizer
from vfmtok.ar import create_gpt
from vfmtok.fid_inception import random_fid_inception
from vfmtok.fileio import atomic_write_json
from vfmtok.images import to_model_range

TOKENIZERS = {"vqgan_f16_k16384": {}, "llamagen_vq_f16_k16384": {},
              "vfmtok_dinov2_vitl14reg_l256_k16384": {"encoder_pretrained": False}}
GPTS = ("gpt_b", "gpt_l", "gpt_xl")


def count(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (no autograd)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure() -> dict[str, int]:
    """FLOPs per image of every model of the plan."""

    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8)
    out = {"inception": count(lambda: random_fid_inception().eval()(image))}
    for name, kwargs in TOKENIZERS.items():
        tok = create_tokenizer(name, **kwargs).eval()
        size = tok.spec.image_size
        x = to_model_range(torch.nn.functional.interpolate(image.float(), size=(size, size)).round().to(torch.uint8))
        with torch.no_grad():
            latents = tok.encode(x).latents
        out[f"encode/{name}@{size}"] = count(lambda tok=tok, x=x: tok.encode(x))
        out[f"decode/{name}@{size}"] = count(lambda tok=tok, z=latents: tok.decode(z))
        del tok, latents
    tokens, labels = torch.zeros(1, 256, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    for name in GPTS:
        gpt = create_gpt(name, vocab_size=16384, num_tokens=256, num_classes=1000).eval()
        out[f"gpt/{name}"] = count(lambda gpt=gpt: gpt(tokens, labels))
        del gpt
    return out


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) the counts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the counts to this JSON file")
    args = parser.parse_args(argv)
    counts = measure()
    for key, flops in counts.items():
        print(f"{key:48s} {flops / 1e9:10.2f} GFLOP per image", flush=True)
    if args.json:

        atomic_write_json(args.json, {"flops_per_image": counts, "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
