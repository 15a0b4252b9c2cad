"""Trainer settings, defined once: the shared :class:`TrainConfig`, its validation and its command-line options.

Every field is declared with :func:`setting`, which keeps its help text (and allowed values) in the field's
metadata, so the model kinds' configs (subclasses), the command line (:func:`add_config_arguments`) and the
validation (``__post_init__``) all read the same definition.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vfmtok.train.common import check_config
from vfmtok.train.policy import MEMORY_FORMATS, PRECISIONS

Config = TypeVar("Config", bound="TrainConfig")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple[str, ...] = (),
            factory: Any = dataclasses.MISSING) -> Any:
    """A config field whose help text (and allowed values) live in its metadata."""
    metadata = {"help": help, "choices": choices}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Settings every trainer shares (the model kinds' configs extend it, and may change its defaults)."""

    steps: int = setting(1000, "optimizer steps (> 0)")
    batch_size: int = setting(32, "global batch per step, split across ranks and micro-batches (> 0)")
    lr: float = setting(1e-4, "peak learning rate (> 0)")
    warmup_steps: int = setting(0, "steps of linear LR warm-up (>= 0)")
    schedule: str = setting("constant", "LR after the warm-up", choices=("constant", "cosine"))
    min_lr_ratio: float = setting(0.0, "final LR of the cosine schedule, as a fraction of lr (in [0, 1])")
    betas: tuple[float, float] = setting((0.9, 0.95), "Adam betas")
    grad_clip: float = setting(1.0, "gradient-norm clipping (0: off)")
    ema_decay: float = setting(0.999, "EMA decay of the weights, in [0, 1) (0: no EMA)")
    ema_warmup: bool = setting(True, "EMA decay min(ema_decay, (1 + n) / (10 + n)) at update n, so short runs "
                                     "get a useful average")
    grad_accum: int = setting(1, "micro-batches per rank and step (the global batch stays batch_size)")
    checkpoint_every: int = setting(500, "steps between resumable checkpoints (> 0)")
    keep_checkpoints: int = setting(2, "step checkpoints kept (>= 1)")
    log_every: int = setting(25, "steps between history entries (> 0)")
    eval_every: int = setting(0, "steps between eval_hook calls, and at the last step (0: never)")
    seed: int = setting(0, "seed of the data order and of every rank's random streams")
    device: str = setting("cpu", "torch device")
    precision: str = setting("auto", "autocast: bf16 on CUDA and fp32 on CPU (auto), or fp32 / bf16 everywhere",
                             choices=PRECISIONS)
    memory_format: str = setting("auto", "channels_last on CUDA for convolution models (auto), or contiguous / "
                                         "channels_last everywhere", choices=MEMORY_FORMATS)
    compile: bool = setting(False, "torch.compile the training forward (opt-in)")
    progress: bool | None = setting(None, "progress bar (None: on a terminal)")

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # a list from the command line or a config file
        check_config(type(self).__name__, self.rules())

    def rules(self) -> dict[str, tuple[Any, bool, str]]:
        """``key: (value, ok, expected)`` for :func:`~vfmtok.train.common.check_config`; subclasses extend it."""
        return {
            "steps": (self.steps, self.steps > 0, "> 0 (a model trained for no step keeps its random weights)"),
            "batch_size": (self.batch_size, self.batch_size > 0, "> 0"),
            "lr": (self.lr, self.lr > 0, "> 0"),
            "warmup_steps": (self.warmup_steps, self.warmup_steps >= 0, ">= 0"),
            "schedule": self.one_of("schedule"),
            "min_lr_ratio": (self.min_lr_ratio, 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            "betas": (self.betas, len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                      "two values in [0, 1)"),
            "grad_clip": (self.grad_clip, self.grad_clip >= 0, ">= 0 (0 disables clipping)"),
            "ema_decay": (self.ema_decay, 0 <= self.ema_decay < 1, "in [0, 1) (0 disables EMA)"),
            "grad_accum": (self.grad_accum, self.grad_accum >= 1, ">= 1"),
            "checkpoint_every": (self.checkpoint_every, self.checkpoint_every > 0, "> 0"),
            "keep_checkpoints": (self.keep_checkpoints, self.keep_checkpoints >= 1, ">= 1"),
            "log_every": (self.log_every, self.log_every > 0, "> 0"),
            "eval_every": (self.eval_every, self.eval_every >= 0, ">= 0 (0: never)"),
            "precision": self.one_of("precision"),
            "memory_format": self.one_of("memory_format"),
        }

    def one_of(self, name: str) -> tuple[Any, bool, str]:
        """The rule that field ``name`` takes one of its declared ``choices``."""
        choices = next(f for f in dataclasses.fields(self) if f.name == name).metadata["choices"]
        value = getattr(self, name)
        expected = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"
        return value, value in choices, expected


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[TrainConfig], skip: tuple[str, ...] = ()
                         ) -> None:
    """Add ``--field-name`` options for the fields of ``cls`` with a plain type, defaults and help from the class.

    int, float and str fields take one value (str fields with ``choices`` only those), tuple fields their fixed
    number of values, bool fields ``--name`` / ``--no-name``; fields of other types (dicts, optionals) and those
    in ``skip`` are left to the caller.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        kind = hints[f.name]
        extra: dict[str, Any] = {"choices": f.metadata["choices"]} if f.metadata["choices"] else {}
        if kind is bool:
            extra["action"] = argparse.BooleanOptionalAction
        elif kind in (int, float, str):
            extra["type"] = kind
        elif typing.get_origin(kind) is tuple:
            args = typing.get_args(kind)
            extra.update(type=args[0], nargs=len(args))
        else:
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), default=_default(f), help=f.metadata["help"], **extra)


def config_from(cls: type[Config], source: Any, **fixed: Any) -> Config:
    """``cls`` from the same-named attributes of ``source`` (the options :func:`add_config_arguments` added, a
    benchmark's config...) and ``fixed`` values, validated; fields ``source`` lacks keep their defaults."""
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if hasattr(source, f.name)}
    return cls(**{**values, **fixed})
