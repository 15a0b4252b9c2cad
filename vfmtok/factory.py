"""The tokenizer registry and the public factory functions."""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import importlib
import warnings
from collections.abc import Callable, Iterator
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


def describe_tokenizer(name: str) -> str:
    """One line about the tokenizer registered as ``name``: the first line of its entry point's docstring."""
    ensure_families_loaded()
    doc = (TOKENIZERS.get(name).__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else ""


#: registry names of paper-size architectures whose weights were released, with their load_official family
RELEASED_FAMILIES: tuple[tuple[str, str], ...] = (
    ("vqgan_f16_*", "vqgan"),
    ("llamagen_vq_f16_*", "llamagen_vq"),
    ("llamagen_vq_f8_*", "llamagen_vq"),
    ("vfmtok_dinov2_*", "vfmtok"),
)
_warned: set[str] = set()
_loading_weights: contextvars.ContextVar[bool] = contextvars.ContextVar("vfmtok_loading_weights", default=False)


@contextlib.contextmanager
def loading_weights() -> Iterator[None]:
    """Within this block :func:`create_tokenizer` builds architectures whose weights are about to be loaded
    (``from_pretrained``, ``load_official``), so it does not warn that they are random."""
    token = _loading_weights.set(True)
    try:
        yield
    finally:
        _loading_weights.reset(token)


def released_family(name: str) -> str | None:
    """The ``load_official`` family of a paper-size tokenizer with released weights, else None."""
    return next((family for pattern, family in RELEASED_FAMILIES if fnmatch.fnmatch(name, pattern)), None)


def create_tokenizer(name: str, *, pretrained: bool | None = None, **overrides: Any) -> Tokenizer:
    """Build the tokenizer registered as ``name`` with freshly initialised weights.

    ``None`` overrides mean "use the default". For a paper-size architecture whose weights were released
    (:data:`RELEASED_FAMILIES`) it warns once that the weights are random, unless ``pretrained=False`` says
    that this is intended; released weights load with ``vfmtok.load_official(family, path)``.
    """
    ensure_families_loaded()
    if pretrained:
        family = released_family(name) or "FAMILY"
        raise ValueError(f"create_tokenizer({name!r}) builds an untrained architecture: load released weights "
                         f"with vfmtok.load_official({family!r}, path), or pass pretrained=False")
    factory = TOKENIZERS.get(name)
    family = released_family(name)
    if pretrained is None and family and not _loading_weights.get() and name not in _warned:
        _warned.add(name)
        warnings.warn(f"create_tokenizer({name!r}) returns random weights; load the released ones with "
                      f"vfmtok.load_official({family!r}, path), or pass pretrained=False to silence this",
                      UserWarning, stacklevel=2)
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    model = factory(**kwargs)
    model.registry_name = name
    model.init_kwargs = kwargs
    return model
