"""The AR trainer: exact resume after a kill, learning, the finite-loss guard, evaluation hooks, export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from tests.conftest import random_images
from vfmtok import create_tokenizer
from vfmtok.ar import GPT, create_gpt, load_gpt_checkpoint
from vfmtok.token_cache import TokenDataset, build_token_cache
from vfmtok.train.ar_trainer import ARTrainConfig, train_ar
from vfmtok.train.common import CheckpointManager, NonFiniteLossError

CLASSES = 4


@pytest.fixture(scope="module")
def token_dataset(tmp_path_factory: pytest.TempPathFactory) -> TokenDataset:
    """Tokens of 24 images (and their mirror images) from the tiny LlamaGen VQ tokenizer."""
    torch.manual_seed(0)
    tok = create_tokenizer("test_llamagen_vq").eval()
    images = random_images(24, tok.spec.image_size, seed=5)
    cache = build_token_cache(tok, images, torch.arange(24) % CLASSES, tmp_path_factory.mktemp("tokens"),
                              key={"test": 1}, flip=True)
    return TokenDataset(cache, seed=0)


class PatternDataset(Dataset):
    """Class c's sequence is (3c + t) mod K: learnable from the label alone."""

    def __init__(self, n: int = 64, vocab: int = 64, length: int = 16) -> None:
        self.labels = torch.arange(n) % CLASSES
        self.tokens = (3 * self.labels[:, None] + torch.arange(length)) % vocab  # [N, L]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[i], self.labels[i]


def _gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return create_gpt("test_gpt", 64, 16, CLASSES, **overrides)


def _cfg(**kw) -> ARTrainConfig:
    base = {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 3, "schedule": "cosine", "ema_decay": 0.99,
            "checkpoint_every": 4, "log_every": 2, "eval_every": 3, "seed": 3, "progress": False}
    return ARTrainConfig(**{**base, **kw})


def _probe_hook(step: int, model: torch.nn.Module) -> dict[str, float]:
    torch.rand(100)  # consumes the global RNG on purpose: training must not notice
    return {"weight_sum": float(model.output.weight.detach().sum()), "training": float(model.training)}


def test_kill_and_resume_gives_identical_weights(tmp_path: Path, token_dataset: TokenDataset) -> None:
    ref = train_ar(_gpt(), token_dataset, _cfg(), tmp_path / "ref", eval_hook=_probe_hook)

    def crash_at_6(step: int, model: torch.nn.Module) -> dict[str, float]:
        if step == 6:
            raise KeyboardInterrupt  # killed after the step-4 checkpoint, before the step-8 one
        return _probe_hook(step, model)

    with pytest.raises(KeyboardInterrupt):
        train_ar(_gpt(), token_dataset, _cfg(), tmp_path / "run", eval_hook=crash_at_6)
    assert CheckpointManager(tmp_path / "run" / "checkpoints").latest_path().name == "step_00000004.pt"
    resumed = train_ar(_gpt(seed=99), token_dataset, _cfg(), tmp_path / "run", eval_hook=_probe_hook)

    assert resumed.step == ref.step == 12
    assert resumed.history == ref.history and resumed.evals == ref.evals
    assert [e["step"] for e in ref.evals] == [3, 6, 9, 12] and all(e["training"] == 0.0 for e in ref.evals)
    a, b = torch.load(ref.checkpoint_path), torch.load(resumed.checkpoint_path)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    last = torch.load(tmp_path / "run" / "checkpoints" / "step_00000012.pt", weights_only=False)
    last_ref = torch.load(tmp_path / "ref" / "checkpoints" / "step_00000012.pt", weights_only=False)
    for sa, sb in zip(last["optimizers"]["model"]["state"].values(), last_ref["optimizers"]["model"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_eval_hook_does_not_change_training(tmp_path: Path, token_dataset: TokenDataset) -> None:
    with_hook = train_ar(_gpt(), token_dataset, _cfg(steps=6), tmp_path / "a", eval_hook=_probe_hook)
    without = train_ar(_gpt(), token_dataset, _cfg(steps=6), tmp_path / "b")
    assert with_hook.history == without.history and without.evals == []
    wa, wb = torch.load(with_hook.checkpoint_path), torch.load(without.checkpoint_path)
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])


def test_loss_decreases_on_a_learnable_token_set(tmp_path: Path) -> None:
    model = _gpt(token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0, class_dropout=0.0)
    result = train_ar(model, PatternDataset(), _cfg(steps=80, batch_size=16, lr=1e-2, log_every=1, eval_every=0,
                                                    warmup_steps=0, checkpoint_every=100, schedule="constant"),
                      tmp_path)
    first, last = result.history[0]["loss"], result.final_loss
    assert math.isclose(first, math.log(64), rel_tol=1e-5)  # the output head is zero-initialised
    assert last < 0.25 * first, [h["loss"] for h in result.history]
    assert result.final_loss == result.history[-1]["loss"] and result.history[-1]["step"] == 80


def test_export_loads_ema_weights_and_optimizer_groups(tmp_path: Path, token_dataset: TokenDataset) -> None:
    model = _gpt()
    result = train_ar(model, token_dataset, _cfg(steps=4, eval_every=0), tmp_path)
    exported = torch.load(result.checkpoint_path)
    assert set(exported) >= {"model", "ema", "gpt_config"}
    loaded = load_gpt_checkpoint(_gpt(seed=5), result.checkpoint_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in exported["ema"].items())
    assert not torch.equal(exported["ema"]["output.weight"], exported["model"]["output.weight"])
    state = torch.load(tmp_path / "checkpoints" / "step_00000004.pt", weights_only=False)
    groups = state["optimizers"]["model"]["param_groups"]
    n_matrix = sum(p.dim() >= 2 for p in model.parameters())
    assert [(g["weight_decay"], len(g["params"])) for g in groups] == [
        (0.05, n_matrix), (0.0, sum(1 for _ in model.parameters()) - n_matrix)]
    assert groups[0]["betas"] == (0.9, 0.95)
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] < lrs[1]  # warm-up, then cosine decay
    # finished runs are not retrained
    again = train_ar(_gpt(seed=7), token_dataset, _cfg(steps=4, eval_every=0), tmp_path)
    assert again.step == 4 and again.history == result.history


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, token_dataset: TokenDataset) -> None:
    model = _gpt()
    calls = {"n": 0}
    forward = model.forward

    def poisoned(indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = forward(indices, labels)
        return out * float("nan") if calls["n"] > 6 else out

    model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="step 6"):
        train_ar(model, token_dataset, _cfg(eval_every=0), tmp_path)
    manager = CheckpointManager(tmp_path / "checkpoints")
    assert manager.latest_path().name == "step_00000004.pt"
    state = manager.load_latest()
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "gpt.pt").exists()


def test_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exceeds the dataset size"):
        train_ar(_gpt(), PatternDataset(n=4), _cfg(), tmp_path)
    with pytest.raises(ValueError, match="cosine"):
        train_ar(_gpt(), PatternDataset(), _cfg(schedule="step"), tmp_path)
