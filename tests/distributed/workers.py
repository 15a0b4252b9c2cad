"""Work run in each process of a gloo process group (imported by the spawned children, so kept at module level)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vfmtok import create_tokenizer
from vfmtok.ar import create_gpt
from vfmtok.data import synthetic
from vfmtok.distributed import rank_world
from vfmtok.encoders.feature_cache import CachedFeatureDataset, build_feature_cache
from vfmtok.evaluation.samples import sample_images
from vfmtok.images import to_model_range
from vfmtok.token_cache import build_token_cache
from vfmtok.train import TokenizerTrainConfig, TokenizerTrainer
from vfmtok.train.ar_trainer import ARTrainConfig, train_ar

GLOBAL_BATCH = 8


def in_group(rank: int, world: int, init_file: str, job: str, out: str, kwargs: dict[str, Any]) -> None:
    """Entry point of a spawned process: join the group, run ``job``, leave."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        JOBS[job](Path(out), **kwargs)
    finally:
        dist.destroy_process_group()


def run_job(job: str, out: Path, **kwargs: Any) -> None:
    """The same job in this (single) process, for the reference result."""
    torch.set_num_threads(1)
    JOBS[job](out, **kwargs)


def _suffix() -> str:
    rank, world = rank_world()
    return f"rank{rank}of{world}"


def train_tokenizer(out: Path, name: str = "test_vqgan", steps: int = 3, grad_accum: int = 1,
                    disc_start: int = 10**9, features: bool = False) -> None:
    """A few tokenizer steps on a fixed global batch; every rank saves its final weights."""
    torch.manual_seed(0)
    model = create_tokenizer(name)
    data = synthetic(32, size=model.spec.image_size, seed=1)
    if features:
        cache = build_feature_cache(model.encoder, data, "synthetic-32-seed1", root=out / "features")
        data = CachedFeatureDataset(data, cache)
    cfg = TokenizerTrainConfig(steps=steps, batch_size=GLOBAL_BATCH, lr=1e-3, disc_start=disc_start, disc_layers=1,
                               ema_decay=0.9, grad_accum=grad_accum, checkpoint_every=100, log_every=1, flip=True,
                               perceptual_weight=0.0, progress=False)
    trainer = TokenizerTrainer(model, data, cfg, out / "run")
    trainer.fit()
    probe = synthetic(4, size=model.spec.image_size, seed=7).tensors()[0]
    with torch.no_grad():
        recon = model.eval()(to_model_range(probe)).recon  # float [4, 3, H, W] in about [-1, 1]
    torch.save({"model": model.trainable_state_dict(), "disc": trainer.disc.state_dict(), "recon": recon,
                "history": trainer.history}, out / f"tokenizer_{_suffix()}.pt")


def train_gpt(out: Path, steps: int = 4, grad_accum: int = 1) -> None:
    """A few GPT steps (no dropout, so one process and N see the same computation)."""
    torch.manual_seed(0)
    model = create_gpt("test_gpt", vocab_size=32, num_tokens=16, num_classes=4, token_dropout=0.0,
                       resid_dropout=0.0, ffn_dropout=0.0, class_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(32, (64, 16), generator=g), torch.randint(4, (64,), generator=g)
    data = torch.utils.data.TensorDataset(tokens, labels)
    cfg = ARTrainConfig(steps=steps, batch_size=GLOBAL_BATCH, lr=1e-3, warmup_steps=2, grad_accum=grad_accum,
                        ema_decay=0.9, checkpoint_every=100, log_every=1, progress=False)
    result = train_ar(model, data, cfg, out / "gpt")
    torch.save({"model": model.state_dict(), "history": result.history}, out / f"gpt_{_suffix()}.pt")


def token_cache(out: Path) -> None:
    """Tokenize 37 images (not a multiple of the chunk size) with flips into ``out/tokens``."""
    torch.manual_seed(0)
    tok = create_tokenizer("test_vqgan").eval()
    images, labels = synthetic(37, size=tok.spec.image_size, seed=2).tensors()
    build_token_cache(tok, images, labels, out / "tokens", key={"test": 1}, flip=True, batch_size=5)


def feature_cache(out: Path) -> None:
    """Encoder features of 21 images (with the hflip variant) into ``out/features``."""
    tok = create_tokenizer("test_vfmtok")
    build_feature_cache(tok.encoder, synthetic(21, size=32, seed=3), "synthetic-21-seed3", flip=True,
                        root=out / "features", batch_size=4)


def sampling(out: Path, num_samples: int = 13) -> None:
    """Guided samples through a tiny GPT and tokenizer; rank 0 saves them."""
    torch.manual_seed(0)
    tok = create_tokenizer("test_vqgan").eval()
    gpt = create_gpt("test_gpt", vocab_size=tok.spec.codebook_size, num_tokens=tok.spec.num_tokens, num_classes=4,
                     grid=tok.spec.token_grid).eval()
    images, labels = sample_images(gpt, tok, num_samples=num_samples, num_classes=4, cfg_scale=2.0, seed=5,
                                   batch_size=3, top_k=8)
    if rank_world()[0] == 0:
        torch.save({"images": images, "labels": labels}, out / f"samples_{_suffix()}.pt")



JOBS = {"train_tokenizer": train_tokenizer, "train_gpt": train_gpt, "token_cache": token_cache,
        "feature_cache": feature_cache, "sampling": sampling}
