"""Two gloo processes agree with one process: training steps, token and feature caches, sampling and FID."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.distributed import workers
from vfmtok.assets import MissingAssetError
from vfmtok.data import synthetic
from vfmtok.metrics.inception import fid_extractor
from vfmtok.metrics.reference import gfid

pytestmark = pytest.mark.distributed
WORLD = 2


def _spawn(tmp_path: Path, job: str, **kwargs) -> Path:
    out = tmp_path / f"{job}-world{WORLD}"
    out.mkdir()
    mp.start_processes(workers.in_group, args=(WORLD, str(tmp_path / f"{job}.pg"), job, str(out), kwargs),
                       nprocs=WORLD, start_method="spawn")
    return out


def _single(tmp_path: Path, job: str, tag: str = "world1", **kwargs) -> Path:
    out = tmp_path / f"{job}-{tag}"
    out.mkdir()
    workers.run_job(job, out, **kwargs)
    return out


#: per-process state that DDP does not (and need not) synchronise: the quantizer's FIFO of recent indices
LOCAL_BUFFERS = ("codebook_used",)


def _synced(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(LOCAL_BUFFERS)}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    a, b = _synced(a), _synced(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=0, atol=atol), \
            f"{key}: max |diff| {float((a[key].float() - b[key].float()).abs().max()):.2e}"


@pytest.mark.parametrize("name,features", [("test_vqgan", False), ("test_vfmtok", True)])
def test_tokenizer_ddp_steps_equal_one_process(tmp_path, name, features) -> None:
    ddp = _spawn(tmp_path, "train_tokenizer", name=name, features=features)
    one = _single(tmp_path, "train_tokenizer", name=name, features=features)
    accum = _single(tmp_path, "train_tokenizer", "accum", name=name, features=features, grad_accum=2)
    ranks = [torch.load(ddp / f"tokenizer_rank{r}of2.pt") for r in range(WORLD)]
    for key, value in _synced(ranks[0]["model"]).items():  # DDP keeps the ranks bit-identical
        assert torch.equal(value, ranks[1]["model"][key]), key
    reference = torch.load(one / "tokenizer_rank0of1.pt")
    # Same global batch, so the same model up to the order of float sums in the gradient all-reduce. Weights are
    # compared through the function they compute: Adam turns float noise on parameters whose true gradient is 0
    # (biases before a GroupNorm, attention key biases) into a fraction of a step, which no output sees. A rank
    # training on its own half batch is off by ~1e-2 here.
    for run in (ranks[0], torch.load(accum / "tokenizer_rank0of1.pt")):
        assert torch.allclose(run["recon"], reference["recon"], rtol=0, atol=1e-4), \
            float((run["recon"] - reference["recon"]).abs().max())
        assert [h["pixel"] for h in run["history"]] == pytest.approx([h["pixel"] for h in reference["history"]],
                                                                     abs=1e-5)


def test_tokenizer_ddp_with_discriminator_keeps_ranks_in_sync(tmp_path) -> None:
    ddp = _spawn(tmp_path, "train_tokenizer", disc_start=1, steps=3)
    a, b = (torch.load(ddp / f"tokenizer_rank{r}of2.pt") for r in range(WORLD))
    assert all("disc" in h for h in a["history"][1:])
    for part in ("model", "disc"):  # BatchNorm running stats are per rank on CPU (no SyncBatchNorm): weights only
        for key, value in _synced(a[part]).items():
            if "running" not in key and "num_batches" not in key:
                assert torch.equal(value, b[part][key]), f"{part}.{key}"


def test_gpt_ddp_steps_equal_one_process(tmp_path) -> None:
    ddp = _spawn(tmp_path, "train_gpt", grad_accum=2)
    one = _single(tmp_path, "train_gpt")
    got, want = torch.load(ddp / "gpt_rank0of2.pt"), torch.load(one / "gpt_rank0of1.pt")
    _assert_close(got["model"], want["model"], atol=1e-5)
    assert [h["loss"] for h in got["history"]] == pytest.approx([h["loss"] for h in want["history"]], abs=1e-5)


@pytest.mark.parametrize("job,folder", [("token_cache", "tokens"), ("feature_cache", "features")])
def test_distributed_cache_is_byte_identical(tmp_path, job, folder) -> None:
    ddp, one = _spawn(tmp_path, job) / folder, _single(tmp_path, job) / folder
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(ddp) for p in ddp.rglob("*") if p.is_file())
    for name in files:
        assert (ddp / name).read_bytes() == (one / name).read_bytes(), name


def test_distributed_sampling_gives_the_same_samples_and_fid(tmp_path) -> None:
    ddp = torch.load(_spawn(tmp_path, "sampling") / "samples_rank0of2.pt")
    one = torch.load(_single(tmp_path, "sampling") / "samples_rank0of1.pt")
    assert len(ddp["images"]) == 13  # 13 samples in chunks of 3 over 2 ranks: trimmed to the requested count
    assert torch.equal(ddp["images"], one["images"]) and torch.equal(ddp["labels"], one["labels"])
    try:
        extractor = fid_extractor()
    except MissingAssetError as e:
        pytest.skip(str(e))
    reference = synthetic(16, size=32, seed=9).tensors()[0]
    assert gfid(ddp["images"], reference, extractor=extractor)["value"] == \
        gfid(one["images"], reference, extractor=extractor)["value"]


def _torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess:
    script = Path(__file__).with_name("torchrun_train.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}", str(script),
           str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_killed_rank_stops_the_job_and_the_relaunch_resumes(tmp_path) -> None:
    straight = _torchrun(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _torchrun(tmp_path / "killed", "--kill-rank", "1", "--kill-step", "3")
    assert killed.returncode != 0  # one rank died: torchrun tears the job down instead of hanging
    ckpts = tmp_path / "killed" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000002.pt"  # the last checkpoint before the crash
    assert not list(ckpts.glob("*.tmp")) and not (tmp_path / "killed" / "tokenizer").exists()
    resumed = _torchrun(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "straight/checkpoints/step_00000006.pt", weights_only=False)
    b = torch.load(ckpts / "step_00000006.pt", weights_only=False)
    assert a["history"] == b["history"]
    for part in ("model", "optimizers"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), f"{part}: {key}"


def _tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested dict/list, by path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {k: v for key, sub in items for k, v in _tensors(sub, f"{prefix}/{key}").items()}
