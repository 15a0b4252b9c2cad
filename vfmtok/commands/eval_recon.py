"""``vfmtok eval-recon``: reconstruct a data set with a tokenizer and write ``recon.npz`` + ``metrics.json``.

The counterpart of LlamaGen's ``reconstruction_vq_ddp.py``: runs in one process or under ``torchrun`` (each rank
takes its shards), writes ordered resumable shards (a killed run continues where it stopped), then the ADM npz of
the reconstructions in dataset order and the metrics (PSNR, SSIM, rFID, codebook usage, perplexity, n) with their
provenance. See :func:`vfmtok.evaluation.recon.evaluate_reconstruction_stream`.

    vfmtok eval-recon --tokenizer llamagen_vq_f16_k16384 --official llamagen_vq --checkpoint vq_ds16_c2i.pt \\
        --data imagenet:val --batch-size 64 --out runs/vq16-recon
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from vfmtok.data.sources import open_images
from vfmtok.distributed import init_from_env, is_main, local_device
from vfmtok.evaluation.resolve import resolve_tokenizer


def add_tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    """``--tokenizer SPEC [--official FAMILY --checkpoint FILE]`` (shared with ``vfmtok sample``)."""
    p.add_argument("--tokenizer", help="registry name, or a save_pretrained folder (test_* names alone: random "
                                       "weights)")
    p.add_argument("--official", metavar="FAMILY", help="released tokenizer family (llamagen_vq, vqgan, vfmtok)")
    p.add_argument("--checkpoint", metavar="FILE", help="released tokenizer checkpoint (with --official)")
    p.add_argument("--tokenizer-size", type=int, help="build the tokenizer for this image size (e.g. 384)")


def tokenizer_from_args(args: argparse.Namespace) -> Any:
    """The tokenizer the arguments name (:func:`vfmtok.evaluation.resolve.resolve_tokenizer`)."""

    overrides = {"image_size": args.tokenizer_size} if args.tokenizer_size else {}
    return resolve_tokenizer(args.tokenizer, args.official, args.checkpoint, **overrides)


def _run(args: argparse.Namespace) -> int:
    from vfmtok.evaluation.recon import evaluate_reconstruction_stream  # heavy (torch-fidelity): not for --help

    init_from_env(args.device)
    device = local_device(args.device)
    tokenizer = tokenizer_from_args(args)
    size = args.size or tokenizer.spec.image_size
    if size != tokenizer.spec.image_size:
        raise ValueError(f"--size {size} differs from the tokenizer's image size {tokenizer.spec.image_size}; "
                         f"build the tokenizer for {size} px with --tokenizer-size {size}")
    data = open_images(args.data, size=size, split=args.split, skip_bad=args.skip_bad)
    out = evaluate_reconstruction_stream(tokenizer, data, num=args.num, batch_size=args.batch_size, device=device,
                                         out_dir=args.out, workers=args.workers, fid=not args.no_fid,
                                         shard_size=args.shard_size, max_shards=args.max_shards)
    if is_main():
        keys = ("complete", "n", "psnr", "ssim", "rfid", "codebook_usage", "codebook_perplexity", "recon_npz")
        print(json.dumps({k: out[k] for k in keys if k in out}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval-recon`` to the ``vfmtok`` subcommands."""
    p = sub.add_parser("eval-recon", help="reconstruct a data set: recon.npz + metrics.json (resumable, torchrun)")
    add_tokenizer_arguments(p)
    p.add_argument("--data", required=True, help="folder, .tar/.tar.gz, .npz, or NAME[:SPLIT] (cifar10:test, "
                                                 "imagenet:val, kodak)")
    p.add_argument("--split", help="split of a bare data set name")
    p.add_argument("--num", "--num-images", dest="num", type=int,
                   help="the first N images (default: all); under torchrun spell it --num-images (torchrun takes "
                        "--num for its own --numa-binding)")
    p.add_argument("--size", type=int, help="centre-crop size (default: the tokenizer's image size)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
    p.add_argument("--shard-size", type=int, help="images per shard (a multiple of --batch-size; default 8 batches)")
    p.add_argument("--max-shards", type=int, help="stop after this many new shards per process (rerun continues)")
    p.add_argument("--no-fid", action="store_true", help="skip rFID (no Inception pass)")
    p.add_argument("--skip-bad", action="store_true", help="skip undecodable images (listed in metrics.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output folder (shards/, recon.npz, metrics.json)")
    p.set_defaults(func=_run)
