"""Typed configuration of a benchmark run (hydra structured configs).

A misspelt key or a wrongly typed value fails when the config is composed, with hydra's message
naming the key; an out-of-range value fails in :func:`validate_config`, naming the key. Presets live in
``benchmarks/conf/preset/*.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, OmegaConf, open_dict

from vfmtok.errors import ConfigError
from vfmtok.fileio import sha256_json
from vfmtok.train import ARTrainConfig, TokenizerTrainConfig
from vfmtok.train.common import check_config

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
class TokenizerRunConfig(TokenizerTrainConfig):
    """One tokenizer of the comparison and how it is trained: the trainer's settings (one definition,
    :class:`vfmtok.train.TokenizerTrainConfig`) with the benchmark's defaults, plus what to build or load.

    ``seed``, ``device``, ``progress``, ``flip`` and ``checkpoint_every`` are the run's (``seed``, ``device``,
    ``progress``, ``data.flip``), not the entry's.
    """

    steps: int = 500
    lr: float = 2e-4
    disc_start: int = 10**9  # adversarial loss off unless a step is given
    name: str = MISSING  # registry name
    overrides: dict[str, Any] = field(default_factory=dict)  # constructor overrides for create_tokenizer
    official: str = ""  # official-checkpoint family (load_official) instead of training, e.g. "llamagen_vq"
    checkpoint: str = ""  # path of that official checkpoint

    def __post_init__(self) -> None:
        """Checked by :func:`validate_config`, which names the catalog key (released weights need no steps)."""


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
class ARConfig(ARTrainConfig):
    """The class-conditional GPT trained on each tokenizer's tokens: the trainer's settings (one definition,
    :class:`vfmtok.train.ARTrainConfig`) with the benchmark's defaults, then sampling and released GPTs.
    ``seed``, ``device``, ``progress`` and ``checkpoint_every`` are the run's, not the entry's."""

    steps: int = 500
    lr: float = 1e-3
    warmup_steps: int = 50
    model: str = "gpt_micro"
    repeats: int = 1  # GPTs trained per tokenizer, with seeds seed, seed+1, ... (the first one is sampled)
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

    def __post_init__(self) -> None:
        """Checked by :func:`validate_config`, which names the ``ar`` key (released GPTs need no steps)."""


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
    """Compose ``conf/config.yaml`` with ``overrides`` (types checked by hydra; values not validated).

    A tokenizer the preset's catalog lacks is added with ``+catalog.ALIAS={name: NAME, steps: ...}`` or
    ``+catalog.ALIAS.KEY=VALUE`` (hydra cannot add entries to a typed mapping itself; unknown keys are an error).
    """
    _register()
    additions, rest = _catalog_additions(list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=rest)
    for alias, fields in additions.items():
        if alias in cfg.catalog:
            raise ConfigError(f"+catalog.{alias}: the preset already has a tokenizer {alias!r}; change its keys "
                              f"with catalog.{alias}.KEY=VALUE (no '+')")
        try:
            entry = TokenizerRunConfig(**fields)
        except TypeError as e:
            known = ", ".join(f.name for f in dataclasses.fields(TokenizerRunConfig))
            raise ConfigError(f"+catalog.{alias}: {e} (keys: {known})") from None
        with open_dict(cfg.catalog):
            cfg.catalog[alias] = OmegaConf.structured(entry)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _catalog_additions(overrides: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Split ``+catalog.ALIAS...`` overrides (new catalog entries, by alias) from the others."""
    additions: dict[str, dict[str, Any]] = {}
    rest = []
    for text, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        parts = parsed.key_or_group.split(".")
        if not (parsed.is_add() and parts[0] == "catalog" and len(parts) in (2, 3)):
            rest.append(text)
            continue
        value = parsed.value()
        entry = additions.setdefault(parts[1], {})
        if len(parts) == 3:
            entry[parts[2]] = value
        elif isinstance(value, dict):
            entry.update(value)
        else:
            raise ConfigError(f"{text}: a new catalog entry is a mapping, e.g. +catalog.{parts[1]}={{name: NAME}}")
    return additions, rest


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
        _check_run_wide(k, run, TokenizerTrainConfig)
        if not released:
            _check_trainer(k, run, {
                "steps": (run.steps, run.steps > 0, "> 0, or name released weights with official=FAMILY and "
                          "checkpoint=FILE (a tokenizer trained for no step has random weights)"),
                "batch_size": (run.batch_size, 0 < run.batch_size <= d.train_n, f"in [1, data.train_n={d.train_n}]")})
    a = cfg.ar
    _check_run_wide("ar", a, ARTrainConfig)
    if cfg.suite.generation and not (a.official and a.checkpoint) and not a.released:
        _check_trainer("ar", a, {
            "steps": (a.steps, a.steps > 0, "> 0, or name a released GPT (a GPT trained for no step samples noise)"),
            "batch_size": (a.batch_size, 0 < a.batch_size <= d.train_n, f"in [1, data.train_n={d.train_n}]"),
            "eval_every": (a.eval_every, a.eval_every >= 0, ">= 0 (0: only at the end)")})
    _check("ar.repeats", a.repeats, a.repeats >= 1, ">= 1")
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


#: trainer settings a run sets once for every model (``seed``, ``device``, ``progress``, ``data.flip``...)
RUN_WIDE_SETTINGS = ("seed", "device", "progress", "flip", "checkpoint_every")


def _check_run_wide(key: str, entry: Any, trainer: type) -> None:
    defaults = trainer()
    for name in RUN_WIDE_SETTINGS:
        if hasattr(defaults, name) and getattr(entry, name) != getattr(defaults, name):
            raise ConfigError(f"{key}.{name}={getattr(entry, name)!r}: this setting is the run's, not one model's; "
                              f"set the run-wide key instead (seed, device, progress, data.flip)")


def _check_trainer(key: str, entry: Any, benchmark_rules: dict[str, tuple[Any, bool, str]]) -> None:
    """The trainer's own rules for ``entry`` (one definition), with the benchmark's stricter ones on top."""
    try:
        check_config(key, {**entry.rules(), **benchmark_rules})
    except ValueError as e:
        raise ConfigError(str(e)) from None
