"""One trainer for every tokenizer: pixel + perceptual + adversarial losses plus the tokenizer's own terms.

The tokenizer's ``forward`` returns its reconstruction and named loss terms (``codebook``, ``commit``,
``semantic``, ``kl``...); this trainer adds the pixel loss, LPIPS (when its weights exist) and a PatchGAN
hinge loss from ``disc_start`` on, weights everything by configuration, and takes care of Adam, clipping,
EMA, checkpoints with exact resume and the finite-loss guard.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vfmtok.distributed import barrier, local_device, mean_across_ranks, rank_world, sync_on_last, wrap_ddp
from vfmtok.fileio import atomic_write_json
from vfmtok.images import to_model_range
from vfmtok.interface import Tokenizer
from vfmtok.losses import NLayerDiscriminator, PerceptualLoss, adaptive_weight, generator_loss, hinge_d_loss
from vfmtok.losses.pixel import pixel_loss
from vfmtok.progress import progress_bar
from vfmtok.train.common import (
    EMA,
    CheckpointManager,
    ResumableOrder,
    autocast_context,
    capture_rank_rng_states,
    check_config,
    check_finite,
    lr_at,
    restore_rank_rng_state,
    seed_everything,
)


@dataclass
class TokenizerTrainConfig:
    """Hyper-parameters of tokenizer training (defaults: LlamaGen's recipe at small scale)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 0  # linear LR warm-up (both optimizers); transformers at high LR need it
    schedule: str = "constant"  # or "cosine" (to zero at ``steps``)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    pixel_loss: str = "l2"
    pixel_weight: float = 1.0
    perceptual_weight: float = 1.0  # used only when LPIPS weights are available
    disc_weight: float = 0.5
    disc_start: int = 20_000
    disc_layers: int = 3
    gen_loss: str = "hinge"
    adaptive_disc_weight: bool = False
    loss_weights: dict[str, float] = field(default_factory=dict)  # tokenizer terms; missing names weigh 1.0
    ema_decay: float = 0.999  # 0 disables EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) at update n, so short runs get a useful EMA
    flip: bool = False  # random horizontal flips (datasets with their own flips, e.g. feature caches, do it)
    grad_accum: int = 1  # micro-batches per rank and step (global batch = batch_size whatever the world size)
    checkpoint_every: int = 500
    log_every: int = 25
    seed: int = 0
    device: str = "cpu"
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_config("TokenizerTrainConfig", {
            "steps": (self.steps, self.steps > 0, "> 0 (a tokenizer trained for no step has random weights)"),
            "batch_size": (self.batch_size, self.batch_size > 0, "> 0"),
            "lr": (self.lr, self.lr > 0, "> 0"),
            "warmup_steps": (self.warmup_steps, self.warmup_steps >= 0, ">= 0"),
            "schedule": (self.schedule, self.schedule in ("constant", "cosine"), "'constant' or 'cosine'"),
            "pixel_loss": (self.pixel_loss, self.pixel_loss in ("l1", "l2", "l2+mse"), "'l1', 'l2' or 'l2+mse'"),
            "grad_clip": (self.grad_clip, self.grad_clip >= 0, ">= 0 (0 disables clipping)"),
            "disc_start": (self.disc_start, self.disc_start >= 0, ">= 0"),
            "ema_decay": (self.ema_decay, 0 <= self.ema_decay < 1, "in [0, 1) (0 disables EMA)"),
            "grad_accum": (self.grad_accum, self.grad_accum >= 1, ">= 1"),
            "checkpoint_every": (self.checkpoint_every, self.checkpoint_every > 0, "> 0"),
            "log_every": (self.log_every, self.log_every > 0, "> 0"),
        })


@dataclass
class TrainResult:
    """What a finished (or stopped) training run produced."""

    step: int
    history: list[dict[str, float]]
    tokenizer_dir: Path | None
    checkpoint_dir: Path
    perceptual: str  # "on" or the reason it was off


class TokenizerTrainer:
    """Trains ``model`` on ``dataset`` items ``(uint8 image, label)`` or ``(uint8 image, label, features)``.

    Under ``torchrun`` (a process group initialised, e.g. by :func:`vfmtok.distributed.init_from_env`) the
    tokenizer and the discriminator are wrapped in DistributedDataParallel, each rank trains on its slice of every
    global batch (``batch_size`` items, in ``grad_accum`` micro-batches), and rank 0 alone writes checkpoints,
    which any world size can resume. On CUDA the discriminator's BatchNorm is synchronised across ranks.
    """

    def __init__(self, model: Tokenizer, dataset: Dataset, cfg: TokenizerTrainConfig, out_dir: str | Path) -> None:
        self.model, self.dataset, self.cfg, self.out_dir = model, dataset, cfg, Path(out_dir)
        self.device = torch.device(local_device(cfg.device))
        self.rank, self.world = rank_world()
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by world size {self.world} x grad_accum "
                             f"{cfg.grad_accum}")
        seed_everything(cfg.seed + self.rank)  # ranks draw different random streams; DDP syncs the weights
        self.model.to(self.device).train()
        params = [p for _, p in model.trainable_named_parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
        self.disc = NLayerDiscriminator(n_layers=cfg.disc_layers).to(self.device)
        if self.world > 1 and self.device.type == "cuda":
            self.disc = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.disc)
        self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr, betas=cfg.betas)
        # no loss reaches some parameters (e.g. decoder registers), so DDP must look for unused ones
        self.model_ddp = wrap_ddp(model, self.device, find_unused_parameters=True)
        self.disc_ddp = wrap_ddp(self.disc, self.device)
        self.perceptual = PerceptualLoss().to(self.device) if cfg.perceptual_weight > 0 else None
        self.ema = (EMA(model, cfg.ema_decay, state_fn=lambda m: m.trainable_state_dict(), warmup=cfg.ema_warmup)
                    if cfg.ema_decay else None)
        self.order = ResumableOrder(len(dataset), cfg.seed)
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", is_main=self.rank == 0)
        self.step = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly."""
        return {"step": self.step, "model": self.model.trainable_state_dict(), "opt": self.opt.state_dict(),
                "disc": self.disc.state_dict(), "opt_disc": self.opt_disc.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "rng": capture_rank_rng_states(),
                "history": self.history, "config": dataclasses.asdict(self.cfg)}

    def resume(self) -> bool:
        """Load the latest checkpoint if there is one; return whether training resumed."""
        state = self.ckpt.load_latest(map_location=self.device)
        if state is None:
            return False
        self.model.load_trainable_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.disc.load_state_dict(state["disc"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        restore_rank_rng_state(state["rng"], self.cfg.seed, state["step"])
        self.step, self.history = state["step"], state["history"]
        return True

    # ------------------------------------------------------------------ data
    def _batch(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        bs = self.cfg.batch_size
        idx = self.order.batch_at(step, bs)[self.rank::self.world].tolist()  # this rank's slice
        epoch = step // (len(self.dataset) // bs)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        items = [self.dataset[i] for i in idx]
        images = torch.stack([it[0] for it in items])  # uint8 [B, 3, H, W]
        features = None
        if len(items[0]) > 2:
            features = [torch.stack([it[2][lvl] for it in items]).float().to(self.device)
                        for lvl in range(len(items[0][2]))]
        elif self.cfg.flip:
            flips = [bool(np.random.default_rng([self.cfg.seed, epoch, i]).random() < 0.5) for i in idx]
            images = torch.stack([im.flip(-1) if f else im for im, f in zip(images, flips)])
        return to_model_range(images.to(self.device)), features

    # ------------------------------------------------------------------ training
    def _generator_terms(self, x: torch.Tensor, features: list[torch.Tensor] | None) -> tuple[dict, torch.Tensor]:
        cfg = self.cfg
        with autocast_context(self.device):
            out = self.model_ddp(x, features=features) if features is not None else self.model_ddp(x)
            recon = out.recon.float()
            terms = {"pixel": cfg.pixel_weight * pixel_loss(recon, x, cfg.pixel_loss)}
            if self.perceptual is not None and self.perceptual.available:
                terms["perceptual"] = cfg.perceptual_weight * self.perceptual(recon, x)
            terms.update({k: cfg.loss_weights.get(k, 1.0) * v for k, v in out.losses.items()})
            if self.step >= cfg.disc_start:
                g = generator_loss(self.disc(recon), cfg.gen_loss)  # the plain module: D is not updated here
                weight = cfg.disc_weight
                if cfg.adaptive_disc_weight:
                    weight = weight * adaptive_weight(terms["pixel"], g, self.model.decoder.last_layer)
                terms["gan"] = weight * g
        check_finite(terms, self.step)
        return terms, recon

    def _accumulate(self, ddp: torch.nn.Module, parts: list[Any], loss_fn: Any) -> list[Any]:
        """Backward of ``loss_fn(part) -> (terms, extra)`` over micro-batches; gradients sync on the last only."""
        outputs = []
        for i, part in enumerate(parts):
            with sync_on_last(ddp, i, len(parts)):
                terms, extra = loss_fn(*part)
                (sum(terms.values()) / len(parts)).backward()
            outputs.append(({k: v.detach() for k, v in terms.items()}, extra))
        return outputs

    @staticmethod
    def _mean_terms(outputs: list[Any]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([t[k] for t, _ in outputs]).mean() for k in outputs[0][0]}

    def _step_optimizer(self, opt: torch.optim.Optimizer) -> None:
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.cfg.grad_clip)
        opt.step()

    def _generator_step(self, x: torch.Tensor, features: list[torch.Tensor] | None) -> tuple[dict, torch.Tensor]:
        n = self.cfg.grad_accum
        feats = [None] * n if features is None else list(zip(*[f.chunk(n) for f in features]))
        self.opt.zero_grad(set_to_none=True)
        outputs = self._accumulate(self.model_ddp, list(zip(x.chunk(n), feats)),
                                   lambda xm, fm: self._generator_terms(xm, None if fm is None else list(fm)))
        self._step_optimizer(self.opt)
        if self.ema:
            self.ema.update(self.model)
        return self._mean_terms(outputs), torch.cat([r for _, r in outputs]).detach()

    def _discriminator_terms(self, x: torch.Tensor, recon: torch.Tensor) -> tuple[dict, None]:
        with autocast_context(self.device):
            d_loss = self.cfg.disc_weight * hinge_d_loss(self.disc_ddp(x), self.disc_ddp(recon))
        check_finite({"disc": d_loss}, self.step)
        return {"disc": d_loss}, None

    def _discriminator_step(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        n = self.cfg.grad_accum
        self.opt_disc.zero_grad(set_to_none=True)
        outputs = self._accumulate(self.disc_ddp, list(zip(x.chunk(n), recon.chunk(n))), self._discriminator_terms)
        self._step_optimizer(self.opt_disc)
        return self._mean_terms(outputs)["disc"]

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``cfg.steps`` (resuming from the latest checkpoint); ``stop_after`` ends this call early."""
        cfg = self.cfg
        self.resume()
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = progress_bar(cfg.steps, self.step, f"train {self.model.registry_name}",
                           cfg.progress if self.rank == 0 else False)
        while self.step < end:
            lr = lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.schedule)
            for group in (*self.opt.param_groups, *self.opt_disc.param_groups):
                group["lr"] = lr
            x, features = self._batch(self.step)
            terms, recon = self._generator_step(x, features)
            if self.step >= cfg.disc_start:
                terms["disc"] = self._discriminator_step(x, recon)
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                terms = mean_across_ranks({k: float(v.detach()) for k, v in terms.items()})  # global batch
                logs = {"step": self.step, **{k: round(v, 6) for k, v in terms.items()}}
                self.history.append(logs)
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "step"})
            if self.step % cfg.checkpoint_every == 0 or self.step == end:
                self.ckpt.save(self.step, self.state_dict())
        bar.close()
        tokenizer_dir = self._export() if self.step >= cfg.steps else None
        barrier()  # the exported files exist for every rank once fit returns
        perceptual = "on" if self.perceptual is not None and self.perceptual.available else (
            self.perceptual.reason if self.perceptual is not None else "off (weight 0)")
        return TrainResult(self.step, self.history, tokenizer_dir, self.ckpt.directory, perceptual)

    def _export(self) -> Path | None:
        """Save the (EMA) weights with ``save_pretrained`` and the loss history."""
        target = self.out_dir / "tokenizer"
        if self.rank != 0:
            return target
        if self.ema:
            with self.ema.swapped_into(self.model):
                self.model.save_pretrained(target)
        else:
            self.model.save_pretrained(target)
        atomic_write_json(self.out_dir / "history.json", json.loads(json.dumps(self.history)))
        return target
