"""Training utilities shared by the tokenizer and AR trainers.

Seeding and RNG capture, EMA weights, atomic step checkpoints with exact resume, a finite-loss guard, a
resumable data order and the LR schedule (how the device is used: :mod:`vfmtok.train.policy`). Nothing here
keeps global state, so the trainers can be wrapped by DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vfmtok.distributed import all_gather_objects, derive_seed, rank_world
from vfmtok.fileio import atomic_torch_save, atomic_write_text, clean_stale_tmp

STALE_TMP_SECONDS = 10 * 60.0  # an atomic write's temp file this old belongs to a killed process


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a training step may touch."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_rank_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`capture_rng_state`, in rank order (a collective under ``torchrun``)."""
    return all_gather_objects(capture_rng_state())


def restore_rank_rng_state(states: list[dict[str, Any]] | dict[str, Any], seed: int, step: int) -> None:
    """Restore this rank's generators from :func:`capture_rank_rng_states`.

    A checkpoint of the same world size resumes every rank's random stream exactly; one written by another
    world size (or a single-process state dict) cannot, so each rank is reseeded from ``(seed, rank, step)``.
    """
    rank, world = rank_world()
    if isinstance(states, Mapping):
        states = [states]
    if len(states) == world:
        restore_rng_state(states[rank])
    else:
        seed_everything(derive_seed(seed, rank, step))


class EMA:
    """Exponential moving average of a module's floating-point state (parameters and buffers).

    ``ema = d * ema + (1 - d) * current`` after each optimizer step; integer buffers are copied. With
    ``warmup`` the decay of the n-th update is ``d = min(decay, (1 + n) / (10 + n))``, so short runs get an
    average of trained weights rather than of the initialisation. Only the keys of ``state_fn(model)`` are
    tracked (e.g. a tokenizer's trainable state, excluding a frozen encoder).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, state_fn: Any = None, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self._state_fn = state_fn or (lambda m: m.state_dict())
        self.shadow = {k: v.detach().clone() for k, v in self._state_fn(model).items()}

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average."""
        decay = self.current_decay()
        for key, value in self._state_fn(model).items():
            avg = self.shadow[key]
            if avg.is_floating_point():
                avg.lerp_(value.detach(), 1.0 - decay)
            else:
                avg.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.decay, self.warmup, self.updates = state["decay"], state["warmup"], state["updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model`` (restored on exit)."""
        backup = {k: v.detach().clone() for k, v in self._state_fn(model).items()}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(backup, strict=False)


class CheckpointManager:
    """Step checkpoints ``step_XXXXXXXX.pt`` in one folder, written atomically, plus a ``latest`` pointer.

    The pointer is updated only after the checkpoint file is complete, and older files are pruned only
    after that, so an interrupted write never loses the last good checkpoint. Only the main process writes.
    """

    def __init__(self, directory: str | Path, keep: int = 2, is_main: bool = True) -> None:
        self.directory, self.keep, self.is_main = Path(directory), max(keep, 1), is_main
        self.loaded_path: Path | None = None  # the file load_latest read
        if is_main and self.directory.is_dir():
            self.clean_stale_tmp()

    def save(self, step: int, state: dict[str, Any]) -> Path | None:
        """Write ``state`` as the checkpoint of ``step`` (no-op off the main process)."""
        if not self.is_main:
            return None
        path = self.directory / f"step_{step:08d}.pt"
        atomic_torch_save(path, state)
        atomic_write_text(self.directory / "latest", path.name + "\n")
        for old in self._files()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("step_*.pt") if re.fullmatch(r"step_\d{8}\.pt", p.name))

    def latest_path(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.directory / "latest"
        if pointer.is_file():
            path = self.directory / pointer.read_text().strip()
            if path.is_file():
                return path
        files = self._files()
        return files[-1] if files else None

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest readable checkpoint's state, or None when there is none.

        A damaged file (truncated by a crash, say) is skipped with one line on stderr naming it, and the next
        older one is tried; :attr:`loaded_path` is the file the state came from. When every file is damaged the
        error names them all (training from scratch over them would silently discard the run).
        """
        self.loaded_path = None
        newest = self.latest_path()
        if newest is None:
            return None
        candidates = [newest, *[p for p in reversed(self._files()) if p != newest]]
        bad: list[str] = []
        for path in candidates:
            try:
                state = torch.load(path, map_location=map_location, weights_only=False)
            except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is damaged
                bad.append(f"{path} ({type(e).__name__})")
                if self.is_main:
                    why = (str(e).splitlines() or [""])[0].split(". ")[0][:160]  # the first sentence
                    print(f"checkpoint {path} is damaged ({type(e).__name__}: {why}); trying an older one",
                          file=sys.stderr, flush=True)
                continue
            if not isinstance(state, dict) or "step" not in state:
                bad.append(f"{path} (no 'step' entry)")
                continue
            self.loaded_path = path
            return state
        raise ValueError(f"every checkpoint in {self.directory} is damaged: {', '.join(bad)}; move them aside "
                         "to train from scratch")

    def clean_stale_tmp(self, older_than_s: float = STALE_TMP_SECONDS) -> list[Path]:
        """Remove this folder's leftover ``.<name>.*.tmp`` files of interrupted atomic writes."""

        return clean_stale_tmp(self.directory, older_than_s=older_than_s, recursive=False)


def check_config(owner: str, rules: Mapping[str, tuple[Any, bool, str]]) -> None:
    """Raise ValueError for the first ``key: (value, ok, expected)`` rule that fails, naming ``owner.key``.

    The trainers' configs call it from ``__post_init__``, so the library and the command line reject a bad
    value with the same message before any work starts.
    """
    for key, (value, ok, expected) in rules.items():
        if not ok:
            raise ValueError(f"{owner}.{key} must be {expected}, got {value!r}")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training stops and the last good checkpoint is kept."""


def check_finite(losses: Mapping[str, torch.Tensor | float], step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the first non-finite loss."""
    for name, value in losses.items():
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            raise NonFiniteLossError(f"loss {name!r} is {v} at step {step}; stopping (the last checkpoint is kept)")


class ResumableOrder:
    """A deterministic sample order: epoch ``e`` visits a permutation seeded by ``(seed, e)``.

    ``batch_at(step, batch_size)`` returns the indices of the ``step``-th batch (0-based) of the run, so
    a resumed run continues exactly where the interrupted one stopped. Batches never straddle epochs:
    each epoch yields ``num_items // batch_size`` full batches.
    """

    def __init__(self, num_items: int, seed: int, shuffle: bool = True) -> None:
        if num_items <= 0:
            raise ValueError("cannot order an empty dataset")
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle

    def permutation(self, epoch: int) -> torch.Tensor:
        """int64 [N] order of epoch ``epoch``."""
        if not self.shuffle:
            return torch.arange(self.num_items)
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def batch_at(self, step: int, batch_size: int) -> torch.Tensor:
        """Indices int64 [batch_size] of global batch number ``step``."""
        per_epoch = self.num_items // batch_size
        if per_epoch == 0:
            raise ValueError(f"batch size {batch_size} exceeds the dataset size {self.num_items}")
        epoch, pos = divmod(step, per_epoch)
        return self.permutation(epoch)[pos * batch_size:(pos + 1) * batch_size]


def lr_at(step: int, base_lr: float, warmup_steps: int = 0, total_steps: int = 0, schedule: str = "constant",
          min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to ``min_lr_ratio * base_lr``."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"LR schedule must be 'constant' or 'cosine', got {schedule!r}")
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
