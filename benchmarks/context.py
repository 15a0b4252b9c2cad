"""What every stage of a run shares: its configuration, stage cache, image sets and device.

:class:`RunContext` is the ground the stage modules stand on (:mod:`benchmarks.pipeline` for the tokenizer
stages, :mod:`benchmarks.generation` for the GPT stages); :func:`prepare_data` builds its :class:`Data`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.config import BenchConfig
from benchmarks.stages import StageRunner
from vfmtok.assets import data_root
from vfmtok.data import ArrayDataset, build_dataset, cifar10
from vfmtok.data.arrays import at_size
from vfmtok.data.sources import open_images
from vfmtok.distributed import local_device
from vfmtok.fileio import sha256_json
from vfmtok.interface import Tokenizer


@dataclass
class Data:
    """The image sets of a run (uint8 arrays) and their content fingerprints.

    With ``data.stream`` (ImageNet scale) ``eval`` is a lazily decoded dataset at ``data.image_size`` and there is
    no training data (``train`` / ``probe_train`` None): released weights are evaluated, nothing is trained.
    """

    name: str
    train: ArrayDataset | None
    eval: Any  # ArrayDataset, or a lazy dataset of (uint8 [3, S, S], label) when streaming
    probe_train: ArrayDataset | None
    fingerprints: dict[str, str] = field(default_factory=dict)
    stream: bool = False

    def describe(self) -> dict[str, Any]:
        """Data section of the record."""
        if self.stream:
            return {"name": self.name, "fingerprints": self.fingerprints, "stream": True,
                    "sizes": {"eval": len(self.eval)}, "sources": {"eval": str(getattr(self.eval, "source", ""))}}
        return {"name": self.name, "fingerprints": self.fingerprints,
                "sizes": {"train": len(self.train), "eval": len(self.eval), "probe_train": len(self.probe_train)},
                "sources": {"train": self.train.source, "eval": self.eval.source}}


def prepare_data(cfg: BenchConfig) -> Data:
    """Training subset (seeded), evaluation subset (first N of the held-out split in official order)."""
    d = cfg.data
    if d.stream:
        return _stream_data(cfg)
    if d.name == "cifar10":
        train_all, test = cifar10("train"), cifar10("test", order="official")
    else:  # an ImageFolder dataset under VFMTOK_DATA/<name>/{train,val}
        train_all = build_dataset("folder", path=data_root() / d.name / "train", size=d.image_size)
        test = build_dataset("folder", path=data_root() / d.name / "val", size=d.image_size)
    train = train_all.random_subset(d.train_n, seed=cfg.seed)
    probe = train if d.probe_train_n == d.train_n else train_all.random_subset(d.probe_train_n, seed=cfg.seed + 1)
    data = Data(d.name, train, test.head(d.eval_n), probe)
    data.fingerprints = {"train": train.fingerprint(), "eval": data.eval.fingerprint(),
                         "probe_train": probe.fingerprint()}
    return data


def _stream_data(cfg: BenchConfig) -> Data:
    """The first ``data.eval_n`` images of ``VFMTOK_DATA/<name>/val``, read lazily (nothing decoded up front)."""
    d = cfg.data
    val = open_images(data_root() / d.name / "val", size=d.image_size)
    if len(val) < d.eval_n:
        raise ValueError(f"data.eval_n={d.eval_n} but {data_root() / d.name / 'val'} holds {len(val)} images")
    fingerprint = sha256_json({"eval": _identity(val), "n": d.eval_n, "size": d.image_size})
    return Data(d.name, None, val, None, {"eval": fingerprint}, stream=True)


def _identity(ds: Any) -> Any:
    """What identifies a lazily read dataset (its files), for stage keys."""
    for attr in ("fingerprint", "identity"):
        value = getattr(ds, attr, None)
        if value is not None:
            return value() if callable(value) else value
    return {"source": str(getattr(ds, "source", type(ds).__name__)), "n": len(ds)}


class RunContext:
    """A run's configuration, stage cache, data and this rank's device, with the FID backend facts it saw."""

    def __init__(self, cfg: BenchConfig, runner: StageRunner, data: Data) -> None:
        self.cfg, self.runner, self.data = cfg, runner, data
        self.device = torch.device(local_device(cfg.device))  # this rank's GPU under torchrun
        self.fid: dict[str, Any] = {}

    def fid_info(self) -> dict[str, Any]:
        """FID backend facts seen during the run (for the record)."""
        return dict(self.fid)

    def stage(self, stage: str, key: dict[str, Any], fn: Callable[[Path], dict[str, Any]], label: str,
              collective: bool = False) -> tuple[dict[str, Any], Path]:
        """Run (or reuse) an evaluation stage keyed by ``key``, the evaluation images and the suite settings."""
        inputs = {**key, "eval": self.data.fingerprints["eval"], "suite": dataclasses.asdict(self.cfg.suite)}
        return self.runner.run(stage, inputs, fn, label, collective=collective), self.runner.path(stage, inputs)

    def eval_images(self, tok: Tokenizer) -> torch.Tensor:
        """Evaluation images uint8 [N, 3, S, S] at the tokenizer's resolution."""
        if self.data.stream:
            raise ValueError("data.stream=true reads the evaluation images lazily: the probe and throughput stages "
                             "need them in memory (set suite.probe=false suite.throughput=false)")
        return at_size(self.data.eval, tok.spec.image_size).tensors()[0]
