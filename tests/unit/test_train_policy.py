"""The trainers' device policy: what it resolves to, and bf16 / channels-last / compile against float32 on CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vfmtok import create_tokenizer
from vfmtok.ar import create_gpt
from vfmtok.data import synthetic
from vfmtok.train import ARTrainConfig, TokenizerTrainConfig, TokenizerTrainer
from vfmtok.train.ar_trainer import ARTrainer
from vfmtok.train.policy import DevicePolicy

TOK_CFG = TokenizerTrainConfig(steps=100, batch_size=8, lr=1e-3, disc_start=0, disc_layers=1, perceptual_weight=0.0,
                               adaptive_disc_weight=False, ema_decay=0.0, checkpoint_every=100, log_every=1,
                               flip=False, progress=False)
GPT_CFG = ARTrainConfig(steps=100, batch_size=8, lr=1e-3, ema_decay=0.0, checkpoint_every=100, log_every=1,
                        progress=False)


def test_auto_is_bf16_tf32_channels_last_on_cuda_and_exact_on_cpu() -> None:
    cpu, cuda = DevicePolicy.resolve("cpu"), DevicePolicy.resolve("cuda")
    assert (cpu.bf16, cpu.tf32, cpu.channels_last, cpu.compile) == (False, False, False, False)
    assert (cuda.bf16, cuda.tf32, cuda.channels_last) == (True, True, True)
    assert cuda.adam_options() == {"fused": True} and cpu.adam_options() == {}
    assert not DevicePolicy.resolve("cuda", precision="fp32").tf32  # full float32 asked for: no TF32
    assert DevicePolicy.resolve("cpu", precision="bf16", memory_format="channels_last").bf16
    linear = torch.nn.Linear(2, 2)
    assert cpu.wrap_forward(linear) is linear
    assert isinstance(DevicePolicy.resolve("cpu", compile=True).wrap_forward(linear), torch._dynamo.OptimizedModule)
    with pytest.raises(ValueError, match="precision must be one of"):
        DevicePolicy.resolve("cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(TOK_CFG, precision="half")


def test_channels_last_only_touches_convolution_models() -> None:
    policy = DevicePolicy.resolve("cpu", memory_format="channels_last")
    conv = policy.prepare_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert policy.prepare_images(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)


def _tokenizer_step(tmp_path: Path, **changes) -> tuple[dict[str, float], torch.Tensor]:
    torch.manual_seed(0)
    model = create_tokenizer("test_vqgan")
    trainer = TokenizerTrainer(model, synthetic(16, size=model.spec.image_size, seed=1),
                               dataclasses.replace(TOK_CFG, **changes), tmp_path / str(sorted(changes.items())))
    terms = trainer.train_step(trainer.load_batch(torch.arange(8)))
    return terms, torch.cat([p.detach().flatten() for p in model.parameters()])


def _gpt_step(tmp_path: Path, **changes) -> tuple[dict[str, float], torch.Tensor]:
    torch.manual_seed(0)
    model = create_gpt("test_gpt", vocab_size=32, num_tokens=16, num_classes=4)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randint(32, (16, 16), generator=g), torch.randint(4, (16,)))
    trainer = ARTrainer(model, data, dataclasses.replace(GPT_CFG, **changes), tmp_path / str(sorted(changes.items())))
    terms = trainer.train_step(trainer.load_batch(torch.arange(8)))
    return terms, torch.cat([p.detach().flatten() for p in model.parameters()])


def _assert_same_update(a: torch.Tensor, b: torch.Tensor, lr: float, outliers: float) -> None:
    """Weights after one Adam step from the same start: Adam moves each weight by about ``lr`` whatever the size of
    its gradient, so rounding may flip the step of a weight whose gradient is ~0 (at most 2 lr apart); no more
    than a fraction ``outliers`` of the weights may differ by more than 1e-5."""
    diff = (a - b).abs()
    assert diff.max() <= 2.5 * lr
    assert (diff > 1e-5).float().mean() <= outliers


@pytest.mark.parametrize("step", [_tokenizer_step, _gpt_step], ids=["tokenizer", "gpt"])
def test_bf16_autocast_on_cpu_is_within_two_percent_of_float32(tmp_path: Path, step) -> None:
    fp32_terms, fp32_weights = step(tmp_path, precision="fp32")
    bf16_terms, bf16_weights = step(tmp_path, precision="bf16")
    assert set(bf16_terms) == set(fp32_terms)
    for key, value in fp32_terms.items():
        assert bf16_terms[key] == pytest.approx(value, rel=2e-2, abs=1e-3), key
    _assert_same_update(bf16_weights, fp32_weights, GPT_CFG.lr, outliers=1.0)  # bf16 rounds most gradients


def test_channels_last_on_cpu_matches_contiguous(tmp_path: Path) -> None:
    contiguous_terms, contiguous_weights = _tokenizer_step(tmp_path, memory_format="contiguous")
    last_terms, last_weights = _tokenizer_step(tmp_path, memory_format="channels_last")
    for key, value in contiguous_terms.items():
        assert last_terms[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    _assert_same_update(last_weights, contiguous_weights, TOK_CFG.lr, outliers=1e-3)


def test_compiled_forward_matches_eager_on_cpu(tmp_path: Path) -> None:
    eager_terms, eager_weights = _gpt_step(tmp_path)
    compiled_terms, compiled_weights = _gpt_step(tmp_path, compile=True)
    assert compiled_terms["ce"] == pytest.approx(eager_terms["ce"], rel=1e-4)
    _assert_same_update(compiled_weights, eager_weights, GPT_CFG.lr, outliers=1e-2)
