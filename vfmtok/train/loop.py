"""The training loop every model kind shares.

:class:`Trainer` owns everything around a step: seeding and per-rank RNG state, DDP wrapping, the resumable data
order and each rank's slice of the global batch, the LR schedule (every optimizer), gradient accumulation with
clipping and the finite-loss guard (:meth:`Trainer.optimize`), EMA, logging into ``history``, atomic step
checkpoints with exact resume, progress, and the export of the final model with ``history.json``. A model kind
supplies its optimizers (:meth:`~Trainer.build_optimizers`), how indices become a batch
(:meth:`~Trainer.load_batch`), its step (:meth:`~Trainer.train_step`), its history entry
(:meth:`~Trainer.summarize`), its export (:meth:`~Trainer.export`) and its result (:meth:`~Trainer.result`).
An optional ``eval_hook(step, model) -> dict`` runs every ``cfg.eval_every`` steps and at the last step; its
outputs are kept in ``evals``.

Every kind writes ``checkpoints/step_XXXXXXXX.pt`` in one layout: ``step``, ``model`` (the trained state),
``optimizers`` (by name: ``model``, and e.g. ``disc``), ``ema`` (:class:`~vfmtok.train.common.EMA` state or None),
``rng`` (every rank's generators), ``history``, ``window`` (the step terms since the last history entry),
``evals``, ``config`` and ``extra`` (the kind's own state, e.g. the discriminator).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vfmtok.distributed import barrier, local_device, mean_across_ranks, rank_world, sync_on_last, unwrap, wrap_ddp
from vfmtok.fileio import atomic_write_json
from vfmtok.progress import progress_bar
from vfmtok.train.common import (
    EMA,
    CheckpointManager,
    NonFiniteLossError,
    ResumableOrder,
    capture_rank_rng_states,
    capture_rng_state,
    check_finite,
    lr_at,
    restore_rank_rng_state,
    restore_rng_state,
    seed_everything,
)
from vfmtok.train.config import TrainConfig
from vfmtok.train.policy import DevicePolicy

Terms = dict[str, torch.Tensor]
LossFn = Callable[..., tuple[Terms, Any]]
EvalHook = Callable[[int, nn.Module], dict[str, Any]]


class Trainer(abc.ABC):
    """Trains ``model`` on ``dataset`` to ``cfg.steps``, resuming from the latest checkpoint under ``out_dir``.

    Under ``torchrun`` (a process group initialised, e.g. by :func:`vfmtok.distributed.init_from_env`) the model
    is wrapped in DistributedDataParallel (a model already wrapped is used as is), every rank trains on its slice
    of each global batch of ``batch_size`` items, in ``grad_accum`` micro-batches, so the global batch does not
    depend on the world size, and rank 0 alone writes; any world size resumes a checkpoint.

    ``eval_hook(step, model) -> dict`` runs every ``cfg.eval_every`` steps and at the last step, on the EMA weights
    when EMA is on, in eval mode and without touching the training RNG; its outputs are kept in ``evals`` (and in
    checkpoints, so a resumed run keeps the earlier ones).
    """

    #: DDP looks for parameters no loss reaches (e.g. decoder registers)
    find_unused_parameters: bool = False
    #: what :meth:`export` writes, under ``out_dir``
    export_name: str = "model"
    #: the progress bar's label
    label: str = "train"

    def __init__(self, model: nn.Module, dataset: Dataset, cfg: TrainConfig, out_dir: str | Path, *,
                 eval_hook: EvalHook | None = None) -> None:
        self.rank, self.world = rank_world()
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by world size {self.world} x grad_accum "
                             f"{cfg.grad_accum}")
        self.per_epoch = len(dataset) // cfg.batch_size
        if self.per_epoch == 0:
            raise ValueError(f"batch size {cfg.batch_size} exceeds the dataset size {len(dataset)}")
        self.model, self.dataset, self.cfg, self.out_dir = unwrap(model), dataset, cfg, Path(out_dir)
        self.device = torch.device(local_device(cfg.device))
        self.policy = DevicePolicy.resolve(self.device, cfg.precision, cfg.memory_format, cfg.compile)
        self.policy.apply_math()
        seed_everything(cfg.seed + self.rank)  # ranks draw different random streams; DDP syncs the weights
        self.policy.prepare_model(self.model.to(self.device).train())
        ddp = model if model is not self.model else wrap_ddp(model, self.device, self.find_unused_parameters)
        self.ddp = self.policy.wrap_forward(ddp)  # what the step calls: DDP (several ranks), compiled on request
        self.setup()
        self.optimizers = self.build_optimizers()
        self.ema = (EMA(self.model, cfg.ema_decay, state_fn=self.trained_state, warmup=cfg.ema_warmup)
                    if cfg.ema_decay else None)
        self.order = ResumableOrder(len(dataset), cfg.seed)
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", keep=cfg.keep_checkpoints, is_main=self.rank == 0)
        self.step, self.lr = 0, cfg.lr
        self.history: list[dict[str, float]] = []
        self.window: list[dict[str, float]] = []  # each step's rank-averaged terms since the last history entry
        self.eval_hook = eval_hook
        self.evals: list[dict[str, Any]] = []  # {"step", **eval_hook outputs}

    # ------------------------------------------------------------------ what a model kind supplies
    def setup(self) -> None:
        """Build the kind's own modules (after seeding, before the optimizers); nothing by default."""
        return None

    @abc.abstractmethod
    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by checkpoint name (the model's is ``model``); the loop sets their LR every step."""

    @abc.abstractmethod
    def load_batch(self, indices: torch.Tensor) -> Any:
        """This rank's batch of the dataset items ``indices`` (int64 [batch_size / world]), on the device."""

    @abc.abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """One step on ``batch`` (:meth:`optimize` per optimizer); this rank's loss terms."""

    @abc.abstractmethod
    def summarize(self, window: list[dict[str, float]]) -> dict[str, float]:
        """The history entry (besides ``step``) of the steps since the last one (``window``, never empty)."""

    @abc.abstractmethod
    def export(self, target: Path) -> None:
        """Write the final model to ``target`` (rank 0 only)."""

    @abc.abstractmethod
    def result(self, exported: Path | None) -> Any:
        """What :meth:`fit` returns; ``exported`` is None until the run is finished."""

    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The state that is checkpointed and averaged by EMA: all of ``model``'s by default."""
        return model.state_dict()

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trained_state`."""
        self.model.load_state_dict(state)

    def extra_state(self) -> dict[str, Any]:
        """The kind's own checkpoint entries (checkpoint ``extra``)."""
        return {}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`, called first on resume (so it may reject the checkpoint)."""
        return None

    def after_step(self) -> None:
        """Called after each step is logged, before its checkpoint: the evaluation hook when it is due."""
        cfg = self.cfg
        if self.eval_hook and cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
            self._evaluate()

    def _evaluate(self) -> None:
        rng = capture_rng_state()  # evaluation must not perturb the training trajectory
        self.model.eval()
        try:
            if self.ema:
                with self.ema.swapped_into(self.model):
                    out = self.eval_hook(self.step, self.model)
            else:
                out = self.eval_hook(self.step, self.model)
        finally:
            self.model.train()
            restore_rng_state(rng)
        self.evals.append({"step": self.step, **(out or {})})

    def records(self) -> dict[str, Any]:
        """The content of ``history.json``, written with the export."""
        return {"history": self.history, "evals": self.evals}

    # ------------------------------------------------------------------ helpers for train_step
    def split(self, *tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """``tensors`` cut into ``grad_accum`` micro-batches along dim 0: one tuple per micro-batch."""
        return list(zip(*(t.chunk(self.cfg.grad_accum) for t in tensors)))

    def optimize(self, opt: torch.optim.Optimizer, module: nn.Module, parts: list[tuple], loss_fn: LossFn,
                 params: Iterable[torch.Tensor] | None = None) -> list[tuple[Terms, Any]]:
        """One step of ``opt``: backward of the summed terms of ``loss_fn(*part) -> (terms, extra)`` per micro-batch.

        Gradients are averaged over the micro-batches, and DDP (``module``) syncs them on the last one only;
        a non-finite term or gradient norm raises :class:`~vfmtok.train.common.NonFiniteLossError`. The norm of
        ``params`` (the optimizer's by default) is clipped to ``cfg.grad_clip``. Returns each micro-batch's
        detached terms and extra output.
        """
        opt.zero_grad(set_to_none=True)
        outputs = []
        for i, part in enumerate(parts):
            with sync_on_last(module, i, len(parts)):
                terms, extra = loss_fn(*part)
                check_finite(terms, self.step)
                (sum(terms.values()) / len(parts)).backward()
            outputs.append(({k: v.detach() for k, v in terms.items()}, extra))
        if self.cfg.grad_clip:
            params = [p for g in opt.param_groups for p in g["params"]] if params is None else params
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
            if not math.isfinite(norm):
                raise NonFiniteLossError(f"gradient norm is {norm} at step {self.step}; stopping "
                                         "(the last checkpoint is kept)")
        opt.step()
        return outputs

    @property
    def epoch(self) -> int:
        """The data epoch of the current step."""
        return self.step // self.per_epoch

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None) -> Any:
        """Train to ``cfg.steps`` (resuming from the latest checkpoint); ``stop_after`` ends this call early.

        A checkpoint is written every ``checkpoint_every`` steps and at the last step of the call; a finished run
        exports the model (EMA weights where the kind says so) and ``history.json``.
        """
        cfg = self.cfg
        self.resume()
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = progress_bar(cfg.steps, self.step, self.label, cfg.progress if self.rank == 0 else False)
        while self.step < end:
            self._step()
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.history.append({"step": self.step, **self.summarize(self.window)})
                self.window = []
                bar.set_postfix({k: f"{v:.4g}" for k, v in self.history[-1].items() if k != "step"})
            self.after_step()
            if self.step % cfg.checkpoint_every == 0 or self.step == end:
                self.ckpt.save(self.step, self.state_dict())
        bar.close()
        exported = self._export() if self.step >= cfg.steps else None
        barrier()  # the exported files exist for every rank once fit returns
        return self.result(exported)

    def _step(self) -> None:
        cfg = self.cfg
        self.lr = lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.schedule, cfg.min_lr_ratio)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = self.lr
        indices = self.order.batch_at(self.step, cfg.batch_size)[self.rank::self.world]  # this rank's slice
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        terms = self.train_step(self.load_batch(indices))
        if self.ema:
            self.ema.update(self.model)
        self.window.append(mean_across_ranks(terms))  # the global batch's terms
        self.step += 1

    def _export(self) -> Path:
        target = self.out_dir / self.export_name
        if self.rank == 0:
            self.export(target)
            atomic_write_json(self.out_dir / "history.json", self.records())
        return target

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (a collective under ``torchrun``: it gathers every rank's RNG)."""
        return {"step": self.step, "model": self.trained_state(self.model),
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "ema": self.ema.state_dict() if self.ema else None, "rng": capture_rank_rng_states(),
                "history": self.history, "window": self.window, "evals": self.evals,
                "config": dataclasses.asdict(self.cfg),
                "extra": self.extra_state()}

    def resume(self) -> bool:
        """Load the latest checkpoint if there is one; return whether training resumed."""
        state = self.ckpt.load_latest(map_location=self.device)
        if state is None:
            return False
        state = upgrade_layout(state)
        self.load_extra_state(state["extra"])
        self.load_trained_state(state["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        restore_rank_rng_state(state["rng"], self.cfg.seed, state["step"])
        self.step, self.history, self.window = state["step"], state["history"], state["window"]
        self.evals = state["evals"] if "evals" in state else state["extra"].get("evals", [])  # GPTs kept them in extra
        return True


def upgrade_layout(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of the earlier per-kind layouts in the shared one, so their interrupted runs still resume.

    Tokenizers wrote ``opt`` / ``opt_disc`` / ``disc`` / ``ema``; GPTs ``optimizer`` / ``ema_state`` / ``evals`` /
    ``gpt_config`` and a ``window`` of losses.
    """
    if "optimizers" in state:
        return state
    common = {key: state[key] for key in ("step", "model", "rng", "history", "config")}
    if "opt" in state:
        return {**common, "optimizers": {"model": state["opt"], "disc": state["opt_disc"]}, "ema": state["ema"],
                "window": [], "extra": {"disc": state["disc"]}}
    return {**common, "optimizers": {"model": state["optimizer"]}, "ema": state["ema_state"],
            "window": [{"ce": loss} for loss in state["window"]], "evals": state["evals"],
            "extra": {"gpt_config": state["gpt_config"]}}
