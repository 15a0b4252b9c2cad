"""rFID / gFID entry points with a content-addressed cache of reference features.

A reference set's features are cached under a key that hashes the image bytes, the extractor name, its
weights' sha256 and the resize policy — never a user-chosen name (torch-fidelity's cache is keyed by name
alone, so a changed reference set silently reuses stale statistics).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmtok.assets import work_cache_dir
from vfmtok.fileio import atomic_torch_save, atomic_write, sha256_json
from vfmtok.metrics.fidelity import fid_from_features, inception_features, inception_score_from_logits
from vfmtok.metrics.fidelity import precision_recall as _precision_recall
from vfmtok.metrics.inception import EXTRACTOR_NAME, inception_score_unavailable_reason, load_fid_inception
from vfmtok.metrics.inception import weights_sha256 as _weights_sha256

RESIZE_POLICY = "torch-fidelity inception-v3-compat: TF1-compatible bilinear resize to 299x299"


def extractor_identity() -> dict[str, str]:
    """What determines the features besides the pixels (part of every cache key and record)."""
    return {"extractor": EXTRACTOR_NAME, "weights_sha256": _weights_sha256(), "resize": RESIZE_POLICY,
            "backend": "torch-fidelity"}


def images_sha256(images: torch.Tensor) -> str:
    """sha256 of a uint8 batch's shape and bytes."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def reference_features(images: torch.Tensor, *, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """Features of a reference set, read from (or written to) the cache."""
    key = sha256_json({"images": images_sha256(images), **extractor_identity()})
    path = work_cache_dir("inception") / f"{key[:32]}.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["key"] == key:
            return cached["features"]
    features = inception_features(images, batch_size=batch_size, device=device)
    atomic_torch_save(path, {"key": key, "features": features})
    return features


def _fid(samples: torch.Tensor, reference: torch.Tensor, batch_size: int, device: str) -> dict[str, Any]:
    fake = inception_features(samples, batch_size=batch_size, device=device)
    real = reference_features(reference, batch_size=batch_size, device=device)
    return {"value": fid_from_features(fake, real), "n": len(fake), "n_reference": len(real)}


def rfid(recon: torch.Tensor, real: torch.Tensor, *, batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:
    """rFID: reconstructions against the same real images (LlamaGen protocol)."""
    if recon.shape != real.shape:
        raise ValueError(f"rFID pairs reconstructions with their originals: shapes {tuple(recon.shape)} and "
                         f"{tuple(real.shape)} differ")
    return _fid(recon, real, batch_size, device)


def gfid(samples: torch.Tensor, reference: torch.Tensor, *, batch_size: int = 64, device: str = "cpu") -> dict:
    """gFID: generated samples against a reference set."""
    return _fid(samples, reference, batch_size, device)


def precision_recall_for(samples: torch.Tensor, reference: torch.Tensor, *, k: int = 3, batch_size: int = 64,
                         device: str = "cpu") -> dict[str, Any]:
    """Precision, recall (k-NN) and the Inception Score of ``samples`` (value None with a reason offline)."""
    fake = inception_features(samples, batch_size=batch_size, device=device)
    real = reference_features(reference, batch_size=batch_size, device=device)
    precision, recall = _precision_recall(fake, real, k=k)
    return {"precision": precision, "recall": recall, "n": len(fake), "inception_score": inception_score(samples)}


def inception_score(samples: torch.Tensor, *, splits: int = 10, batch_size: int = 64,
                    device: str = "cpu") -> dict[str, Any]:
    """``{"value": mean, "std": std}`` or ``{"value": None, "reason": ...}`` without logits weights."""
    reason = inception_score_unavailable_reason()
    if reason is not None:
        return {"value": None, "reason": reason}
    logits = inception_features(samples, batch_size=batch_size, device=device, feature="logits_unbiased",
                                extractor=load_fid_inception(("logits_unbiased",)))
    mean, std = inception_score_from_logits(logits, splits=min(splits, len(logits)))
    return {"value": mean, "std": std, "n": len(logits)}


def save_npz(path: str | Path, images: torch.Tensor, labels: torch.Tensor | None = None) -> Path:
    """ADM batch format: ``arr_0`` uint8 [N, H, W, 3] (and ``arr_1`` labels), written atomically."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    arrays = {"arr_0": images.permute(0, 2, 3, 1).contiguous().numpy()}
    if labels is not None:
        arrays["arr_1"] = labels.numpy().astype(np.int64)

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
