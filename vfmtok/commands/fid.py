"""``vfmtok fid SAMPLES REFERENCE``: gFID, sFID, precision/recall and Inception Score, ADM-evaluator style.

Either argument is an ADM batch npz (``arr_0`` uint8 NHWC) or an image folder. A REFERENCE npz that carries
``mu``/``sigma`` (the ADM reference-batch layout: ``arr_0``, ``mu``, ``sigma``, ``mu_s``, ``sigma_s``, e.g.
``VIRTUAL_imagenet256_labeled.npz``) gives FID against those stored statistics, exactly as the ADM evaluator
does, and precision/recall against its ``arr_0``. See :mod:`vfmtok.evaluation.adm` for every convention.

Prints one line per metric and, with ``--out FILE.json``, writes every number with its provenance (FID weights
sha256, sample and reference counts and hashes, settings, code version) atomically: a failed run leaves an
existing FILE.json untouched.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from vfmtok.fileio import atomic_write_json
from vfmtok.version import code_version

SCHEMA = "vfmtok.fid/1"


def _fmt(value: float | None, reason: str | None) -> str:
    return f"{value:.6g}" if value is not None else f"n/a ({reason})"


def run_fid(samples: str | Path, reference: str | Path, *, batch_size: int = 64, device: str = "cpu",
            inception_score: bool = True, sfid: bool = True, out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate, print, and (with ``out``) write the JSON record; returns the record."""
    from vfmtok.evaluation.adm import evaluate_samples  # heavy (torch-fidelity): not for --help

    if out is not None and Path(out).suffix != ".json":
        raise ValueError(f"--out {out}: expected a .json file name")
    started = time.perf_counter()
    result = evaluate_samples(samples, reference, batch_size=batch_size, device=device,
                              inception_score=inception_score, sfid=sfid)
    record = {
        "schema": SCHEMA,
        "metrics": {"fid": result["fid"], "sfid": result["sfid"], "precision": result["precision"],
                    "recall": result["recall"], "inception_score": result["inception_score"]},
        "reasons": {k[: -len("_reason")]: v for k, v in result.items() if k.endswith("_reason")},
        "n": result["n"], "n_reference": result["n_reference"],
        "samples": {"path": str(samples), "pixels_sha256": result["samples_sha256"]},
        "reference": result["reference"], "fid_reference": result["fid_reference"],
        "fid_backend": result["fid_backend"], "protocol": result["protocol"],
        "settings": {"batch_size": batch_size, "device": device, "k": result.get("k"),
                     "inception_score_chunk": result.get("inception_score_chunk"), "tf32": False,
                     "torch": torch.__version__},
        "code": code_version(), "seconds": round(time.perf_counter() - started, 3),
    }
    print(f"FID        {_fmt(result['fid'], None)}   ({result['fid_reference']}; n={result['n']})")
    print(f"sFID       {_fmt(result['sfid'], result.get('sfid_reason'))}")
    print(f"Precision  {_fmt(result['precision'], result.get('precision_recall_reason'))}")
    print(f"Recall     {_fmt(result['recall'], result.get('precision_recall_reason'))}")
    print(f"IS         {_fmt(result['inception_score'], result.get('inception_score_reason'))}")
    if out is not None:
        atomic_write_json(out, record)
        print(f"wrote {out}")
    return record


def _main(args: argparse.Namespace) -> int:
    run_fid(args.samples, args.reference, batch_size=args.batch_size, device=args.device,
            inception_score=not args.no_is, sfid=not args.no_sfid, out=args.out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fid`` to the ``vfmtok`` parser."""
    p = subparsers.add_parser("fid", help="FID / sFID / precision / recall / IS of samples vs an ADM reference batch",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="ADM npz (arr_0 uint8 NHWC) or image folder of generated images")
    p.add_argument("reference", help="ADM reference batch npz (arr_0 and/or mu, sigma, mu_s, sigma_s) or image folder")
    p.add_argument("--out", help="write every number with its provenance to this JSON file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-is", action="store_true", help="skip the Inception Score")
    p.add_argument("--no-sfid", action="store_true", help="skip sFID")
    p.set_defaults(func=_main)
