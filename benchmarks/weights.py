"""Released weights a preset evaluates: where they are found, and a preflight that lists every missing file.

A tokenizer (``catalog.<alias>.official`` + ``checkpoint``), its encoder weights (``overrides.encoder_pretrained``),
a released GPT (``ar.released[*]`` or ``ar.official`` + ``ar.checkpoint``) and the ADM reference batch
(``ar.reference``) name files. A relative name is resolved against the folder in ``VFMTOK_WEIGHTS`` (the
reference batch also against ``VFMTOK_DATA``); an absolute path is used as it is. :func:`missing_weights` is called
before a run does any work: a run that needs a file that is not there stops, listing every such file with the
place it is published (:data:`vfmtok.assets.RELEASED_WEIGHTS`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vfmtok.ar.protocols import list_protocols
from vfmtok.assets import released_by_filename
from vfmtok.errors import ConfigError

WEIGHTS_ENV = "VFMTOK_WEIGHTS"
DATA_ENV = "VFMTOK_DATA"
ADM_REFERENCE_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
                     "VIRTUAL_imagenet256_labeled.npz")


class MissingWeightsError(FileNotFoundError):
    """Files a run needs are absent; the message lists each one and where it is published."""


def resolve_file(name: str, *, envs: tuple[str, ...] = (WEIGHTS_ENV,)) -> Path:
    """``name`` as a path: absolute as given, else under the first of ``envs`` that holds it (else the first set)."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    roots = [Path(os.environ[e]).expanduser() for e in envs if os.environ.get(e)]
    for root in roots:
        if (root / path).is_file():
            return root / path
    return (roots[0] if roots else Path(f"${envs[0]}")) / path


def resolved_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Tokenizer constructor overrides with a file-valued ``encoder_pretrained`` resolved (see :func:`resolve_file`)."""
    out = dict(overrides or {})
    if isinstance(out.get("encoder_pretrained"), str) and out["encoder_pretrained"]:
        out["encoder_pretrained"] = str(resolve_file(out["encoder_pretrained"]))
    return out


def where_published(name: str) -> str:
    """Where the file called ``name`` is published (from the released-weights table), or a generic hint."""

    if Path(name).name == Path(ADM_REFERENCE_URL).name:
        return f"the ADM reference batch, {ADM_REFERENCE_URL}"
    entries = released_by_filename(name)
    exact = [e for e in entries if e.release_path and Path(name).as_posix().endswith(e.release_path)]
    entries = exact or entries
    if not entries:
        return "not a file of the released-weights table (see README 'Released weights')"
    parts = []
    for e in entries:
        where = f"{e.published_at}" + (f" ({e.release_path})" if e.release_path else "")
        parts.append(f"{e.key}: {where}" + (f", sha256 {e.sha256}" if e.sha256 else ""))
    return "; ".join(parts)


def required_files(cfg: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    """(config key, file name, env roots) of every file the run ``cfg`` loads instead of training."""
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for alias in cfg.tokenizers:
        run = cfg.catalog[alias]
        if run.official:
            out.append((f"catalog.{alias}.checkpoint", run.checkpoint, (WEIGHTS_ENV,)))
            encoder = (run.overrides or {}).get("encoder_pretrained")
            if isinstance(encoder, str) and encoder:
                out.append((f"catalog.{alias}.overrides.encoder_pretrained", encoder, (WEIGHTS_ENV,)))
    ar = cfg.ar
    if cfg.suite.generation:
        gpts = [(f"ar.released[{i}].checkpoint", g.checkpoint) for i, g in enumerate(ar.released)
                if g.tokenizer in cfg.tokenizers]
        if ar.official:
            gpts.append(("ar.checkpoint", ar.checkpoint))
        out += [(key, name, (WEIGHTS_ENV,)) for key, name in gpts]
        if gpts and ar.reference:
            out.append(("ar.reference", ar.reference, (WEIGHTS_ENV, DATA_ENV)))
    return out


def missing_weights(cfg: Any) -> list[str]:
    """One line per missing file the run needs: the path looked at, the config keys naming it, where to get it."""
    missing: dict[str, tuple[list[str], str, str]] = {}
    lines = []
    for key, name, envs in required_files(cfg):
        if not name:
            lines.append(f"{key} is empty: name the file")
            continue
        path = resolve_file(name, envs=envs)
        if path.is_file():
            continue
        unset = [e for e in envs if not os.environ.get(e)] if not Path(name).is_absolute() else []
        hint = f" ({' and '.join(unset)} not set)" if unset and len(unset) == len(envs) else ""
        missing.setdefault(str(path), ([], name, hint))[0].append(key)
    for path, (keys, name, hint) in missing.items():
        lines.append(f"{path}{hint}, for {', '.join(keys)}; published at {where_published(name)}")
    return lines


def check_released(cfg: Any) -> None:
    """Every ``ar.released`` entry names a catalog tokenizer, a GPT family and a sampling protocol that exist."""

    families = ("llamagen_gpt", "vfmtok_gpt")
    for i, g in enumerate(cfg.ar.released):
        k = f"ar.released[{i}]"
        if g.tokenizer not in cfg.catalog:
            raise ConfigError(f"{k}.tokenizer must be a catalog key {sorted(cfg.catalog)}, got {g.tokenizer!r}")
        if g.official not in families:
            raise ConfigError(f"{k}.official must be one of {families}, got {g.official!r}")
        if g.protocol not in list_protocols():
            raise ConfigError(f"{k}.protocol must be one of {list_protocols()}, got {g.protocol!r}")
        if any(s <= 0 for s in g.cfg_scales):
            raise ConfigError(f"{k}.cfg_scales must be > 0, got {list(g.cfg_scales)}")
    if cfg.ar.official and cfg.ar.official not in families:
        raise ConfigError(f"ar.official must be one of {families}, got {cfg.ar.official!r}")
    if cfg.ar.protocol and cfg.ar.protocol not in list_protocols():
        raise ConfigError(f"ar.protocol must be one of {list_protocols()}, got {cfg.ar.protocol!r}")


def check_weights(cfg: Any) -> None:
    """Validate the released-GPT entries, then raise :class:`MissingWeightsError` listing every missing file
    (nothing has run yet)."""
    check_released(cfg)
    lines = missing_weights(cfg)
    if lines:
        raise MissingWeightsError(
            f"preset {cfg.preset!r} needs {len(lines)} file(s) that are not there; nothing was run. Put them in the "
            f"folder named by {WEIGHTS_ENV} (the ADM reference batch there or in {DATA_ENV}), as listed in the "
            "README's 'Released weights' table:\n  " + "\n  ".join(lines))
