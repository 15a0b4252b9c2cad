"""Typed configuration of a benchmark run (hydra structured configs).

A misspelt key or a wrongly typed value fails when the config is composed, with hydra's message
naming the key; an out-of-range value fails in :func:`validate_config`, naming the key. Presets live in
``benchmarks/conf/preset/*.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from vfmtok.errors import ConfigError

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
    stream: bool = False  # read the eval split lazily from disk (ImageNet scale) instead of decoding it to memory


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
class ReleasedGPTConfig:
    """A released class-conditional GPT sampled instead of training one (paper tables)."""

    tokenizer: str = MISSING  # catalog alias whose tokens the GPT was trained on
    official: str = MISSING  # load_official family: llamagen_gpt | vfmtok_gpt
    checkpoint: str = MISSING  # file name, relative to VFMTOK_WEIGHTS (or absolute)
    protocol: str = MISSING  # sampling protocol (vfmtok.ar.protocols), e.g. llamagen, vfmtok
    cfg_scales: list[float] = field(default_factory=list)  # empty: the protocol's scale for this checkpoint
    table: str = ""  # the paper table the setting reproduces


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
    official: str = ""  # a released GPT family for every tokenizer of the run, instead of training
    checkpoint: str = ""  # its file, relative to VFMTOK_WEIGHTS (or absolute)
    protocol: str = ""  # sampling protocol of released GPTs ("" = the ar.* sampler settings above)
    released: list[ReleasedGPTConfig] = field(default_factory=list)  # per-tokenizer released GPTs
    reference: str = ""  # ADM reference batch npz for gFID of released GPTs (VFMTOK_WEIGHTS or VFMTOK_DATA)
    eval_size: int = 0  # samples resized to this size before scoring (0: the tokenizer's size)


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
    obj = compose_config(overrides)
    validate_config(obj)
    return obj


def compose_config(overrides: list[str]) -> BenchConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` (types checked by hydra; values not validated)."""
    _register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def presets() -> dict[str, str]:
    """Preset name -> its one-line description (the first comment line of its YAML file)."""
    out = {}
    for path in sorted((CONF_DIR / "preset").glob("*.yaml")):
        lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#") and "@package" not in ln]
        text = " ".join(lines)
        first = text.split(". ")[0].rstrip(".")
        if len(first.split(": ")[0]) >= 30:
            first = first.split(": ")[0]
        out[path.stem] = first if len(first) <= 110 else first[:107] + "..."
    return out


#: keys that choose where and how a run executes, not what it measures: they never change a run's label
EXECUTION_KEYS = ("device", "threads", "launcher", "nproc", "results_dir", "work_dir", "progress")


def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_differences(cfg: BenchConfig) -> dict[str, Any]:
    """``key -> value`` where ``cfg`` differs from its preset as shipped (execution keys excluded)."""
    base = _leaves(to_dict(compose_config([f"preset={cfg.preset}"])))
    mine = _leaves(to_dict(cfg))
    keys = sorted(k for k in set(base) | set(mine)
                  if k.split(".")[0] not in EXECUTION_KEYS and base.get(k, "<unset>") != mine.get(k, "<unset>"))
    return {k: mine.get(k, "<unset>") for k in keys}


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_label(cfg: BenchConfig, max_len: int = 60) -> str:
    """The name a run's rows carry in the tables: the preset, plus what differs from it.

    ``smoke`` for the preset as shipped; ``smoke+catalog.vqgan.steps=5`` for one change; for changes too long
    to spell out, ``smoke+3 overrides@<hash>`` (the record's ``config`` holds them all).
    """
    from vfmtok.fileio import sha256_json

    diff = config_differences(cfg)
    if not diff:
        return cfg.preset
    text = ",".join(f"{k}={_fmt(v)}" for k, v in diff.items())
    if len(text) <= max_len:
        return f"{cfg.preset}+{text}"
    return f"{cfg.preset}+{len(diff)} overrides@{sha256_json(diff)[:6]}"


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def validate_config(cfg: BenchConfig) -> None:
    """Reject out-of-range values when the config is built, naming the key (hydra checks only the types).

    Rules: budgets, batch sizes, learning rates, sample counts, image sizes and cfg scales are positive. A
    tokenizer (or GPT) with ``steps: 0`` must name released weights with ``official`` and ``checkpoint``: no
    preset ever evaluates random weights silently. Batch sizes may not exceed ``data.train_n``.
    """
    _check("launcher", cfg.launcher, cfg.launcher in ("local", "torchrun"), "'local' or 'torchrun'")
    _check("nproc", cfg.nproc, cfg.nproc >= 1, ">= 1")
    _check("threads", cfg.threads, cfg.threads >= 0, ">= 0 (0: the library default)")
    if not cfg.tokenizers:
        raise ConfigError(f"tokenizers is empty: name at least one of {sorted(cfg.catalog)}")
    unknown = [t for t in cfg.tokenizers if t not in cfg.catalog]
    if unknown:
        raise ConfigError(f"unknown tokenizer(s) {unknown} for preset {cfg.preset!r}; available: {sorted(cfg.catalog)}")
    d = cfg.data
    for key in ("image_size", "train_n", "eval_n", "probe_train_n"):
        _check(f"data.{key}", getattr(d, key), getattr(d, key) > 0, "> 0")
    for alias, run in cfg.catalog.items():
        k = f"catalog.{alias}"
        released = bool(run.official and run.checkpoint)
        if run.official and not run.checkpoint:
            raise ConfigError(f"{k}.official={run.official!r} needs {k}.checkpoint (the released weights file)")
        if not released:
            _check(f"{k}.steps", run.steps, run.steps > 0,
                   "> 0, or name released weights with official=FAMILY and checkpoint=FILE (a tokenizer trained "
                   "for no step has random weights)")
            _check(f"{k}.batch_size", run.batch_size, 0 < run.batch_size <= d.train_n,
                   f"in [1, data.train_n={d.train_n}]")
            _check(f"{k}.lr", run.lr, run.lr > 0, "> 0")
            _check(f"{k}.warmup_steps", run.warmup_steps, run.warmup_steps >= 0, ">= 0")
            _check(f"{k}.disc_start", run.disc_start, run.disc_start >= 0, ">= 0")
            _check(f"{k}.disc_weight", run.disc_weight, run.disc_weight >= 0, ">= 0")
            _check(f"{k}.pixel_loss", run.pixel_loss, run.pixel_loss in ("l1", "l2", "l2+mse"),
                   "'l1', 'l2' or 'l2+mse'")
    a = cfg.ar
    ar_released = bool(getattr(a, "official", "") and getattr(a, "checkpoint", "")) or bool(getattr(a, "released", []))
    if cfg.suite.generation and not ar_released:
        _check("ar.steps", a.steps, a.steps > 0,
               "> 0, or name a released GPT (a GPT trained for no step samples noise)")
        _check("ar.batch_size", a.batch_size, 0 < a.batch_size <= d.train_n, f"in [1, data.train_n={d.train_n}]")
        _check("ar.lr", a.lr, a.lr > 0, "> 0")
        _check("ar.warmup_steps", a.warmup_steps, a.warmup_steps >= 0, ">= 0")
        _check("ar.eval_every", a.eval_every, a.eval_every >= 0, ">= 0 (0: only at the end)")
    _check("ar.num_samples", a.num_samples, a.num_samples > 0, "> 0")
    _check("ar.cfg_scales", a.cfg_scales, bool(a.cfg_scales) and all(c > 0 for c in a.cfg_scales),
           "a non-empty list of scales > 0")
    _check("ar.temperature", a.temperature, a.temperature > 0, "> 0")
    _check("ar.top_k", a.top_k, a.top_k >= 0, ">= 0 (0: off)")
    _check("ar.top_p", a.top_p, 0 < a.top_p <= 1, "in (0, 1]")
    _check("suite.probe_epochs", cfg.suite.probe_epochs, cfg.suite.probe_epochs > 0, "> 0")


def to_dict(cfg: BenchConfig) -> dict[str, Any]:
    """Plain-container form of a config (for hashing and records)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
