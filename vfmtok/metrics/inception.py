"""The FID Inception-v3 offline: the TF-2015 graph's weights loaded into torch-fidelity's extractor.

The network and its two weight sources are :mod:`vfmtok.fid_inception`'s.

Preprocessing is torch-fidelity's: uint8 in, TF1-compatible bilinear resize to 299 x 299 (so images smaller
or larger than 299 px are resized by the extractor itself), then (x - 128) / 128.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from vfmtok.fid_inception import EXTRACTOR_NAME, POOL3, fid_weights
from vfmtok.fileio import sha256_json

RESIZE_POLICY = "torch-fidelity inception-v3-compat: TF1-compatible bilinear resize to 299x299, (x-128)/128"

_extractors: dict[tuple[Any, ...], FeatureExtractor] = {}


class FeatureExtractor:
    """A frozen uint8-in feature network with the identity that every cache key and record carries.

    Args:
        module: maps uint8 [B, 3, H, W] to a tuple of float [B, D_i] tensors, one per name in ``features``
            (torch-fidelity's extractor interface).
        features: output names, e.g. ``("2048",)`` or ``("2048", "logits_unbiased")``.
        identity: what determines the features besides the pixels: ``extractor``, ``weights_sha256``,
            ``resize``, ... (JSON-serialisable).
        channels_last: run the module and its input in the channels-last memory format (convolution networks:
            faster on CPU and GPU; features within float32 rounding of the contiguous run).
    """

    def __init__(self, module: torch.nn.Module, features: Sequence[str], identity: dict[str, Any],
                 channels_last: bool = False) -> None:
        self.module, self.features, self.identity = module.eval().requires_grad_(False), tuple(features), identity
        self.channels_last = channels_last
        if channels_last:
            self.module.to(memory_format=torch.channels_last)

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
        x = images.to(self.device())
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with exact_math():
            out = self.module(x)
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
    path, identity = fid_weights(features, weights_path)
    identity = {**identity, "resize": RESIZE_POLICY, "backend": "torch-fidelity extractor", "layout": "channels_last"}
    key = (str(path), identity["weights_sha256"], features, str(torch.device(device)))
    if key not in _extractors:
        module = FeatureExtractorInceptionV3(EXTRACTOR_NAME, list(features), feature_extractor_weights_path=str(path))
        _extractors[key] = FeatureExtractor(module.to(device), features, identity, channels_last=True)
    return _extractors[key]


def weights_sha256() -> str:
    """sha256 recorded for the FID weights in use (full torch-fidelity file, else the TorchScript source)."""
    return fid_extractor().identity["weights_sha256"]
