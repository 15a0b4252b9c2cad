"""``vfmtok tokenize`` and ``vfmtok detokenize``: images to a token file and back.

    vfmtok tokenize --tokenizer runs/kodak-vqgan/tokenizer --data kodak --out tokens.npy
    vfmtok detokenize --tokenizer runs/kodak-vqgan/tokenizer tokens.npy --out recon/

``tokens.npy`` holds int64 [N, L] in the data's order. The tokenizer is a ``save_pretrained`` folder, a released
checkpoint (``--official FAMILY --checkpoint FILE``) or a ``test_*`` registry name (random weights, for trying the
commands). Images are centre-cropped to the tokenizer's size (ADM policy); ``detokenize`` writes PNGs
``000000.png``, ... at that size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vfmtok.commands.eval_recon import add_tokenizer_arguments, tokenizer_from_args
from vfmtok.data.sources import image_loader, open_images
from vfmtok.fileio import atomic_write
from vfmtok.progress import progress_bar


def _tokenizer(args: argparse.Namespace):  # -> Tokenizer

    tok = tokenizer_from_args(args).to(args.device)
    if not tok.spec.is_discrete:
        raise ValueError(f"{tok.spec.name} is continuous: it has no tokens (use vfmtok eval-recon to reconstruct)")
    return tok


def _tokenize(args: argparse.Namespace) -> int:
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be > 0, got {args.batch_size}")
    if args.num is not None and args.num <= 0:
        raise ValueError(f"--num must be > 0, got {args.num}")
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out {out}: expected a .npy file name (int64 tokens [N, L])")
    tok = _tokenizer(args)
    data = open_images(args.data, size=tok.spec.image_size, split=args.split)
    n = len(data) if args.num is None else min(args.num, len(data))
    if n == 0:
        raise ValueError(f"--data {args.data}: no images")
    chunks = []
    bar = progress_bar(n, desc=f"tokenize {tok.spec.name}")
    for images, _ in image_loader(data, args.batch_size, device=args.device, indices=range(n)):
        chunks.append(tok.tokenize(images).cpu().numpy())
        bar.update(len(images))
    bar.close()
    tokens = np.concatenate(chunks).astype(np.int64)  # [N, L]
    def save(path: Path) -> None:
        with path.open("wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, tokens)

    atomic_write(out, save)
    print(json.dumps({"out": str(out), "shape": list(tokens.shape), "tokenizer": tok.spec.name,
                      "codebook_size": tok.spec.codebook_size}))
    return 0


def _detokenize(args: argparse.Namespace) -> int:
    from PIL import Image


    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be > 0, got {args.batch_size}")
    src = Path(args.tokens)
    if not src.is_file():
        raise FileNotFoundError(f"token file not found: {src} (write one with vfmtok tokenize)")
    try:
        tokens = np.load(src, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{src} is not a readable .npy file: {e}") from e
    tok = _tokenizer(args)
    L, K = tok.spec.num_tokens, tok.spec.codebook_size
    if tokens.ndim != 2 or tokens.shape[1] != L or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{src}: expected integer tokens [N, {L}] for {tok.spec.name}, got {tokens.dtype} "
                         f"{tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= K):
        raise ValueError(f"{src}: tokens must lie in [0, {K}) for {tok.spec.name}, got [{tokens.min()}, "
                         f"{tokens.max()}]: were they written by another tokenizer?")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = progress_bar(len(tokens), desc=f"detokenize {tok.spec.name}")
    for start in range(0, len(tokens), args.batch_size):
        images = tok.detokenize(torch.from_numpy(tokens[start:start + args.batch_size].astype(np.int64)))
        for i, im in enumerate(images.permute(0, 2, 3, 1).cpu().numpy()):  # [B, 3, H, W] -> [B, H, W, 3]
            atomic_write(out / f"{start + i:06d}.png", lambda p, im=im: Image.fromarray(im).save(p, format="PNG"))
        bar.update(len(images))
    bar.close()
    print(json.dumps({"out": str(out), "images": len(tokens), "tokenizer": tok.spec.name}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tokenize`` and ``detokenize`` to the ``vfmtok`` subcommands."""

    fmt = argparse.ArgumentDefaultsHelpFormatter
    device = "cuda" if torch.cuda.is_available() else "cpu"
    p = sub.add_parser("tokenize", help="images -> tokens.npy (int64 [N, L])", formatter_class=fmt,
                       epilog="example: vfmtok tokenize --tokenizer test_vqgan --data kodak --out tokens.npy")
    add_tokenizer_arguments(p)
    p.add_argument("--data", required=True, help="folder (flat or ImageFolder), .tar/.tar.gz, .npz, or "
                                                 "NAME[:SPLIT] (kodak, cifar10:test)")
    p.add_argument("--split", help="split of a bare data set name")
    p.add_argument("--num", type=int, help="the first N images (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=device)
    p.add_argument("--out", required=True, help="output .npy file")
    p.set_defaults(func=_tokenize)

    p = sub.add_parser("detokenize", help="tokens.npy -> PNG images", formatter_class=fmt,
                       epilog="example: vfmtok detokenize --tokenizer test_vqgan tokens.npy --out recon/")
    add_tokenizer_arguments(p)
    p.add_argument("tokens", help="a .npy file of int64 tokens [N, L] (from vfmtok tokenize)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=device)
    p.add_argument("--out", required=True, help="output folder for 000000.png, ...")
    p.set_defaults(func=_detokenize)
