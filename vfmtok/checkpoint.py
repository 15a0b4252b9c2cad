"""Saving and loading tokenizers: our own format and the official released checkpoints."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vfmtok.fileio import atomic_write, atomic_write_json
from vfmtok.registry import Registry

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

#: official-checkpoint loaders by family: ``fn(path, name=None) -> Tokenizer``
OFFICIAL_LOADERS: Registry[Callable[..., nn.Module]] = Registry("official checkpoint family")


class CheckpointKeyError(KeyError):
    """A state dict does not match the module: lists missing, unexpected and mis-shaped keys."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def code_version() -> dict[str, Any]:
    """Package version and git commit (with a dirty flag) of the code that is running."""
    from vfmtok import __version__

    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", False
    return {"version": __version__, "git_sha": sha or None, "dirty": dirty}


def load_state_dict_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    tolerated_extra: Iterable[str] = (),
    ignore_missing: Callable[[str], bool] | None = None,
    source: str = "state dict",
) -> None:
    """Load ``state`` into ``module``, raising :class:`CheckpointKeyError` that names every problem.

    ``tolerated_extra`` are keys (or fnmatch patterns) that may be present in ``state`` and are dropped;
    ``ignore_missing(key)`` says which of the module's keys may be absent (e.g. a frozen backbone).
    """
    import fnmatch

    tolerated = list(tolerated_extra)
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not any(fnmatch.fnmatch(k, p) for p in tolerated) or k in own}
    missing = [k for k in own if k not in state and not (ignore_missing and ignore_missing(k))]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match {type(module).__name__}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                lines.append(f"  {len(keys)} {title}: {shown}")
        raise CheckpointKeyError("\n".join(lines))
    module.load_state_dict(state, strict=False)


def read_checkpoint(path: str | Path, containers: Iterable[str] = ("ema", "model", "state_dict")) -> dict:
    """Read a ``torch.save`` file and return the first state dict found under ``containers``.

    A file that is itself a flat state dict (tensor values) is returned as is.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # official files hold argparse Namespaces
    except Exception as e:  # noqa: BLE001 - report any unpickling failure with the path
        raise ValueError(f"{path} is not a readable torch checkpoint: {e}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    for key in containers:
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise CheckpointKeyError(f"{path}: no state dict under any of {list(containers)}; top-level keys: {list(ckpt)}")


def save_pretrained(model: nn.Module, directory: str | Path) -> None:
    """Write ``model.safetensors`` (trainable state) and ``config.json`` (name, kwargs, spec, code version)."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p)))
    atomic_write_json(directory / CONFIG_NAME, {
        "format_version": FORMAT_VERSION,
        "name": model.registry_name,
        "kwargs": model.init_kwargs,
        "spec": model.spec.to_dict(),
        "code": code_version(),
    })


def from_pretrained(directory: str | Path, **overrides: Any) -> nn.Module:
    """Rebuild a tokenizer saved by :func:`save_pretrained` and load its weights."""
    from vfmtok.factory import create_tokenizer

    directory = Path(directory)
    cfg_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: expected a directory written by save_pretrained")
    cfg = json.loads(cfg_path.read_text())
    model = create_tokenizer(cfg["name"], **{**cfg["kwargs"], **overrides})
    model.load_trainable_state_dict(load_file(str(weights_path)))
    return model.eval()


def load_official(family: str, path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a released checkpoint of ``family`` (``vqgan``, ``llamagen_vq``, ``vfmtok``, ...) into our modules."""
    from vfmtok.factory import ensure_families_loaded

    ensure_families_loaded()
    return OFFICIAL_LOADERS.get(family)(path, **kwargs)
