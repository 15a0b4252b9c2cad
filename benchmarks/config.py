"""Typed configuration of a benchmark run (hydra structured configs).

A misspelt key or a wrongly typed value fails when the config is composed, with hydra's message
naming the key. Presets live in ``benchmarks/conf/preset/*.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

CONF_DIR = Path(__file__).parent / "conf"


@dataclass
class DataConfig:
    """Which images the run trains and evaluates on."""

    name: str = "cifar10"
    image_size: int = 32
    train_n: int = 2000  # tokenizer / AR training images (first N of a seeded permutation of the train split)
    eval_n: int = 1000  # reconstruction / probe evaluation images (official test order)
    probe_train_n: int = 2000
    flip: bool = True


@dataclass
class TokenizerRunConfig:
    """One tokenizer of the comparison and how it is trained."""

    name: str = MISSING  # registry name
    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-4
    warmup_steps: int = 0
    disc_start: int = 10**9  # adversarial loss off unless a step is given
    disc_weight: float = 0.5
    pixel_loss: str = "l2"
    overrides: dict[str, Any] = field(default_factory=dict)  # constructor overrides for create_tokenizer
    official: str = ""  # official-checkpoint family (load_official) instead of training, e.g. "llamagen_vq"
    checkpoint: str = ""  # path of that official checkpoint


@dataclass
class ARConfig:
    """The class-conditional GPT trained on each tokenizer's tokens."""

    model: str = "gpt_micro"
    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    eval_every: int = 0  # gFID checkpoints along training (0 = only at the end)
    num_samples: int = 500
    cfg_scales: list[float] = field(default_factory=lambda: [1.0, 2.0])
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class SuiteConfig:
    """Which stages run."""

    recon: bool = True
    probe: bool = True
    generation: bool = True
    throughput: bool = True
    fid: bool = True
    probe_epochs: int = 20


@dataclass
class BenchConfig:
    """A whole benchmark run."""

    preset: str = MISSING
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads (0 = library default)
    tokenizers: list[str] = field(default_factory=list)  # keys of `catalog` to run
    catalog: dict[str, TokenizerRunConfig] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    ar: ARConfig = field(default_factory=ARConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    results_dir: str = "results"
    work_dir: str = "results/work"  # stage caches (not committed)
    launcher: str = "local"  # local | torchrun
    nproc: int = 1
    progress: bool = True


def _register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="bench_schema", node=BenchConfig)


def load_config(overrides: list[str] | None = None, preset: str | None = None) -> BenchConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` (hydra syntax) into a validated :class:`BenchConfig`."""
    _register()
    overrides = list(overrides or [])
    if preset is not None:
        overrides.append(f"preset={preset}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    obj: BenchConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    if obj.launcher not in ("local", "torchrun") or obj.nproc < 1:
        raise ValueError(f"launcher must be 'local' or 'torchrun' and nproc >= 1, got {obj.launcher!r}, {obj.nproc}")
    unknown = [t for t in obj.tokenizers if t not in obj.catalog]
    if unknown:
        raise ValueError(f"unknown tokenizer(s) {unknown} for preset {obj.preset!r}; available: {sorted(obj.catalog)}")
    return obj


def to_dict(cfg: BenchConfig) -> dict[str, Any]:
    """Plain-container form of a config (for hashing and records)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
