"""One training step of each trainer: a tokenizer step (generator and discriminator, GAN on) and a GPT step.

Models: the CIFAR-10 configurations (``vqgan_f4_k1024_cifar``, ``llamagen_vq_f4_k4096_cifar``,
``vfmtok_inception_l64_k4096`` with its frozen encoder run online) and LlamaGen's GPT-B on 256-token sequences.
Reports steps/s, images (or tokens) per second and peak memory. Run: ``nox -s perf -- -k training``.
"""

from __future__ import annotations

import pytest
import torch

from tests.bench.common import DEVICE, device_info, peak_memory_mb, reset_peak_memory, synchronize
from vfmtok import create_tokenizer
from vfmtok.ar import create_gpt
from vfmtok.data import synthetic
from vfmtok.train import ARTrainConfig, TokenizerTrainConfig, TokenizerTrainer
from vfmtok.train.ar_trainer import ARTrainer

TOKENIZERS = ["vqgan_f4_k1024_cifar", "llamagen_vq_f4_k4096_cifar", "vfmtok_inception_l64_k4096"]
TOKENIZER_BATCH = 64 if DEVICE.type == "cuda" else 16
GPT_BATCH = 64 if DEVICE.type == "cuda" else 8
LONG = 10**6  # no checkpoint, log or schedule end inside the benchmark


def _timed_steps(benchmark, trainer) -> dict[str, float]:
    """Time ``load_batch`` + ``train_step`` (what the loop does per step, less the LR and EMA bookkeeping)."""
    step = iter(range(LONG))

    def run() -> dict[str, float]:
        indices = trainer.order.batch_at(next(step), trainer.cfg.batch_size)
        terms = trainer.train_step(trainer.load_batch(indices))
        synchronize()
        return terms

    reset_peak_memory()
    terms = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    return {"steps_per_s_best": 1.0 / benchmark.stats.stats.min, **dict([peak_memory_mb()]), **device_info()}


@pytest.mark.bench
@pytest.mark.parametrize("name", TOKENIZERS)
def test_tokenizer_training_step(benchmark, tmp_path, name: str) -> None:
    torch.manual_seed(0)
    model = create_tokenizer(name, pretrained=False)
    data = synthetic(4 * TOKENIZER_BATCH, size=model.spec.image_size, seed=0)
    cfg = TokenizerTrainConfig(steps=LONG, batch_size=TOKENIZER_BATCH, disc_start=0, checkpoint_every=LONG,
                               log_every=LONG, perceptual_weight=0.0, device=str(DEVICE), progress=False)
    info = _timed_steps(benchmark, TokenizerTrainer(model, data, cfg, tmp_path))
    benchmark.extra_info.update({"model": name, "batch": TOKENIZER_BATCH,
                                 "images_per_s_best": TOKENIZER_BATCH * info["steps_per_s_best"], **info})


@pytest.mark.bench
def test_gpt_b_training_step(benchmark, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_gpt("gpt_b", vocab_size=16384, num_tokens=256, num_classes=1000)
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(16384, (4 * GPT_BATCH, 256), generator=g), torch.randint(1000, (4 * GPT_BATCH,))
    cfg = ARTrainConfig(steps=LONG, batch_size=GPT_BATCH, checkpoint_every=LONG, log_every=LONG,
                        device=str(DEVICE), progress=False)
    trainer = ARTrainer(model, torch.utils.data.TensorDataset(tokens, labels), cfg, tmp_path)
    info = _timed_steps(benchmark, trainer)
    benchmark.extra_info.update({"model": "gpt_b", "batch": GPT_BATCH,
                                 "tokens_per_s_best": GPT_BATCH * 256 * info["steps_per_s_best"], **info})
