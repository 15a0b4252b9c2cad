"""Training utilities and the tokenizer trainer: EMA, checkpoints, exact resume, finite-loss guard, losses."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vfmtok import create_tokenizer
from vfmtok.data import synthetic
from vfmtok.losses import NLayerDiscriminator, generator_loss, hinge_d_loss, pixel_loss
from vfmtok.train import TokenizerTrainConfig, TokenizerTrainer
from vfmtok.train.common import EMA, CheckpointManager, NonFiniteLossError, ResumableOrder, check_finite, lr_at


def test_ema_math() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1.2))
    with ema.swapped_into(model):
        assert torch.allclose(model.weight, torch.full((1, 2), 1.2))
    assert torch.equal(model.weight, torch.full((1, 2), 3.0))


def test_ema_warmup_follows_early_weights() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.999)
    decays = []
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert float(ema.shadow["weight"]) == pytest.approx(1 - 0.1 * (2 / 11) * (3 / 12))  # mostly the new weight
    restored = EMA(model, decay=0.999)
    restored.load_state_dict(ema.state_dict())
    assert restored.current_decay() == ema.current_decay() == pytest.approx(4 / 13)


def test_checkpoint_manager_keeps_last_good(tmp_path, monkeypatch) -> None:
    mgr = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        mgr.save(step, {"step": step})
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_00000002.pt", "step_00000003.pt"]

    def broken_save(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        mgr.save(4, {"step": 4})
    monkeypatch.undo()
    assert mgr.load_latest()["step"] == 3
    assert not list(tmp_path.glob("*.tmp"))
    assert CheckpointManager(tmp_path / "other", is_main=False).save(1, {}) is None


def test_resumable_order_and_lr() -> None:
    order = ResumableOrder(10, seed=3)
    batches = [order.batch_at(s, 4).tolist() for s in range(6)]  # 2 batches per epoch
    assert batches == [ResumableOrder(10, seed=3).batch_at(s, 4).tolist() for s in range(6)]
    assert len(set(batches[0] + batches[1])) == 8 and batches[0] != batches[2]
    assert lr_at(0, 1.0, warmup_steps=4) == 0.25 and lr_at(10, 1.0, warmup_steps=4) == 1.0
    assert lr_at(100, 1.0, 0, 100, "cosine") == pytest.approx(0.0)
    assert lr_at(50, 1.0, 0, 100, "cosine") == pytest.approx(0.5)


def test_check_finite_names_the_loss() -> None:
    check_finite({"a": torch.tensor(1.0)}, step=1)
    with pytest.raises(NonFiniteLossError, match="'commit' is nan at step 7"):
        check_finite({"a": 1.0, "commit": torch.tensor(float("nan"))}, step=7)


def test_loss_values() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert generator_loss(fake).item() == pytest.approx(1.0)
    assert generator_loss(torch.zeros(3), "non_saturating").item() == pytest.approx(0.6931, abs=1e-4)
    a, b = torch.zeros(4), torch.tensor([1.0, -1.0, 2.0, 0.0])
    assert pixel_loss(a, b, "l1").item() == 1.0 and pixel_loss(a, b, "l2").item() == 1.5
    assert pixel_loss(a, b, "l2+mse").item() == 3.0
    with pytest.raises(ValueError, match="pixel loss"):
        pixel_loss(a, b, "l3")
    disc = NLayerDiscriminator(n_layers=3)
    assert sum(p.numel() for p in disc.parameters()) == 2_765_633
    assert disc(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert sum(p.numel() for p in NLayerDiscriminator(n_layers=2).parameters()) == 663_361


CFG = TokenizerTrainConfig(steps=6, batch_size=4, lr=1e-3, disc_start=2, disc_layers=1, ema_decay=0.9,
                           checkpoint_every=100, log_every=1, flip=True, perceptual_weight=0.0)


def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys) -> None:
    mgr = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        mgr.save(step, {"step": step})
    latest = tmp_path / "step_00000003.pt"
    latest.write_bytes(latest.read_bytes()[:40])  # truncated by a crash
    state = CheckpointManager(tmp_path, keep=3).load_latest()
    assert state["step"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(latest) in err[0] and "damaged" in err[0]
    for p in tmp_path.glob("step_*.pt"):
        p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="every checkpoint in .* is damaged: .*step_00000001.pt"):
        CheckpointManager(tmp_path).load_latest()


def test_damaged_latest_checkpoint_resumes_training_from_the_earlier_one(tmp_path) -> None:
    first = _trainer(tmp_path, checkpoint_every=1, steps=4).fit(stop_after=2)  # checkpoints at steps 1 and 2
    assert first.step == 2
    newest = tmp_path / "checkpoints" / "step_00000002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    trainer = _trainer(tmp_path, checkpoint_every=1, steps=4)
    assert trainer.resume() and trainer.step == 1
    assert trainer.ckpt.loaded_path == tmp_path / "checkpoints" / "step_00000001.pt"


def test_stale_tmp_files_are_cleaned_at_the_next_start(tmp_path) -> None:
    import os
    import time

    from vfmtok.fileio import atomic_write_text

    stale, fresh = tmp_path / ".step_00000002.pt.abc123.tmp", tmp_path / ".step_00000003.pt.def456.tmp"
    stale.write_bytes(b"killed mid-write")
    fresh.write_bytes(b"being written by another process")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    CheckpointManager(tmp_path)
    assert not stale.exists() and fresh.exists()  # only old temp files of killed writes go
    mode = atomic_write_text(tmp_path / "x.txt", "x").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o644 & ~umask  # not mkstemp's 0600


def _trainer(tmp_path, name: str = "test_vqgan", **changes) -> TokenizerTrainer:
    torch.manual_seed(0)
    model = create_tokenizer(name)
    data = synthetic(16, size=model.spec.image_size, seed=1)
    return TokenizerTrainer(model, data, dataclasses.replace(CFG, **changes), tmp_path)


def test_interrupted_run_resumes_to_identical_weights(tmp_path) -> None:
    straight = _trainer(tmp_path / "a").fit()
    first = _trainer(tmp_path / "b").fit(stop_after=3)
    assert first.step == 3 and first.tokenizer_dir is None
    resumed = _trainer(tmp_path / "b").fit()
    assert resumed.step == 6 and straight.history == resumed.history
    assert all("disc" not in h and "gan" not in h for h in straight.history[:2])  # disc_start = 2
    assert all("disc" in h and "gan" in h for h in straight.history[2:])
    a = torch.load(sorted((tmp_path / "a/checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    b = torch.load(sorted((tmp_path / "b/checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    for part, (sa, sb) in {"model": (a["model"], b["model"]), "disc": (a["extra"]["disc"], b["extra"]["disc"])}.items():
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{part}.{key}"
    for key in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][key], b["ema"]["shadow"][key]), key


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path) -> None:
    trainer = _trainer(tmp_path, checkpoint_every=2, steps=6)
    trainer.fit(stop_after=2)
    saved = trainer.ckpt.load_latest()["model"]
    trainer = _trainer(tmp_path, checkpoint_every=2, steps=6)
    original = trainer.model.forward

    def poisoned(x):
        out = original(x)
        return dataclasses.replace(out, losses={**out.losses, "commit": out.losses["commit"] * float("nan")})

    trainer.model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="commit"):
        trainer.fit()
    kept = trainer.ckpt.load_latest()
    assert kept["step"] == 2 and all(torch.equal(kept["model"][k], v) for k, v in saved.items())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_is_named(tmp_path, bad) -> None:
    trainer = _trainer(tmp_path)
    original = trainer.model.forward
    trainer.model.forward = lambda x: dataclasses.replace(original(x), losses={"codebook": torch.tensor(bad)})
    with pytest.raises(NonFiniteLossError, match="codebook"):
        trainer.fit()


def test_lr_warmup_and_cosine_reach_both_optimizers(tmp_path) -> None:
    trainer = _trainer(tmp_path, steps=8, warmup_steps=4, schedule="cosine", lr=1e-3)
    seen = []
    step = trainer.train_step

    def spy(batch):
        seen.append(tuple(trainer.optimizers[name].param_groups[0]["lr"] for name in ("model", "disc")))
        return step(batch)

    trainer.train_step = spy
    trainer.fit()
    gen = [g for g, _ in seen]
    assert [g == d for g, d in seen] == [True] * 8
    assert gen[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3]) and gen[4] == pytest.approx(1e-3)
    assert gen[5] > gen[6] > gen[7] > 0


def test_loss_decreases_and_exports(tmp_path) -> None:
    result = _trainer(tmp_path, steps=40, disc_start=10**9, lr=3e-3, log_every=1).fit()
    pixel = [h["pixel"] for h in result.history]
    assert sum(pixel[-5:]) < 0.6 * sum(pixel[:5])
    assert (result.tokenizer_dir / "model.safetensors").is_file() and result.perceptual == "off (weight 0)"


def test_only_trainable_parameters_are_optimised(tmp_path) -> None:
    trainer = _trainer(tmp_path, name="test_vfmtok")
    optimised = {id(p) for g in trainer.optimizers["model"].param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in trainer.model.encoder.parameters())
    assert len(optimised) == sum(1 for _, p in trainer.model.trainable_named_parameters() if p.requires_grad)
