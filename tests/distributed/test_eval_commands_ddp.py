"""`vfmtok eval-recon` and `vfmtok sample` under torchrun (2 gloo processes) give the one-process files byte for
byte, and a run stopped under one world size resumes under another to the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.unit.test_stream import make_jpeg_folder
from vfmtok.ar import create_gpt
from vfmtok.evaluation.resolve import resolve_tokenizer

pytestmark = pytest.mark.distributed
WORLD = 2
REPO = Path(__file__).resolve().parents[2]
TOK = "test_llamagen_vq"


def _vfmtok(world: int, *args: str) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", "-m"] if world > 1 else \
        ["-m"]
    cmd = [sys.executable, *launcher, "vfmtok.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_eval_recon_two_processes_equal_one(tmp_path: Path, data_root: Path) -> None:
    folder = make_jpeg_folder(tmp_path / "tree", data_root, n=60)
    args = ["eval-recon", "--tokenizer", TOK, "--data", str(folder), "--num-images", "52", "--batch-size", "4",
            "--shard-size", "8", "--workers", "1", "--no-fid", "--device", "cpu"]
    _vfmtok(WORLD, *args, "--out", str(tmp_path / "ddp"))
    _vfmtok(1, *args, "--out", str(tmp_path / "one"))
    assert (tmp_path / "ddp/recon.npz").read_bytes() == (tmp_path / "one/recon.npz").read_bytes()
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ddp", "one"))
    for key in ("n", "psnr", "ssim", "codebook_usage", "codebook_perplexity"):
        assert a[key] == b[key], key
    # stopped after one shard per rank under torchrun, finished by one process: the same file
    _vfmtok(WORLD, *args, "--max-shards", "1", "--out", str(tmp_path / "mixed"))
    assert len(list((tmp_path / "mixed/shards").glob("*.npz"))) == 2 and not (tmp_path / "mixed/recon.npz").exists()
    _vfmtok(1, *args, "--out", str(tmp_path / "mixed"))
    assert (tmp_path / "mixed/recon.npz").read_bytes() == (tmp_path / "one/recon.npz").read_bytes()


def test_sample_two_processes_equal_one(tmp_path: Path) -> None:
    tok = resolve_tokenizer(TOK)
    torch.manual_seed(0)
    gpt = create_gpt("test_gpt", vocab_size=tok.spec.codebook_size, num_tokens=tok.spec.num_tokens, num_classes=4)
    torch.save({"model": gpt.state_dict(), "gpt_config": dict(gpt.config.__dict__)}, tmp_path / "gpt.pt")
    args = ["sample", "--gpt", str(tmp_path / "gpt.pt"), "--tokenizer", TOK, "--num-samples", "22", "--batch-size", "3",
            "--shard-size", "6", "--cfg-scale", "2.0", "--top-k", "16", "--seed", "11", "--labels", "balanced",
            "--device", "cpu"]
    _vfmtok(WORLD, *args, "--out", str(tmp_path / "ddp"))
    _vfmtok(1, *args, "--out", str(tmp_path / "one"))
    assert (tmp_path / "ddp/samples.npz").read_bytes() == (tmp_path / "one/samples.npz").read_bytes()
    record = json.loads((tmp_path / "ddp/samples.json").read_text())
    assert record["n"] == 22 and sum(record["labels"]["counts"]) == 22
