"""One trainer for every tokenizer: pixel + perceptual + adversarial losses plus the tokenizer's own terms.

The tokenizer's ``forward`` returns its reconstruction and named loss terms (``codebook``, ``commit``,
``semantic``, ``kl``...); this trainer adds the pixel loss, LPIPS (when its weights exist) and a PatchGAN
hinge loss from ``disc_start`` on, and weights everything by configuration. Each step has two optimizers (the
tokenizer's and, from ``disc_start`` on, the discriminator's); the loop (:mod:`vfmtok.train.loop`) does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vfmtok.distributed import wrap_ddp
from vfmtok.images import to_model_range
from vfmtok.interface import Tokenizer
from vfmtok.losses import NLayerDiscriminator, PerceptualLoss, adaptive_weight, generator_loss, hinge_d_loss
from vfmtok.losses.pixel import pixel_loss
from vfmtok.train.config import TrainConfig, setting
from vfmtok.train.loop import EvalHook, Terms, Trainer


@dataclass
class TokenizerTrainConfig(TrainConfig):
    """Hyper-parameters of tokenizer training (defaults: LlamaGen's recipe at small scale)."""

    pixel_loss: str = setting("l2", "reconstruction loss", choices=("l1", "l2", "l2+mse"))
    pixel_weight: float = setting(1.0, "weight of the pixel loss (>= 0)")
    perceptual_weight: float = setting(1.0, "weight of LPIPS, used only when its weights are available (>= 0)")
    disc_weight: float = setting(0.5, "weight of the adversarial losses (>= 0)")
    disc_start: int = setting(20_000, "step the PatchGAN loss starts (>= 0)")
    disc_layers: int = setting(3, "PatchGAN layers")
    gen_loss: str = setting("hinge", "the generator's adversarial loss", choices=("hinge", "non_saturating"))
    adaptive_disc_weight: bool = setting(False, "scale the adversarial weight by the ratio of the pixel and GAN "
                                                "gradients at the decoder's last layer")
    loss_weights: dict[str, float] = setting(factory=dict, help="weights of the tokenizer's own terms (missing "
                                                                "names weigh 1.0)")
    flip: bool = setting(False, "random horizontal flips (datasets with their own flips, e.g. feature caches, "
                                "do it)")

    def rules(self) -> dict[str, tuple[Any, bool, str]]:
        """The shared rules and the loss settings'."""
        return {**super().rules(), "pixel_loss": self.one_of("pixel_loss"),
                "pixel_weight": (self.pixel_weight, self.pixel_weight >= 0, ">= 0"),
                "perceptual_weight": (self.perceptual_weight, self.perceptual_weight >= 0, ">= 0"),
                "disc_weight": (self.disc_weight, self.disc_weight >= 0, ">= 0"),
                "disc_start": (self.disc_start, self.disc_start >= 0, ">= 0"), "gen_loss": self.one_of("gen_loss")}


@dataclass
class TrainResult:
    """What a finished (or stopped) training run produced."""

    step: int
    history: list[dict[str, float]]
    tokenizer_dir: Path | None
    checkpoint_dir: Path
    perceptual: str  # "on" or the reason it was off
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", **eval_hook outputs}


class TokenizerTrainer(Trainer):
    """Trains ``model`` on ``dataset`` items ``(uint8 image, label)`` or ``(uint8 image, label, features)``.

    Under ``torchrun`` the tokenizer and the discriminator are wrapped in DistributedDataParallel (on CUDA the
    discriminator's BatchNorm is synchronised across ranks). ``fit`` exports the EMA weights (the trained ones
    without EMA) to ``out_dir/tokenizer`` with ``save_pretrained``.
    """

    find_unused_parameters = True  # no loss reaches some parameters (e.g. decoder registers)
    export_name = "tokenizer"
    model: Tokenizer
    cfg: TokenizerTrainConfig

    def __init__(self, model: Tokenizer, dataset: Dataset, cfg: TokenizerTrainConfig, out_dir: str | Path, *,
                 eval_hook: EvalHook | None = None) -> None:
        if cfg.adaptive_disc_weight and model.adaptive_weight_layer() is None:
            raise ValueError(f"tokenizer {model.registry_name!r} has no layer for the adaptive GAN weight "
                             "(its adaptive_weight_layer() returns None): implement it, or set "
                             "adaptive_disc_weight=False")
        super().__init__(model, dataset, cfg, out_dir, eval_hook=eval_hook)

    @property
    def label(self) -> str:
        """The progress bar's label."""
        return f"train {self.model.registry_name}"

    def setup(self) -> None:
        """The discriminator and the perceptual loss."""
        self.disc = self.policy.prepare_model(NLayerDiscriminator(n_layers=self.cfg.disc_layers).to(self.device))
        if self.world > 1 and self.device.type == "cuda":
            self.disc = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.disc)
        self.disc_ddp = wrap_ddp(self.disc, self.device)
        self.perceptual = PerceptualLoss().to(self.device) if self.cfg.perceptual_weight > 0 else None

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam over the tokenizer's trainable parameters, and over the discriminator's."""
        params = [p for _, p in self.model.trainable_named_parameters() if p.requires_grad]
        betas = self.cfg.betas
        fused = self.policy.adam_options()
        return {"model": torch.optim.Adam(params, lr=self.cfg.lr, betas=betas, **fused),
                "disc": torch.optim.Adam(self.disc.parameters(), lr=self.cfg.lr, betas=betas, **fused)}

    def trained_state(self, model: Tokenizer) -> dict[str, torch.Tensor]:
        """The tokenizer's trainable state (a frozen encoder is neither saved nor averaged)."""
        return model.trainable_state_dict()

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trained_state`."""
        self.model.load_trainable_state_dict(state)

    def extra_state(self) -> dict[str, Any]:
        """The discriminator."""
        return {"disc": self.disc.state_dict()}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""
        self.disc.load_state_dict(extra["disc"])

    # ------------------------------------------------------------------ data
    def load_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Images float [b, 3, H, W] in [-1, 1] and, from a feature cache, the encoder features per level."""
        idx = indices.tolist()
        items = [self.dataset[i] for i in idx]
        images = torch.stack([it[0] for it in items])  # uint8 [b, 3, H, W]
        features = None
        if len(items[0]) > 2:
            features = [torch.stack([it[2][lvl] for it in items]).float().to(self.device)
                        for lvl in range(len(items[0][2]))]
        elif self.cfg.flip:
            flips = [bool(np.random.default_rng([self.cfg.seed, self.epoch, i]).random() < 0.5) for i in idx]
            images = torch.stack([im.flip(-1) if f else im for im, f in zip(images, flips)])
        return self.policy.prepare_images(to_model_range(images.to(self.device))), features

    # ------------------------------------------------------------------ the step
    def train_step(self, batch: tuple[torch.Tensor, list[torch.Tensor] | None]) -> dict[str, float]:
        """The tokenizer's optimizer step, then (from ``disc_start`` on) the discriminator's."""
        x, features = batch
        outputs = self.optimize(self.optimizers["model"], self.ddp, self.split(x, *(features or [])),
                                lambda xm, *fm: self._generator_terms(xm, list(fm) or None))
        terms = _mean_terms(outputs)
        if self.step >= self.cfg.disc_start:
            recon = torch.cat([r for _, r in outputs]).detach()  # [b, 3, H, W]
            outputs = self.optimize(self.optimizers["disc"], self.disc_ddp, self.split(x, recon),
                                    self._discriminator_terms)
            terms["disc"] = _mean_terms(outputs)["disc"]
        return {k: float(v) for k, v in terms.items()}

    def _generator_terms(self, x: torch.Tensor, features: list[torch.Tensor] | None) -> tuple[Terms, torch.Tensor]:
        cfg = self.cfg
        with self.policy.autocast():
            out = self.ddp(x, features=features) if features is not None else self.ddp(x)
            recon = out.recon.float()
            terms = {"pixel": cfg.pixel_weight * pixel_loss(recon, x, cfg.pixel_loss)}
            if self.perceptual is not None and self.perceptual.available:
                terms["perceptual"] = cfg.perceptual_weight * self.perceptual(recon, x)
            terms.update({k: cfg.loss_weights.get(k, 1.0) * v for k, v in out.losses.items()})
            if self.step >= cfg.disc_start:
                g = generator_loss(self.disc(recon), cfg.gen_loss)  # the plain module: D is not updated here
                weight = cfg.disc_weight
                if cfg.adaptive_disc_weight:
                    weight = weight * adaptive_weight(terms["pixel"], g, self.model.adaptive_weight_layer())
                terms["gan"] = weight * g
        return terms, recon

    def _discriminator_terms(self, x: torch.Tensor, recon: torch.Tensor) -> tuple[Terms, None]:
        with self.policy.autocast():
            return {"disc": self.cfg.disc_weight * hinge_d_loss(self.disc_ddp(x), self.disc_ddp(recon))}, None

    # ------------------------------------------------------------------ the end
    def summarize(self, window: list[dict[str, float]]) -> dict[str, float]:
        """The last step's terms (global batch), rounded to 6 decimals."""
        return {k: round(v, 6) for k, v in window[-1].items()}

    def export(self, target: Path) -> None:
        """``save_pretrained`` of the EMA weights (or the trained ones without EMA)."""
        if self.ema:
            with self.ema.swapped_into(self.model):
                self.model.save_pretrained(target)
        else:
            self.model.save_pretrained(target)

    def result(self, exported: Path | None) -> TrainResult:
        """The run's :class:`TrainResult`."""
        perceptual = "on" if self.perceptual is not None and self.perceptual.available else (
            self.perceptual.reason if self.perceptual is not None else "off (weight 0)")
        return TrainResult(self.step, self.history, exported, self.ckpt.directory, perceptual, self.evals)


def _mean_terms(outputs: list[tuple[Terms, Any]]) -> Terms:
    """Each term's mean over the micro-batches."""
    return {k: torch.stack([t[k] for t, _ in outputs]).mean() for k in outputs[0][0]}
