"""``vfmtok sample``: sample a class-conditional GPT through a tokenizer into ``samples.npz`` + ``samples.json``.

The counterpart of LlamaGen's ``sample_c2i_ddp.py``: one process or ``torchrun``, ordered resumable shards, an ADM
npz (``arr_0`` uint8 NHWC, ``arr_1`` labels) and a JSON with every setting and the weights' sha256. The GPT is a
released one (``--gpt-official llamagen_gpt|vfmtok_gpt --gpt-checkpoint FILE``) or one trained here (``--gpt
gpt.pt``). ``--protocol NAME`` takes a named sampler configuration (:mod:`vfmtok.ar.protocols`); explicit flags
override its values. Labels: ``--labels uniform`` (i.i.d., LlamaGen's rule) or ``balanced`` (equal per class);
see :mod:`vfmtok.evaluation.samples`.

    vfmtok sample --gpt-official llamagen_gpt --gpt-checkpoint c2i_B_256.pt --tokenizer llamagen_vq_f16_k16384 \\
        --official llamagen_vq --checkpoint vq_ds16_c2i.pt --protocol llamagen --cfg-scale 2.0 --num 50000 \\
        --out runs/gpt-b-samples
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from vfmtok.ar.protocols import get_protocol
from vfmtok.commands.eval_recon import add_tokenizer_arguments, tokenizer_from_args
from vfmtok.distributed import init_from_env, is_main, local_device
from vfmtok.evaluation.resolve import resolve_gpt

SAMPLING_FLAGS = ("cfg_scale", "cfg_schedule", "cfg_interval", "temperature", "top_k", "top_p", "guidance")


def sampling_settings(args: argparse.Namespace) -> tuple[dict[str, Any], str, str, dict[str, Any] | None]:
    """(generate kwargs, precision, label scheme, protocol record): the protocol's values, then explicit flags."""
    kwargs: dict[str, Any] = {}
    precision, labels, record = "fp32", "uniform", None
    if args.protocol:
        proto = get_protocol(args.protocol)
        kwargs = dict(proto.sampling_kwargs())
        precision, labels = proto.precision, proto.label_scheme
        record = proto.to_dict() if hasattr(proto, "to_dict") else {"name": args.protocol}
    for name in SAMPLING_FLAGS:
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    return kwargs, args.precision or precision, args.labels or labels, record


def _run(args: argparse.Namespace) -> int:
    from vfmtok.evaluation.samples import sample_to_npz  # heavy (torch-fidelity): not for --help

    init_from_env(args.device)
    device = local_device(args.device)
    kwargs, precision, labels, protocol = sampling_settings(args)
    tokenizer = tokenizer_from_args(args)
    gpt = resolve_gpt(args.gpt, args.gpt_official, args.gpt_checkpoint, weights=args.gpt_weights,
                      num_tokens=tokenizer.spec.num_tokens if args.gpt_official else None).to(device)
    out = sample_to_npz(gpt, tokenizer, num=args.num, seed=args.seed, batch_size=args.batch_size, out_dir=args.out,
                        labels=labels, num_classes=args.num_classes, eval_size=args.eval_size, precision=precision,
                        shard_size=args.shard_size, max_shards=args.max_shards,
                        provenance={"protocol": protocol} if protocol else None, **kwargs)
    if is_main():
        print(json.dumps({k: out[k] for k in ("complete", "n", "samples_npz", "sampling") if k in out}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sample`` to the ``vfmtok`` subcommands."""
    p = sub.add_parser("sample", help="sample a GPT into samples.npz + samples.json (resumable, torchrun)")
    p.add_argument("--gpt", metavar="FILE", help="a GPT trained here (the gpt.pt of an AR training run)")
    p.add_argument("--gpt-official", metavar="FAMILY", help="released GPT family: llamagen_gpt or vfmtok_gpt")
    p.add_argument("--gpt-checkpoint", metavar="FILE", help="released GPT checkpoint (with --gpt-official)")
    p.add_argument("--gpt-weights", choices=["model", "ema"], help="which weights of the file (default: the "
                                                                    "family's sampler's choice)")
    add_tokenizer_arguments(p)
    p.add_argument("--protocol", help="named sampler configuration (vfmtok.ar.protocols); flags override it")
    p.add_argument("--num", "--num-samples", dest="num", type=int, required=True,
                   help="number of samples; under torchrun spell it --num-samples (torchrun takes --num for its own "
                        "--numa-binding)")
    p.add_argument("--cfg-scale", type=float)
    p.add_argument("--cfg-schedule", choices=["constant", "linear"])
    p.add_argument("--cfg-interval", type=int)
    p.add_argument("--guidance", choices=["not_one", "above_one"], help="when guidance runs (protocols)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--labels", choices=["uniform", "balanced"],
                   help="uniform: i.i.d. randint (LlamaGen's rule; default); balanced: equal per class")
    p.add_argument("--num-classes", type=int, help="draw labels from the first N classes (default: the GPT's)")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="GPT precision (default fp32, or the protocol's)")
    p.add_argument("--eval-size", type=int, help="resize the decoded images (bicubic) to this size, e.g. 384 -> 256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, help="samples per shard (a multiple of --batch-size)")
    p.add_argument("--max-shards", type=int, help="stop after this many new shards per process (rerun continues)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output folder (shards/, samples.npz, samples.json)")
    p.set_defaults(func=_run)
