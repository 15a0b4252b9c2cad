"""Training the class-conditional GPT on cached tokens (LlamaGen's recipe, scaled by configuration).

Cross-entropy over all token positions; AdamW (betas 0.9/0.95) with weight decay on parameters of two or more
dimensions only; optional evaluations along training. The loop (:mod:`vfmtok.train.loop`) does the rest: LR
warm-up and schedule, clipping, EMA, exact resume, DDP, the finite-loss guard and the export.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vfmtok.fileio import atomic_torch_save
from vfmtok.train.config import TrainConfig, setting
from vfmtok.train.loop import EvalHook, Terms, Trainer


@dataclass
class ARTrainConfig(TrainConfig):
    """Hyper-parameters of GPT training (defaults: LlamaGen / VFMTok c2i, except the batch size)."""

    batch_size: int = setting(64, "global batch per step, split across ranks and micro-batches (> 0)")
    ema_decay: float = setting(0.9999, "EMA decay of the weights, in [0, 1) (0: no EMA)")
    weight_decay: float = setting(0.05, "AdamW weight decay of the matrices (>= 0)")

    def rules(self) -> dict[str, tuple[Any, bool, str]]:
        """The shared rules and the optimizer's."""
        return {**super().rules(), "weight_decay": (self.weight_decay, self.weight_decay >= 0, ">= 0")}


@dataclass
class ARTrainResult:
    """What a training call produced."""

    step: int
    final_loss: float  # mean loss over the last logging window
    history: list[dict[str, float]]  # {"step", "loss", "lr"} every log_every steps
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", **eval_hook outputs}
    checkpoint_path: Path | None = None  # exported weights ("model", and "ema" when on); None until finished
    checkpoint_dir: Path | None = None


class ARTrainer(Trainer):
    """Trains a GPT (wrapped in DDP under torchrun unless it already is) on items ``(tokens int64 [L], label)``.

    ``eval_hook``: see :class:`~vfmtok.train.loop.Trainer`.
    """

    export_name = "gpt.pt"
    label = "train gpt"
    cfg: ARTrainConfig

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """AdamW, with weight decay on the parameters of two or more dimensions only (fused on CUDA)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return {"model": torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas, **self.policy.adam_options())}

    def gpt_config(self) -> dict[str, Any] | None:
        """The GPT's architecture (its dataclass ``config``), or None."""
        config = getattr(self.model, "config", None)
        return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None

    def extra_state(self) -> dict[str, Any]:
        """The architecture (a resume checks it)."""
        return {"gpt_config": self.gpt_config()}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`; a checkpoint of another architecture is rejected."""
        if extra["gpt_config"] != self.gpt_config():
            raise ValueError(f"{self.ckpt.loaded_path} was written for a different GPT ({extra['gpt_config']}); "
                             "use a fresh output directory")

    # ------------------------------------------------------------------ the step
    def load_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens int64 [b, L] and labels int64 [b]."""
        if hasattr(self.dataset, "batch"):
            tokens, labels = self.dataset.batch(indices)
        else:
            items = [self.dataset[int(i)] for i in indices]
            tokens, labels = torch.stack([t for t, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])
        return tokens.to(self.device, torch.int64), labels.to(self.device, torch.int64)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        """One AdamW step; ``ce``: the mean cross-entropy of this rank's micro-batches."""
        outputs = self.optimize(self.optimizers["model"], self.ddp, self.split(*batch), self._cross_entropy,
                                params=self.model.parameters())
        losses = [float(terms["ce"]) for terms, _ in outputs]
        return {"ce": sum(losses) / len(losses)}

    def _cross_entropy(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[Terms, None]:
        with self.policy.autocast():
            logits = self.ddp(tokens, labels)  # [b, L, K]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1))  # [b*L, K], [b*L]
        return {"ce": loss}, None

    # ------------------------------------------------------------------ the end
    def summarize(self, window: list[dict[str, float]]) -> dict[str, float]:
        """The mean loss of the steps since the last entry and the LR of the last one."""
        return {"loss": sum(terms["ce"] for terms in window) / len(window), "lr": self.lr}

    def export(self, target: Path) -> None:
        """``model`` and (with EMA) ``ema`` weights, the step and the architecture, for
        :func:`vfmtok.ar.load_gpt_checkpoint` (which prefers ``ema``)."""
        payload = {"model": self.model.state_dict(), "step": self.step, "gpt_config": self.gpt_config(),
                   "registry_name": getattr(self.model, "registry_name", None)}
        if self.ema:
            payload["ema"] = self.ema.shadow
        atomic_torch_save(target, payload)

    def result(self, exported: Path | None) -> ARTrainResult:
        """The run's :class:`ARTrainResult`."""
        final = self.history[-1]["loss"] if self.history else float("nan")
        return ARTrainResult(self.step, final, self.history, self.evals, exported, self.ckpt.directory)


def train_ar(model: nn.Module, dataset: Dataset, cfg: ARTrainConfig, out_dir: str | Path, *,
             eval_hook: EvalHook | None = None, stop_after: int | None = None) -> ARTrainResult:
    """Train ``model`` with :class:`ARTrainer` (resuming from ``out_dir/checkpoints``); ``stop_after`` ends this
    call after that many steps (a checkpoint is written). On completion ``out_dir/gpt.pt`` holds ``model`` (and
    ``ema``) weights for :func:`vfmtok.ar.load_gpt_checkpoint`, which prefers ``ema``.
    """
    return ARTrainer(model, dataset, cfg, out_dir, eval_hook=eval_hook).fit(stop_after)
