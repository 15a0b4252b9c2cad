"""Find the tokenizer and the GPT a command names, and say exactly which weights they hold.

A tokenizer is given in one of three forms:

* ``--official FAMILY --checkpoint FILE`` (with an optional registry name, e.g. ``llamagen_vq_f16_k16384``): a
  released checkpoint through :func:`vfmtok.load_official`;
* a folder written by ``save_pretrained`` (``model.safetensors`` + ``config.json``);
* a registry name alone: random weights, accepted for the ``test_*`` tokenizers (or with ``random_ok=True``,
  for timing runs) -- never silently for a paper-size model.

A GPT is either a released one (``load_official("llamagen_gpt" | "vfmtok_gpt", FILE)``) or one trained here: the
``gpt.pt`` the AR trainer exports (``model`` / ``ema`` weights and ``gpt_config``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfmtok import create_tokenizer, from_pretrained, load_official
from vfmtok.ar import GPT, GPTConfig, load_gpt_checkpoint
from vfmtok.assets import file_sha256
from vfmtok.fileio import sha256_state_dict
from vfmtok.interface import Tokenizer


def resolve_tokenizer(spec: str | None, official: str | None = None, checkpoint: str | None = None, *,
                      random_ok: bool = False, **overrides: Any) -> Tokenizer:
    """The tokenizer named by ``spec`` / ``official`` / ``checkpoint`` (module docstring), in eval mode.

    Its ``provenance`` attribute holds ``{"form", "name", "weights_sha256", "path", ...}`` for result records.
    """

    if (official is None) != (checkpoint is None):
        raise ValueError("--official FAMILY and --checkpoint FILE go together (a released tokenizer needs both)")
    if official is not None:
        path = Path(checkpoint)  # type: ignore[arg-type]
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer checkpoint not found: {path}")
        kwargs = {**overrides, **({"name": spec} if spec else {})}
        model = load_official(official, path, **kwargs)
        prov = {"form": "official", "family": official, "path": str(path), "weights_sha256": file_sha256(path),
                **getattr(model, "checkpoint_record", {})}
    elif spec is None:
        raise ValueError("name a tokenizer: a registry name, a save_pretrained folder, or --official/--checkpoint")
    elif Path(spec).is_dir():
        model = from_pretrained(spec, **overrides)
        prov = {"form": "save_pretrained", "path": str(spec),
                "weights_sha256": file_sha256(Path(spec) / "model.safetensors")}
    elif Path(spec).exists():
        raise ValueError(f"{spec} is a file: give a released checkpoint with --official FAMILY --checkpoint {spec}, "
                         "or a save_pretrained folder")
    else:
        if not (spec.startswith("test_") or random_ok):
            raise ValueError(f"{spec!r} alone has random weights: pass --official FAMILY --checkpoint FILE or a "
                             "save_pretrained folder (random weights are accepted for test_* tokenizers only)")
        torch.manual_seed(0)  # the same random weights on every rank and every run
        model = create_tokenizer(spec, pretrained=False, **overrides)
        prov = {"form": "random", "seed": 0}
    model.eval()
    prov.setdefault("weights_sha256", sha256_state_dict(model.state_dict()))
    prov["name"] = getattr(model, "registry_name", spec)
    prov["spec"] = model.spec.to_dict()
    model.provenance = prov
    return model


def resolve_gpt(path: str | None = None, official: str | None = None, checkpoint: str | None = None, *,
                weights: str | None = None, num_tokens: int | None = None) -> nn.Module:
    """A GPT trained here (``path``: the AR trainer's ``gpt.pt``) or released (``official`` + ``checkpoint``).

    ``weights``: ``"ema"`` / ``"model"`` / None (the family's default; for ``gpt.pt``: ``ema`` when present).
    Returns the GPT in eval mode with a ``provenance`` attribute.
    """

    if (official is None) != (checkpoint is None):
        raise ValueError("--gpt-official FAMILY and --gpt-checkpoint FILE go together")
    if (official is None) == (path is None):
        raise ValueError("name one GPT: --gpt FILE (trained here) or --gpt-official FAMILY --gpt-checkpoint FILE")
    if official is not None:
        file = Path(checkpoint)  # type: ignore[arg-type]
        if not file.is_file():
            raise FileNotFoundError(f"GPT checkpoint not found: {file}")
        model = load_official(official, file, weights=weights,
                              **({"num_tokens": num_tokens} if num_tokens is not None else {}))
        prov = {"form": "official", "family": official, **getattr(model, "checkpoint_record", {})}
    else:
        file = Path(path)  # type: ignore[arg-type]
        if not file.is_file():
            raise FileNotFoundError(f"GPT file not found: {file} (expected the gpt.pt an AR training run exports)")
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("gpt_config"), dict):
            keys = list(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
            raise KeyError(f"{file}: no 'gpt_config' (found {keys}); a released GPT loads with --gpt-official "
                           "llamagen_gpt|vfmtok_gpt --gpt-checkpoint FILE")
        fields = {f.name for f in dataclasses.fields(GPTConfig)}
        cfg = {k: v for k, v in ckpt["gpt_config"].items() if k in fields}
        if cfg.get("grid") is not None:
            cfg["grid"] = tuple(cfg["grid"])
        model = GPT(GPTConfig(**cfg))
        containers = ("ema", "model") if weights in (None, "ema") else ("model",)
        if weights == "ema" and "ema" not in ckpt:
            raise KeyError(f"{file}: no 'ema' weights (it holds {sorted(ckpt)})")
        load_gpt_checkpoint(model, file, containers=containers)
        model.registry_name = ckpt.get("registry_name")
        prov = {"form": "trained", "weights": containers[0] if containers[0] in ckpt else "model",
                "step": ckpt.get("step")}
        del ckpt
    prov.update({"path": str(file), "weights_sha256": file_sha256(file),
                 "config": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in dataclasses.asdict(model.config).items()}})
    model.eval()
    model.provenance = prov
    return model
