"""The tokenizer registry and the public factory functions.

Tokenizer families are modules that call :func:`register_tokenizer` at import. The library names none of them:
installed packages announce theirs in the ``vfmtok.tokenizers`` entry-point group (this project's
``pyproject.toml`` lists VFMTok and the baselines), and a module outside any package registers by being imported
(or with :func:`load_family`).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

from vfmtok.interface import Tokenizer
from vfmtok.registry import Registry

#: registry of tokenizer entry points: ``fn(**overrides) -> Tokenizer``
TOKENIZERS: Registry[Callable[..., Tokenizer]] = Registry("tokenizer")

#: entry-point group of tokenizer family modules (``name = "package.module"``): importing one registers it
ENTRY_POINT_GROUP = "vfmtok.tokenizers"
#: registry name -> the ``load_official`` family of its released weights (paper-size architectures)
_RELEASED: dict[str, str] = {}
_families_loaded = False


def register_tokenizer(name: str, *, released: str | None = None
                       ) -> Callable[[Callable[..., Tokenizer]], Callable[..., Tokenizer]]:
    """Decorator registering a tokenizer entry point under ``name``; ``released`` names the ``load_official``
    family when the architecture's weights were published (``create_tokenizer`` then warns they are random)."""
    if released:
        _RELEASED[name] = released
    return TOKENIZERS.register(name)


def load_family(module: str) -> None:
    """Import the tokenizer family ``module`` (its import registers its tokenizers)."""
    importlib.import_module(module)


def ensure_families_loaded() -> None:
    """Import every family module of the ``vfmtok.tokenizers`` entry-point group (once per process)."""
    global _families_loaded
    if _families_loaded:
        return
    found = entry_points(group=ENTRY_POINT_GROUP)
    if not found:
        raise RuntimeError(f"no tokenizer family is registered in the {ENTRY_POINT_GROUP!r} entry-point group: "
                           "install the project (python -m pip install -e .) so its families are announced")
    for ep in found:
        try:
            load_family(ep.value)
        except ImportError as e:
            raise ImportError(f"tokenizer family {ep.name!r} ({ep.value}) failed to import: {e}") from e
    _families_loaded = True


def list_tokenizers(pattern: str = "*", exclude: str | tuple[str, ...] = ()) -> list[str]:
    """Registered tokenizer names matching ``pattern`` (fnmatch), sorted."""
    ensure_families_loaded()
    return TOKENIZERS.list(pattern, exclude)


def describe_tokenizer(name: str) -> str:
    """One line about the tokenizer registered as ``name``: the first line of its entry point's docstring."""
    ensure_families_loaded()
    doc = (TOKENIZERS.get(name).__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else ""


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
    ensure_families_loaded()
    return _RELEASED.get(name)


def create_tokenizer(name: str, *, pretrained: bool | None = None, **overrides: Any) -> Tokenizer:
    """Build the tokenizer registered as ``name`` with freshly initialised weights.

    ``None`` overrides mean "use the default". For a paper-size architecture whose weights were released
    (``register_tokenizer(..., released=FAMILY)``) it warns once that the weights are random, unless
    ``pretrained=False`` says that this is intended; released weights load with ``vfmtok.load_official(family, path)``.
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
