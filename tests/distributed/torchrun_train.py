"""A tiny tokenizer training run for ``torchrun`` (used by the kill-and-resume test).

    torchrun --standalone --nproc-per-node 2 tests/distributed/torchrun_train.py OUT [--kill-rank R --kill-step S]

With ``--kill-rank`` that rank dies abruptly (``os._exit``) when it reaches step S, as a crashed node would.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from vfmtok import create_tokenizer
from vfmtok.data import synthetic
from vfmtok.distributed import init_from_env, rank_world
from vfmtok.train import TokenizerTrainConfig, TokenizerTrainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-rank", type=int, default=-1)
    parser.add_argument("--kill-step", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    init_from_env("cpu")
    torch.manual_seed(0)
    model = create_tokenizer("test_vqgan")
    cfg = TokenizerTrainConfig(steps=6, batch_size=8, lr=1e-3, disc_start=10**9, ema_decay=0.9, checkpoint_every=2,
                               log_every=1, flip=True, perceptual_weight=0.0, progress=False)
    trainer = TokenizerTrainer(model, synthetic(32, size=model.spec.image_size, seed=1), cfg, args.out)
    step = trainer.train_step

    def maybe_die(batch):
        if rank_world()[0] == args.kill_rank and trainer.step == args.kill_step:
            os._exit(3)
        return step(batch)

    trainer.train_step = maybe_die
    trainer.fit()


if __name__ == "__main__":
    main()
