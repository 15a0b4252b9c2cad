"""Training the class-conditional GPT on cached tokens (LlamaGen's recipe, scaled by configuration).

Cross-entropy over all token positions; AdamW (betas 0.9/0.95) with weight decay on parameters of two or more
dimensions only; linear warm-up then a constant or cosine LR; gradient clipping; an optional EMA of the weights;
bf16 autocast on CUDA only. Checkpoints are atomic and hold everything needed for an exact resume (weights,
optimizer, EMA, RNG states, the data position is the step). A NaN/inf loss or gradient norm stops training with
:class:`~vfmtok.train.common.NonFiniteLossError` and leaves the last good checkpoint in place. Under
``torchrun`` (a process group initialised, e.g. by :func:`vfmtok.distributed.init_from_env`) the model is wrapped
in DistributedDataParallel, every rank trains on its slice of each global batch (in ``grad_accum`` micro-batches,
so the global batch does not depend on the world size) and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vfmtok.distributed import (
    barrier,
    local_device,
    mean_across_ranks,
    rank_world,
    sync_on_last,
    unwrap,
    wrap_ddp,
)
from vfmtok.fileio import atomic_torch_save, atomic_write_json
from vfmtok.progress import progress_bar
from vfmtok.train.common import (
    EMA,
    CheckpointManager,
    NonFiniteLossError,
    ResumableOrder,
    autocast_context,
    capture_rank_rng_states,
    capture_rng_state,
    check_config,
    check_finite,
    lr_at,
    restore_rank_rng_state,
    restore_rng_state,
    seed_everything,
)

EvalHook = Callable[[int, nn.Module], dict[str, Any]]


@dataclass
class ARTrainConfig:
    """Hyper-parameters of GPT training (defaults: LlamaGen / VFMTok c2i, except the batch size)."""

    steps: int = 1000
    batch_size: int = 64  # global batch (split across ranks)
    grad_accum: int = 1  # micro-batches per rank and step
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 0
    schedule: str = "constant"  # or "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.9999  # 0 disables EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)), so short runs get a useful EMA
    eval_every: int = 0  # call eval_hook every this many steps and at the last step; 0 never
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    seed: int = 0
    device: str = "cpu"
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_config("ARTrainConfig", {
            "steps": (self.steps, self.steps > 0, "> 0 (a GPT trained for no step samples noise)"),
            "batch_size": (self.batch_size, self.batch_size > 0, "> 0"),
            "lr": (self.lr, self.lr > 0, "> 0"),
            "warmup_steps": (self.warmup_steps, self.warmup_steps >= 0, ">= 0"),
            "schedule": (self.schedule, self.schedule in ("constant", "cosine"), "'constant' or 'cosine'"),
            "min_lr_ratio": (self.min_lr_ratio, 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            "weight_decay": (self.weight_decay, self.weight_decay >= 0, ">= 0"),
            "grad_clip": (self.grad_clip, self.grad_clip >= 0, ">= 0 (0 disables clipping)"),
            "ema_decay": (self.ema_decay, 0 <= self.ema_decay < 1, "in [0, 1) (0 disables EMA)"),
            "grad_accum": (self.grad_accum, self.grad_accum >= 1, ">= 1"),
            "eval_every": (self.eval_every, self.eval_every >= 0, ">= 0 (0: only at the end)"),
            "checkpoint_every": (self.checkpoint_every, self.checkpoint_every > 0, "> 0"),
            "keep_checkpoints": (self.keep_checkpoints, self.keep_checkpoints >= 1, ">= 1"),
            "log_every": (self.log_every, self.log_every > 0, "> 0"),
        })


@dataclass
class ARTrainResult:
    """What a training call produced."""

    step: int
    final_loss: float  # mean loss over the last logging window
    history: list[dict[str, float]]  # {"step", "loss", "lr"} every log_every steps
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", **eval_hook outputs}
    checkpoint_path: Path | None = None  # exported weights ("model", and "ema" when on); None until finished
    checkpoint_dir: Path | None = None


class _ARTrainer:
    def __init__(self, model: nn.Module, dataset: Dataset, cfg: ARTrainConfig, out_dir: Path,
                 eval_hook: EvalHook | None) -> None:
        if cfg.steps < 0 or cfg.batch_size <= 0 or cfg.log_every <= 0 or cfg.checkpoint_every <= 0:
            raise ValueError("need steps >= 0 and positive batch_size, log_every and checkpoint_every")
        if cfg.schedule not in ("constant", "cosine"):
            raise ValueError(f"LR schedule must be 'constant' or 'cosine', got {cfg.schedule!r}")
        self.rank, self.world = rank_world()
        if cfg.grad_accum <= 0 or cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by world size {self.world} x grad_accum "
                             f"{cfg.grad_accum}")
        self.core, self.dataset, self.cfg = unwrap(model), dataset, cfg
        self.out_dir, self.eval_hook = out_dir, eval_hook
        self.device = torch.device(local_device(cfg.device))
        seed_everything(cfg.seed + self.rank)  # ranks draw different dropout masks
        self.core.to(self.device).train()
        self.model = model if model is not self.core else wrap_ddp(self.core, self.device)
        params = [(n, p) for n, p in self.core.named_parameters() if p.requires_grad]
        groups = [{"params": [p for _, p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **fused)
        self.ema = EMA(self.core, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay else None
        self.order = ResumableOrder(len(dataset), cfg.seed)
        self.per_epoch = len(dataset) // cfg.batch_size
        if self.per_epoch == 0:
            raise ValueError(f"batch size {cfg.batch_size} exceeds the dataset size {len(dataset)}")
        self.ckpt = CheckpointManager(out_dir / "checkpoints", keep=cfg.keep_checkpoints, is_main=self.rank == 0)
        self.step, self.window = 0, []
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "model": self.core.state_dict(), "optimizer": self.opt.state_dict(),
                "ema_state": self.ema.state_dict() if self.ema else None, "rng": capture_rank_rng_states(),
                "history": self.history, "evals": self.evals, "window": self.window,
                "config": dataclasses.asdict(self.cfg), "gpt_config": self._gpt_config()}

    def _gpt_config(self) -> dict[str, Any] | None:
        config = getattr(self.core, "config", None)
        return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None

    def resume(self) -> None:
        state = self.ckpt.load_latest(map_location=self.device)
        if state is None:
            return
        if state.get("gpt_config") != self._gpt_config():
            raise ValueError(f"{self.ckpt.loaded_path} was written for a different GPT "
                             f"({state.get('gpt_config')}); use a fresh output directory")
        self.core.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.ema and state["ema_state"]:
            self.ema.load_state_dict(state["ema_state"])
        restore_rank_rng_state(state["rng"], self.cfg.seed, state["step"])
        self.step, self.history, self.evals, self.window = (state["step"], state["history"], state["evals"],
                                                           state["window"])

    # ------------------------------------------------------------------ steps
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.batch_at(self.step, self.cfg.batch_size)[self.rank::self.world]
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.step // self.per_epoch)
        if hasattr(self.dataset, "batch"):
            tokens, labels = self.dataset.batch(idx)
        else:
            items = [self.dataset[int(i)] for i in idx]
            tokens, labels = torch.stack([t for t, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])
        return tokens.to(self.device, torch.int64), labels.to(self.device, torch.int64)

    def _train_step(self) -> float:
        cfg = self.cfg
        lr = lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.schedule, cfg.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        tokens, labels = self._batch()
        self.opt.zero_grad(set_to_none=True)
        parts = list(zip(tokens.chunk(cfg.grad_accum), labels.chunk(cfg.grad_accum)))
        losses = []
        for i, (tok, lab) in enumerate(parts):
            with sync_on_last(self.model, i, len(parts)):
                with autocast_context(self.device):
                    logits = self.model(tok, lab)  # [b, L, K]
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tok.reshape(-1))
                check_finite({"ce": loss}, self.step)
                (loss / len(parts)).backward()
            losses.append(float(loss.detach()))
        if cfg.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.core.parameters(), cfg.grad_clip)
            if not math.isfinite(float(norm)):
                raise NonFiniteLossError(f"gradient norm is {float(norm)} at step {self.step}; stopping "
                                         "(the last checkpoint is kept)")
        self.opt.step()
        if self.ema:
            self.ema.update(self.core)
        return mean_across_ranks({"ce": sum(losses) / len(losses)})["ce"]  # the global batch's loss

    def _evaluate(self) -> None:
        rng = capture_rng_state()  # evaluation must not perturb the training trajectory
        self.core.eval()
        try:
            if self.ema:
                with self.ema.swapped_into(self.core):
                    out = self.eval_hook(self.step, self.core)
            else:
                out = self.eval_hook(self.step, self.core)
        finally:
            self.core.train()
            restore_rng_state(rng)
        self.evals.append({"step": self.step, **(out or {})})

    def fit(self, stop_after: int | None) -> ARTrainResult:
        cfg = self.cfg
        self.resume()
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = progress_bar(cfg.steps, self.step, "train gpt", cfg.progress if self.rank == 0 else False)
        while self.step < end:
            self.window.append(self._train_step())
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.history.append({"step": self.step, "loss": sum(self.window) / len(self.window),
                                     "lr": self.opt.param_groups[0]["lr"]})
                self.window = []
                bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}")
            if self.eval_hook and cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                self._evaluate()
            if self.step % cfg.checkpoint_every == 0 or self.step == end:
                self.ckpt.save(self.step, self.state_dict())
        bar.close()
        final = self.history[-1]["loss"] if self.history else float("nan")
        path = self._export() if self.step >= cfg.steps else None
        barrier()  # the exported files exist for every rank once fit returns
        return ARTrainResult(self.step, final, self.history, self.evals, path, self.ckpt.directory)

    def _export(self) -> Path:
        path = self.out_dir / "gpt.pt"
        if self.rank == 0:
            payload = {"model": self.core.state_dict(), "step": self.step, "gpt_config": self._gpt_config(),
                       "registry_name": getattr(self.core, "registry_name", None)}
            if self.ema:
                payload["ema"] = self.ema.shadow
            atomic_torch_save(path, payload)
            atomic_write_json(self.out_dir / "history.json", {"history": self.history, "evals": self.evals})
        return path


def train_ar(model: nn.Module, dataset: Dataset, cfg: ARTrainConfig, out_dir: str | Path, *,
             eval_hook: EvalHook | None = None, stop_after: int | None = None) -> ARTrainResult:
    """Train ``model`` (a GPT; wrapped in DDP under torchrun) on ``dataset`` items ``(tokens int64 [L], label)``.

    Resumes from the latest checkpoint under ``out_dir/checkpoints``. ``eval_hook(step, model) -> dict`` runs
    every ``cfg.eval_every`` steps and at the last step, on the EMA weights when EMA is on, in eval mode and
    without touching the training RNG; its outputs are recorded in ``result.evals``. ``stop_after`` ends this
    call after that many steps (a checkpoint is written). On completion ``out_dir/gpt.pt`` holds ``model`` (and
    ``ema``) weights for :func:`vfmtok.ar.load_gpt_checkpoint`, which prefers ``ema``.
    """
    return _ARTrainer(model, dataset, cfg, Path(out_dir), eval_hook).fit(stop_after)
