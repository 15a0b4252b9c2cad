"""The tokenizer registry and the public factory functions."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from vfmtok.interface import Tokenizer
from vfmtok.registry import Registry

#: registry of tokenizer entry points: ``fn(**overrides) -> Tokenizer``
TOKENIZERS: Registry[Callable[..., Tokenizer]] = Registry("tokenizer")

#: modules whose import registers tokenizer families (in-package models and the baselines)
FAMILY_MODULES: tuple[str, ...] = (
    "vfmtok.models.vfmtok",
    "baselines.vqgan",
    "baselines.llamagen_vq",
)


def register_tokenizer(name: str) -> Callable[[Callable[..., Tokenizer]], Callable[..., Tokenizer]]:
    """Decorator registering a tokenizer entry point under ``name``."""
    return TOKENIZERS.register(name)


def ensure_families_loaded() -> None:
    """Import every module of :data:`FAMILY_MODULES` (idempotent)."""
    for mod in FAMILY_MODULES:
        importlib.import_module(mod)


def list_tokenizers(pattern: str = "*", exclude: str | tuple[str, ...] = ()) -> list[str]:
    """Registered tokenizer names matching ``pattern`` (fnmatch), sorted."""
    ensure_families_loaded()
    return TOKENIZERS.list(pattern, exclude)


def create_tokenizer(name: str, **overrides: Any) -> Tokenizer:
    """Build the tokenizer registered as ``name``; ``None`` overrides mean "use the default"."""
    ensure_families_loaded()
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    model = TOKENIZERS.get(name)(**kwargs)
    model.registry_name = name
    model.init_kwargs = kwargs
    return model
