"""Released class-conditional GPTs (LlamaGen c2i, VFMTok): size inferred from the weights, each family's container.

``load_official("llamagen_gpt", path)`` and ``load_official("vfmtok_gpt", path)`` land here. The architecture
comes from the state dict's shapes: vocabulary and width from ``tok_embeddings.weight``, classes from the class
table (one null row), depth from the ``layers.{i}`` keys, heads from the size table :data:`AR_MODELS`. The
sequence length is not in the weights (the rotary table is not saved); it comes from ``num_tokens=`` /
``grid=``, a saved ``freqs_cis`` entry, the released file's name (:data:`vfmtok.assets.RELEASED_WEIGHTS`), or
the family (VFMTok: 256 region tokens).

Default weights are those the family's own sampler reads: LlamaGen's ``sample_c2i.py`` reads ``"model"``
(``--from-fsdp``: the whole file); VFMTok's ``test_net.py`` reads ``"ema"`` (else ``module``, ``state_dict``,
or the whole file with ``--from-fsdp``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vfmtok.ar.gpt import AR_MODELS, GPT, TOLERATED_EXTRA, create_gpt
from vfmtok.assets import released_by_filename
from vfmtok.checkpoint import (
    OFFICIAL_LOADERS,
    CheckpointKeyError,
    check_family,
    load_checkpoint_file,
    load_state_dict_strict,
    select_weights,
    tag_loaded,
)

#: per family: the containers its own sampling script reads, in order ("" = the file is the state dict)
GPT_DEFAULT_CONTAINERS: dict[str, tuple[str, ...]] = {
    "llamagen_gpt": ("model", ""),  # sample_c2i.py: checkpoint["model"]; --from-fsdp: the file itself
    "vfmtok_gpt": ("ema", "module", "state_dict", ""),  # test_net.py: ema, module, state_dict; --from-fsdp
}
#: sequence length of a family when nothing else says (VFMTok: always 256 region tokens, 16 x 16 RoPE grid)
FAMILY_NUM_TOKENS: dict[str, int | None] = {"llamagen_gpt": None, "vfmtok_gpt": 256}
#: the released sizes (name -> (dim, n_layer)); test sizes are left out of the inference on purpose
RELEASED_SIZES = ("gpt_b", "gpt_l", "gpt_xl", "gpt_xxl", "gpt_2b", "gpt_3b")


def _clean(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def infer_gpt_size(state: dict[str, torch.Tensor], n_head: int | None = None,
                   source: str = "state dict") -> dict[str, Any]:
    """``create_gpt`` arguments from the shapes: name, vocab_size, num_classes (and n_head when not standard).

    The (width, depth) pair must be one of the released sizes, unless ``n_head`` is given.
    """
    for key in ("tok_embeddings.weight", "cls_embedding.embedding_table.weight"):
        if key not in state:
            raise CheckpointKeyError(f"{source}: no {key!r}; not a LlamaGen-layout GPT state dict "
                                     f"(first keys: {list(state)[:5]})")
    vocab, dim = state["tok_embeddings.weight"].shape
    num_classes = state["cls_embedding.embedding_table.weight"].shape[0] - 1  # + 1 null (unconditional) row
    layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    if not layers:
        raise CheckpointKeyError(f"{source}: no 'layers.{{i}}.' keys; not a GPT state dict")
    n_layer = max(layers) + 1
    sizes = {name: AR_MODELS.get(name) for name in AR_MODELS.list()}
    known = [n for n in RELEASED_SIZES if (sizes[n]["dim"], sizes[n]["n_layer"]) == (dim, n_layer)]
    if not known:
        known = [n for n, s in sizes.items() if (s["dim"], s["n_layer"]) == (dim, n_layer)]
    args: dict[str, Any] = {"vocab_size": int(vocab), "num_classes": int(num_classes)}
    if known and (n_head is None or n_head == sizes[known[0]]["n_head"]):
        return {"name": known[0], **args}
    if n_head is None:
        table = ", ".join(f"{n} (dim {sizes[n]['dim']}, {sizes[n]['n_layer']} layers)" for n in RELEASED_SIZES)
        raise ValueError(f"{source}: a GPT of width {dim} with {n_layer} layers is none of the known sizes "
                         f"[{table}]; pass n_head= to load it anyway")
    base = known[0] if known else "gpt_b"
    return {"name": base, **args, "dim": int(dim), "n_layer": n_layer, "n_head": int(n_head)}


def infer_num_tokens(family: str, path: str | Path, state: dict[str, torch.Tensor]) -> tuple[int | None, str]:
    """(num_tokens, where it came from) from a saved rotary table, the released file name or the family."""
    freqs = state.get("freqs_cis")
    if isinstance(freqs, torch.Tensor) and freqs.dim() >= 2 and freqs.shape[0] > 1:
        return int(freqs.shape[0]) - 1, "the saved freqs_cis table (1 class row + one per token)"
    for entry in released_by_filename(path):
        if entry.family == family and entry.num_tokens:
            return entry.num_tokens, f"the released file {entry.filename} ({entry.key})"
    if FAMILY_NUM_TOKENS.get(family):
        return FAMILY_NUM_TOKENS[family], f"the {family} family (every released model)"
    return None, ""


def _check_release_family(family: str, path: str | Path) -> None:
    released = {e.family for e in released_by_filename(path)}
    others = (released & set(GPT_DEFAULT_CONTAINERS)) - {family}
    if others and family not in released:
        raise CheckpointKeyError(f"{path} is the name of a released {' / '.join(sorted(others))} file, not "
                                 f"{family}: load it with vfmtok.load_official({sorted(others)[0]!r}, path)")


def load_official_gpt(family: str, path: str | Path, *, weights: str | None = None, num_tokens: int | None = None,
                      grid: tuple[int, int] | None = None, n_head: int | None = None, **overrides: Any) -> GPT:
    """Load a released LlamaGen (``llamagen_gpt``) or VFMTok (``vfmtok_gpt``) GPT, its size read from the shapes.

    ``weights`` ``"model"`` / ``"ema"`` / None (the family's sampler's choice, see the module docstring).
    ``num_tokens`` or ``grid`` (h, w) give the sequence length when it cannot be inferred; ``overrides`` go to
    :class:`vfmtok.ar.GPTConfig`. Returns the GPT in eval mode, in float32, with ``loaded_weights``,
    ``source_path`` and ``checkpoint_record`` set.
    """
    if family not in GPT_DEFAULT_CONTAINERS:
        raise KeyError(f"unknown GPT family {family!r}; known: {sorted(GPT_DEFAULT_CONTAINERS)}")
    _check_release_family(family, path)
    ckpt = load_checkpoint_file(path)
    check_family(ckpt, family, path)
    selected = select_weights(path, weights, GPT_DEFAULT_CONTAINERS[family], family=family, ckpt=ckpt)
    state = _clean(selected.state)
    size = infer_gpt_size(state, n_head, source=str(path))
    if grid is not None:
        grid = tuple(int(g) for g in grid)
        if num_tokens is not None and num_tokens != grid[0] * grid[1]:
            raise ValueError(f"num_tokens={num_tokens} disagrees with grid={grid}")
        num_tokens = grid[0] * grid[1]
    if num_tokens is None:
        num_tokens, _ = infer_num_tokens(family, path, state)
    if num_tokens is None:
        raise ValueError(f"{path}: the sequence length of a {family} model is not stored in its weights and the "
                         f"file name is not a released one: pass num_tokens= (256 for 256 px / 16x16 tokens, 576 "
                         f"for 384 px / 24x24) or grid=(h, w)")
    name = size.pop("name")
    with torch.device("meta"):  # no random init of billions of weights: the checkpoint's tensors are assigned
        model = create_gpt(name, num_tokens=num_tokens, grid=grid, **size, **overrides)
    own = model.state_dict()
    state = {k: (v.to(own[k].dtype) if k in own and v.is_floating_point() else v) for k, v in state.items()}
    load_state_dict_strict(model, state, tolerated_extra=TOLERATED_EXTRA, source=str(path), assign=True)
    meta = [k for k, v in model.state_dict().items() if v.is_meta]
    if meta:  # cannot happen after a strict load; a guard against silently uninitialised weights
        raise CheckpointKeyError(f"{path}: weights left uninitialised: {meta[:5]}")
    model.registry_name = name
    return tag_loaded(model.eval(), selected, family)


def load_llamagen_gpt(path: str | Path, *, weights: str | None = None, **kwargs: Any) -> GPT:
    """A released LlamaGen c2i GPT (``c2i_B_256.pt`` ... ``c2i_3B_384.pt``); default weights ``model``."""
    return load_official_gpt("llamagen_gpt", path, weights=weights, **kwargs)


def load_vfmtok_gpt(path: str | Path, *, weights: str | None = None, **kwargs: Any) -> GPT:
    """A released VFMTok GPT (``GPT-B-300e.pt`` ... ``GPT-3B-200e.pt``); default weights ``ema``."""
    return load_official_gpt("vfmtok_gpt", path, weights=weights, **kwargs)


if "llamagen_gpt" not in OFFICIAL_LOADERS:
    OFFICIAL_LOADERS.register("llamagen_gpt", load_llamagen_gpt)
    OFFICIAL_LOADERS.register("vfmtok_gpt", load_vfmtok_gpt)
