"""The shared training loop: one checkpoint layout for every kind, earlier layouts resume, one config definition."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from vfmtok import create_tokenizer
from vfmtok.ar import create_gpt, load_gpt_checkpoint
from vfmtok.data import synthetic
from vfmtok.train import ARTrainConfig, ARTrainResult, TokenizerTrainConfig, TokenizerTrainer, TrainConfig, train_ar
from vfmtok.train.common import CheckpointManager

TOK_CFG = TokenizerTrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=2, disc_start=1, disc_layers=1,
                               ema_decay=0.9, checkpoint_every=100, log_every=1, flip=True, perceptual_weight=0.0,
                               adaptive_disc_weight=True, progress=False)
GPT_CFG = ARTrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=2, schedule="cosine", ema_decay=0.9,
                        checkpoint_every=100, log_every=2, grad_accum=2, seed=1, progress=False)


def _train_tokenizer(out: Path, stop_after: int | None = None) -> TokenizerTrainer:
    torch.manual_seed(0)
    model = create_tokenizer("test_vqgan")
    trainer = TokenizerTrainer(model, synthetic(16, size=model.spec.image_size, seed=1), TOK_CFG, out)
    trainer.fit(stop_after)
    return trainer


def _train_gpt(out: Path, stop_after: int | None = None) -> ARTrainResult:
    torch.manual_seed(0)
    model = create_gpt("test_gpt", vocab_size=32, num_tokens=16, num_classes=4)
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(32, (32, 16), generator=g), torch.randint(4, (32,), generator=g)
    data = torch.utils.data.TensorDataset(tokens, labels)
    return train_ar(model, data, GPT_CFG, out, stop_after=stop_after)


def _latest(out: Path) -> dict:
    return torch.load(CheckpointManager(out / "checkpoints").latest_path(), weights_only=False)


def test_both_kinds_write_one_checkpoint_layout(tmp_path) -> None:
    _train_tokenizer(tmp_path / "tok", stop_after=2)
    _train_gpt(tmp_path / "gpt", stop_after=2)
    tok, gpt = _latest(tmp_path / "tok"), _latest(tmp_path / "gpt")
    assert set(tok) == set(gpt) == {"step", "model", "optimizers", "ema", "rng", "history", "window", "evals",
                                    "config", "extra"}
    assert set(tok["optimizers"]) == {"model", "disc"} and set(gpt["optimizers"]) == {"model"}
    assert set(tok["extra"]) == {"disc"} and set(gpt["extra"]) == {"gpt_config"}
    assert tok["ema"]["updates"] == gpt["ema"]["updates"] == 2
    assert len(gpt["window"]) == 0 and len(tok["window"]) == 0  # logged at step 2


def _earlier_layout(state: dict) -> dict:
    """A checkpoint as the trainers wrote it before they shared one loop."""
    common = {key: state[key] for key in ("step", "model", "rng", "history", "config")}
    opts, extra = state["optimizers"], state["extra"]
    if "disc" in opts:
        return {**common, "opt": opts["model"], "opt_disc": opts["disc"], "disc": extra["disc"], "ema": state["ema"]}
    return {**common, "optimizer": opts["model"], "ema_state": state["ema"], "evals": state["evals"],
            "gpt_config": extra["gpt_config"], "window": [terms["ce"] for terms in state["window"]]}


def test_checkpoints_of_the_earlier_layouts_resume_exactly(tmp_path) -> None:
    tok_ref, gpt_ref = _train_tokenizer(tmp_path / "tok_ref"), _train_gpt(tmp_path / "gpt_ref")
    _train_tokenizer(tmp_path / "tok", stop_after=3)
    _train_gpt(tmp_path / "gpt", stop_after=3)  # mid-window: log_every=2
    for out in (tmp_path / "tok", tmp_path / "gpt"):
        path = CheckpointManager(out / "checkpoints").latest_path()
        torch.save(_earlier_layout(torch.load(path, weights_only=False)), path)
    tok, gpt = _train_tokenizer(tmp_path / "tok"), _train_gpt(tmp_path / "gpt")
    assert tok.history == tok_ref.history and gpt.history == gpt_ref.history
    for a, b in ((_latest(tmp_path / "tok"), _latest(tmp_path / "tok_ref")),
                 (_latest(tmp_path / "gpt"), _latest(tmp_path / "gpt_ref"))):
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), key
        for key in a["ema"]["shadow"]:
            assert torch.equal(a["ema"]["shadow"][key], b["ema"]["shadow"][key]), key


def test_load_gpt_checkpoint_reads_the_ema_of_step_checkpoints_of_both_layouts(tmp_path) -> None:
    _train_gpt(tmp_path, stop_after=2)
    path = CheckpointManager(tmp_path / "checkpoints").latest_path()
    state = torch.load(path, weights_only=False)
    shadow = state["ema"]["shadow"]
    earlier = tmp_path / "earlier.pt"
    torch.save(_earlier_layout(state), earlier)
    for file in (path, earlier):
        torch.manual_seed(5)
        gpt = load_gpt_checkpoint(create_gpt("test_gpt", vocab_size=32, num_tokens=16, num_classes=4), file)
        assert gpt.loaded_weights == "ema" and all(torch.equal(gpt.state_dict()[k], v) for k, v in shadow.items())
        gpt = load_gpt_checkpoint(gpt, file, weights="model")
        assert all(torch.equal(gpt.state_dict()[k], v) for k, v in state["model"].items())


def test_adaptive_gan_weight_needs_the_tokenizers_layer(tmp_path, monkeypatch) -> None:
    model = create_tokenizer("test_vqgan")
    monkeypatch.setattr(model, "adaptive_weight_layer", lambda: None)
    with pytest.raises(ValueError, match=r"'test_vqgan' has no layer for the adaptive GAN weight .*returns None"):
        TokenizerTrainer(model, synthetic(16, size=model.spec.image_size), TOK_CFG, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_settings_are_defined_once() -> None:
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    for cls in (TokenizerTrainConfig, ARTrainConfig):
        assert shared <= {f.name for f in dataclasses.fields(cls)}
        assert all(f.metadata["help"] for f in dataclasses.fields(cls))
    # the GPT keeps its own defaults where they differ
    assert (ARTrainConfig().batch_size, ARTrainConfig().ema_decay) == (64, 0.9999)
    assert (TokenizerTrainConfig().batch_size, TokenizerTrainConfig().ema_decay) == (32, 0.999)
    assert TokenizerTrainConfig(betas=[0.5, 0.9]).betas == (0.5, 0.9)
    for cls, kwargs, message in [
        (TokenizerTrainConfig, {"gen_loss": "wgan"}, "gen_loss must be 'hinge' or 'non_saturating', got 'wgan'"),
        (TokenizerTrainConfig, {"pixel_loss": "l3"}, "pixel_loss must be 'l1', 'l2' or 'l2+mse', got 'l3'"),
        (ARTrainConfig, {"betas": (0.9, 1.5)}, "betas must be two values in [0, 1), got (0.9, 1.5)"),
        (ARTrainConfig, {"min_lr_ratio": 2.0}, "min_lr_ratio must be in [0, 1], got 2.0"),
        (ARTrainConfig, {"eval_every": -1}, "eval_every must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{re.escape(message)}"):
            cls(**kwargs)


def test_tokenizer_evaluations_leave_training_unchanged_and_survive_a_resume(tmp_path) -> None:
    images = synthetic(8, size=16, seed=3).tensors()[0]
    seen: list[bool] = []

    def psnr(step: int, model: torch.nn.Module) -> dict[str, float]:
        seen.append(model.training)
        err = (model.reconstruct(images).double() - images.double()).pow(2).mean()
        return {"psnr": float(10 * torch.log10(255.0**2 / err))}

    def train(out: Path, stop_after: int | None = None, hook=psnr) -> TokenizerTrainer:
        torch.manual_seed(0)
        model = create_tokenizer("test_vqgan")
        cfg = dataclasses.replace(TOK_CFG, eval_every=2)
        trainer = TokenizerTrainer(model, synthetic(16, size=model.spec.image_size, seed=1), cfg, out, eval_hook=hook)
        trainer.fit(stop_after)
        return trainer

    plain, ref = train(tmp_path / "plain", hook=None), train(tmp_path / "ref")
    assert plain.history == ref.history and plain.evals == []
    assert [e["step"] for e in ref.evals] == [2, 4] and seen == [False, False]  # eval mode, EMA weights
    train(tmp_path / "run", stop_after=3)
    resumed = train(tmp_path / "run")
    assert resumed.evals == ref.evals and resumed.history == ref.history
