"""Trained models back into memory: folders written by ``save_pretrained`` and the released checkpoints.

It sits above the tokenizer factory and the GPT, so :func:`from_pretrained` and :func:`load_official` return
typed models; the file formats themselves live below, in :mod:`vfmtok.checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, overload

from safetensors.torch import load_file

import vfmtok.ar.official  # noqa: F401  (registers the released GPT families)
from vfmtok.ar.gpt import GPT
from vfmtok.checkpoint import CONFIG_NAME, OFFICIAL_LOADERS, WEIGHTS_NAME, CheckpointKeyError
from vfmtok.factory import create_tokenizer, ensure_families_loaded, loading_weights
from vfmtok.interface import Tokenizer, TokenizerSpec

GPTFamily = Literal["llamagen_gpt", "vfmtok_gpt"]


def from_pretrained(directory: str | Path, **overrides: Any) -> Tokenizer:
    """Rebuild a tokenizer saved by :meth:`Tokenizer.save_pretrained` and load its weights.

    Without ``overrides`` the rebuilt tokenizer must match the saved spec (name, sizes, parameter counts): a
    folder written by other code that builds another architecture under the same name is refused.
    """
    directory = Path(directory)
    cfg_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: expected a directory written by save_pretrained")
    try:
        cfg = json.loads(cfg_path.read_text())
        name, kwargs = cfg["name"], cfg["kwargs"]
        saved = TokenizerSpec.from_dict(cfg["spec"]) if "spec" in cfg else None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path} is damaged ({type(e).__name__}: {e}); expected the config.json written "
                         "by save_pretrained: save the tokenizer again") from e
    with loading_weights():
        model = create_tokenizer(name, **{**kwargs, **overrides})
    if saved is not None and not overrides and saved != model.spec:
        diff = {k: (v, getattr(model.spec, k)) for k, v in saved.to_dict().items()
                if v != model.spec.to_dict()[k]}
        raise ValueError(f"{cfg_path}: the saved spec differs from the tokenizer {name!r} builds now "
                         f"(field: (saved, now) {diff}); it was saved by other code")
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type without the path
        raise ValueError(f"{weights_path} is damaged or not a safetensors file ({e}); save the tokenizer "
                         "again") from e
    try:
        model.load_trainable_state_dict(state)
    except CheckpointKeyError as e:
        raise CheckpointKeyError(f"{weights_path}: {e}") from e
    return model.eval()


@overload
def load_official(family: GPTFamily, path: str | Path, *, weights: str | None = None, **kwargs: Any) -> GPT: ...


@overload
def load_official(family: str, path: str | Path, *, weights: str | None = None, **kwargs: Any) -> Tokenizer: ...


def load_official(family: str, path: str | Path, *, weights: str | None = None, **kwargs: Any) -> Tokenizer | GPT:
    """Load a released checkpoint of ``family`` into our modules.

    Families: tokenizers ``vqgan``, ``llamagen_vq``, ``vfmtok`` (and any registered by a tokenizer family module);
    GPTs ``llamagen_gpt``, ``vfmtok_gpt`` (size inferred from the weights' shapes). ``weights`` picks ``"model"``
    or ``"ema"``; ``None`` is what the family's own sampling script reads (``model`` for LlamaGen and taming,
    ``ema`` for VFMTok). The returned module records its source in ``loaded_weights``, ``source_path`` and
    ``checkpoint_record``.
    """
    ensure_families_loaded()
    with loading_weights():  # the architecture built here gets the released weights: no "random weights" warning
        return OFFICIAL_LOADERS.get(family)(path, weights=weights, **kwargs)
