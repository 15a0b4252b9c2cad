"""Saving and loading tokenizers: our own format and the official released checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from vfmtok.fileio import atomic_write, atomic_write_json
from vfmtok.registry import Registry
from vfmtok.version import code_version

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

#: official-checkpoint loaders by family: ``fn(path, *, weights=None, **kwargs) -> nn.Module``
OFFICIAL_LOADERS: Registry[Callable[..., nn.Module]] = Registry("official checkpoint family")

#: the two sets of weights a released training file can hold: the trained weights and their EMA
WEIGHTS_CHOICES = ("model", "ema")
#: containers that hold the trained (non-EMA) weights; ``""`` stands for a file that is itself the state dict
MODEL_CONTAINERS = ("model", "module", "state_dict", "")


class CheckpointKeyError(KeyError):
    """A state dict does not match the module: lists missing, unexpected and mis-shaped keys."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def load_state_dict_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    tolerated_extra: Iterable[str] = (),
    ignore_missing: Callable[[str], bool] | None = None,
    source: str = "state dict",
    assign: bool = False,
) -> None:
    """Load ``state`` into ``module``, raising :class:`CheckpointKeyError` that names every problem.

    ``tolerated_extra`` are keys (or fnmatch patterns) that may be present in ``state`` and are dropped;
    ``ignore_missing(key)`` says which of the module's keys may be absent (e.g. a frozen backbone).
    ``assign`` makes the module's tensors the given ones (for a module built on the meta device).
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
    module.load_state_dict(state, strict=False, assign=assign)


def load_checkpoint_file(path: str | Path) -> dict:
    """``torch.load`` a checkpoint file onto the CPU; a clear error when it is absent or not a dict checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # official files hold argparse Namespaces
    except Exception as e:  # noqa: BLE001 - report any unpickling failure with the path
        raise ValueError(f"{path} is not a readable torch checkpoint: {e}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_checkpoint(path: str | Path, containers: Iterable[str] = ("ema", "model", "state_dict")) -> dict:
    """Read a ``torch.save`` file and return the first state dict found under ``containers``.

    A file that is itself a flat state dict (tensor values) is returned as is.
    """
    ckpt = load_checkpoint_file(path)
    for key in containers:
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if _is_state_dict(ckpt):
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


# ----------------------------------------------------------------------------- released checkpoints
@dataclass
class SelectedWeights:
    """The state dict chosen from a checkpoint file and where it came from.

    ``weights`` is ``"ema"`` or ``"model"`` (the trained, non-EMA weights, or a container that does not say);
    ``container`` is the file's top-level key it was read from, ``""`` when the file is itself the state dict.
    ``extra`` holds the file's other top-level entries (``args``, ``steps``, ...).
    """

    state: dict[str, torch.Tensor]
    weights: str
    container: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, family: str) -> dict[str, str]:
        """The facts a result record keeps about these weights."""
        return {"family": family, "path": str(self.path), "weights": self.weights,
                "container": self.container or "(whole file)"}


def _describe_keys(ckpt: dict) -> str:
    if _is_state_dict(ckpt):
        return f"the file is a flat state dict of {len(ckpt)} tensors (first: {list(ckpt)[:3]})"
    return f"its top-level keys are {list(ckpt)}"


def select_weights(path: str | Path, weights: str | None, default: Sequence[str], *, family: str,
                   ckpt: dict | None = None) -> SelectedWeights:
    """Choose the state dict of a released training file.

    ``weights=None`` takes the first of ``default`` present in the file: the containers the family's own
    sampling or evaluation script reads, in its order (``""`` = the file is itself the state dict).
    ``"ema"`` takes the ``ema`` container; ``"model"`` the trained weights (``model``, ``module``, ``state_dict``,
    or a flat file). A file lacking the requested weights raises :class:`CheckpointKeyError` naming the file
    and the keys it has.
    """
    path = Path(path)
    if weights is not None and weights not in WEIGHTS_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHTS_CHOICES} or None (the {family} default), got {weights!r}")
    ckpt = load_checkpoint_file(path) if ckpt is None else ckpt
    order = tuple(default) if weights is None else ("ema",) if weights == "ema" else MODEL_CONTAINERS
    for key in order:
        if key == "" and _is_state_dict(ckpt):
            return SelectedWeights(ckpt, "model", "", path)
        if key and isinstance(ckpt.get(key), dict):
            extra = {k: v for k, v in ckpt.items() if not isinstance(v, dict) or not _is_state_dict(v)}
            return SelectedWeights(ckpt[key], "ema" if key == "ema" else "model", key, path, extra)
    wanted = " / ".join(repr(k) if k else "a flat state dict" for k in order)
    if weights is None:
        other = [w for w in WEIGHTS_CHOICES
                 if any((k == "" and _is_state_dict(ckpt)) or (k and isinstance(ckpt.get(k), dict))
                        for k in (("ema",) if w == "ema" else MODEL_CONTAINERS))]
        hint = (f"; pass weights={other[0]!r} to load the weights it does hold" if other else "")
        raise CheckpointKeyError(f"{path}: no state dict where the {family} family's own script reads it "
                                 f"({wanted}); {_describe_keys(ckpt)}{hint}")
    raise CheckpointKeyError(f"{path}: no {weights!r} weights (looked for {wanted}); {_describe_keys(ckpt)}")


#: key patterns that identify each family's state dict (checked in this order)
_FAMILY_SIGNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("llamagen_gpt or vfmtok_gpt", ("tok_embeddings.weight", "layers.0.attention.wqkv.weight")),
    ("vfmtok", ("encode_transformer.", "slot_quantize.")),
    ("llamagen_vq", ("encoder.conv_blocks.", "quantize.embedding.weight")),
    ("vqgan", ("encoder.down.", "quantize.embedding.weight")),
)


def guess_family(state_or_ckpt: dict) -> str | None:
    """The official family a state dict (or a whole checkpoint, any container) looks like, or None."""
    candidates = [state_or_ckpt] + [v for v in state_or_ckpt.values() if isinstance(v, dict)]
    for family, signs in _FAMILY_SIGNS:
        for state in candidates:
            keys = [k.removeprefix("module.").removeprefix("_orig_mod.") for k in state if isinstance(k, str)]
            if all(any(k == s or (s.endswith(".") and k.startswith(s)) for k in keys) for s in signs):
                return family
    return None


def check_family(state_or_ckpt: dict, family: str, path: str | Path) -> None:
    """Raise :class:`CheckpointKeyError` when the file clearly belongs to another official family."""
    guess = guess_family(state_or_ckpt)
    if guess is not None and family not in guess.split(" or "):
        loader = guess.split(" or ")[0]
        raise CheckpointKeyError(f"{path} looks like a {guess} checkpoint, not {family}: load it with "
                                 f"vfmtok.load_official({loader!r}, path)")


def tag_loaded(model: nn.Module, selected: SelectedWeights, family: str) -> nn.Module:
    """Record on ``model`` which weights of which file it holds (``loaded_weights``, ``source_path``, ...)."""
    model.loaded_weights = selected.weights
    model.loaded_container = selected.container
    model.source_path = str(selected.path)
    model.official_family = family
    model.checkpoint_record = selected.record(family)
    return model
