"""rFID / gFID / KID / IS / precision-recall entry points, a content-addressed reference-statistics cache, npz export.

Reference statistics (mu, sigma and the pool3 features, kept for precision/recall and KID) are cached under a
key that hashes the image pixels, the extractor name, its weights' sha256, the resize policy and the feature
layer -- never a user-chosen name (torch-fidelity's cache is keyed by name alone, so a changed reference set
silently reuses stale statistics). Any change of those inputs gives a new key. Entries live in the verified store
(:mod:`vfmtok.store`, kind ``fid_reference`` under the work cache): a damaged entry is moved aside and recomputed.

Protocols: **rFID** compares reconstructions with the very images that were reconstructed (LlamaGen protocol;
the counts must match); **gFID** compares generated samples with a reference set. Every result carries the
number of samples (``n``, ``n_reference``) and the FID backend's identity (extractor, weights sha256, resize).
Samples and references export to the ADM batch format (npz ``arr_0`` uint8 NHWC, optional ``arr_1`` labels).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmtok import store
from vfmtok.assets import MissingAssetError, work_cache_dir
from vfmtok.fid_inception import LOGITS, POOL3, inception_score_unavailable_reason
from vfmtok.fileio import atomic_torch_save, atomic_write, sha256_json
from vfmtok.metrics.fidelity import (
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    GaussianStats,
    extract_image_features,
    frechet_distance,
    inception_score_from_logits,
    kid_from_features,
    kid_subset_size,
    precision_recall,
)
from vfmtok.metrics.inception import FeatureExtractor, fid_extractor
from vfmtok.metrics.result import MetricResult, Results
from vfmtok.metrics.sources import ContentHasher, ImageSource, content_hash, is_replayable, iter_batches

CACHE_VERSION = 2  # 2: entries of the verified store
KIND = "fid_reference"
_recent: dict[str, dict[str, torch.Tensor]] = {}  # in-process memo of sample features (content key -> features)


@dataclass(frozen=True)
class ReferenceStats:
    """Pool3 statistics and features of a reference set, with the key they are cached under."""

    mu: np.ndarray  # float64 [D]
    sigma: np.ndarray  # float64 [D, D]
    features: torch.Tensor  # float32 [N, D]
    n: int
    key: str
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def gaussian(self) -> GaussianStats:
        """The (mu, sigma, n) triple FID needs."""
        return GaussianStats(self.mu, self.sigma, self.n)


def reference_key(images_sha256: str, extractor: FeatureExtractor) -> str:
    """Cache key: pixels + extractor identity (name, weights sha256, resize policy) + feature layer."""
    return sha256_json({"images": images_sha256, **extractor.identity, "feature": POOL3, "version": CACHE_VERSION})


def _store() -> store.Store:
    return store.Store(work_cache_dir(KIND).parent)


def _load_cached(key: str) -> ReferenceStats | None:
    folder = _store().get(KIND, CACHE_VERSION, {"reference_key": key}, label="FID reference statistics")
    if folder is None:
        return None
    d = torch.load(folder / "stats.pt", map_location="cpu", weights_only=True)
    if not isinstance(d, dict) or d.get("key") != key:
        return None
    return ReferenceStats(d["mu"].numpy(), d["sigma"].numpy(), d["features"], int(d["n"]), key, d["identity"])


def reference_statistics(source: ImageSource, *, batch_size: int = 64, device: str | torch.device = "cpu",
                         extractor: FeatureExtractor | None = None, cache: bool = True) -> ReferenceStats:
    """Pool3 statistics of a reference set, read from or written to the content-addressed cache.

    In-memory sources (tensors, arrays, npz, array datasets) are hashed first, so a cache hit costs no Inception
    pass; other sources are hashed during the feature pass.
    """
    extractor = extractor or fid_extractor(device=device)
    if POOL3 not in extractor.features:
        raise ValueError(f"reference statistics need the {POOL3!r} feature; the extractor gives {extractor.features}")
    if cache and is_replayable(source):
        key = reference_key(content_hash(source)[0], extractor)
        hit = _load_cached(key)
        if hit is not None:
            return hit
    hasher = ContentHasher()
    features = extract_image_features(source, extractor, batch_size=batch_size, hasher=hasher)[POOL3]
    return reference_from_features(features, hasher.hexdigest(), extractor, cache=cache)


def reference_from_features(features: torch.Tensor, images_sha256: str, extractor: FeatureExtractor, *,
                            cache: bool = True) -> ReferenceStats:
    """Statistics of already extracted pool3 features of the images hashing to ``images_sha256`` (cached)."""
    key = reference_key(images_sha256, extractor)
    stats = GaussianStats.of(features)
    out = ReferenceStats(stats.mu, stats.sigma, features, stats.n, key, dict(extractor.identity))
    if cache:
        payload = {"key": key, "identity": out.identity, "n": out.n, "features": features,
                   "mu": torch.from_numpy(stats.mu), "sigma": torch.from_numpy(stats.sigma)}
        _store().put(KIND, CACHE_VERSION, {"reference_key": key}, lambda f: atomic_torch_save(f / "stats.pt", payload),
                     label="FID reference statistics")
    return out


def sample_features(source: ImageSource, extractor: FeatureExtractor, *,
                    batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Features of generated samples; in-memory sources are memoised per process (two entries) by content."""
    if not is_replayable(source):
        return extract_image_features(source, extractor, batch_size=batch_size)
    key = sha256_json({"images": content_hash(source)[0], **extractor.identity, "features": extractor.features})
    if key not in _recent:
        while len(_recent) >= 2:
            _recent.pop(next(iter(_recent)))
        _recent[key] = extract_image_features(source, extractor, batch_size=batch_size)
    return _recent[key]


def fid_info(extractor: FeatureExtractor) -> dict[str, Any]:
    """What a results record stores about the FID backend."""
    return dict(extractor.identity)


def _pool3(samples: ImageSource, reference: ImageSource | ReferenceStats, batch_size: int,
           device: str | torch.device, extractor: FeatureExtractor | None
           ) -> tuple[FeatureExtractor, ReferenceStats, torch.Tensor]:
    """(extractor, reference statistics, pool3 features of the samples)."""
    extractor = extractor or fid_extractor(device=device)
    ref = reference if isinstance(reference, ReferenceStats) else \
        reference_statistics(reference, batch_size=batch_size, extractor=extractor)
    return extractor, ref, sample_features(samples, extractor, batch_size=batch_size)[POOL3]


def _fid(metric: str, samples: ImageSource, reference: ImageSource | ReferenceStats, batch_size: int,
         device: str | torch.device, extractor: FeatureExtractor | None) -> dict[str, Any]:
    extractor, ref, fake = _pool3(samples, reference, batch_size, device, extractor)
    value = frechet_distance(GaussianStats.of(fake), ref.gaussian)
    return {"metric": metric, "value": value, "n": len(fake), "n_reference": ref.n, **fid_info(extractor)}


def rfid(recon: ImageSource, real: ImageSource | ReferenceStats, *, batch_size: int = 64,
         device: str | torch.device = "cpu", extractor: FeatureExtractor | None = None) -> dict[str, Any]:
    """rFID: reconstructions against the same real images (LlamaGen protocol); the counts must match."""
    out = _fid("rfid", recon, real, batch_size, device, extractor)
    if out["n"] != out["n_reference"]:
        raise ValueError(f"rFID pairs every reconstruction with its original: got {out['n']} reconstructions and "
                         f"{out['n_reference']} real images")
    return {**out, "protocol": "reconstructions vs the same real images"}


def gfid(samples: ImageSource, reference: ImageSource | ReferenceStats, *, batch_size: int = 64,
         device: str | torch.device = "cpu", extractor: FeatureExtractor | None = None) -> dict[str, Any]:
    """gFID: generated samples against a reference set."""
    return _fid("gfid", samples, reference, batch_size, device, extractor)


def kid(samples: ImageSource, reference: ImageSource | ReferenceStats, *, subsets: int = KID_SUBSETS,
        subset_size: int = KID_SUBSET_SIZE, batch_size: int = 64, device: str | torch.device = "cpu",
        extractor: FeatureExtractor | None = None) -> dict[str, Any]:
    """KID (mean, std over subsets) of samples against a reference set."""
    extractor, ref, fake = _pool3(samples, reference, batch_size, device, extractor)
    mean, std = kid_from_features(fake, ref.features, subsets=subsets, subset_size=subset_size)
    return {"metric": "kid", "value": mean, "std": std, "n": len(fake), "n_reference": ref.n, "subsets": subsets,
            "subset_size": kid_subset_size(len(fake), ref.n, subset_size), **fid_info(extractor)}


def inception_score(samples: ImageSource, *, splits: int = 10, batch_size: int = 64, device: str | torch.device = "cpu",
                    weights_path: str | Path | None = None) -> dict[str, Any]:
    """``{"value": mean, "std": std, "n": N}``, or ``{"value": None, "reason": ...}`` without logits weights."""
    reason = inception_score_unavailable_reason(weights_path)
    if reason is not None:
        return {"metric": "inception_score", "value": None, "reason": reason}
    try:
        extractor = fid_extractor((POOL3, LOGITS), weights_path=weights_path, device=device)
    except MissingAssetError as e:
        return {"metric": "inception_score", "value": None, "reason": str(e)}
    logits = sample_features(samples, extractor, batch_size=batch_size)[LOGITS]
    mean, std = inception_score_from_logits(logits, splits=splits)
    return {"metric": "inception_score", "value": mean, "std": std, "n": len(logits), "splits": splits,
            **fid_info(extractor)}


# --------------------------------------------------------------------------------------------- typed results
def distance_results(fid_metric: str, fake: torch.Tensor, reference: ReferenceStats) -> Results:
    """FID (reported as ``fid_metric``, e.g. ``rfid`` or ``gfid``) and KID of pool3 features ``fake`` against a
    reference set.

    KID is torch-fidelity's (:func:`~vfmtok.metrics.fidelity.kid_from_features`: polynomial kernel, unbiased MMD^2,
    mean over 100 seeded subsets of 1000); with fewer images per set the subset size is the smaller set's size,
    and the result's setting says which size was used.
    """
    n = len(fake)
    size = kid_subset_size(n, reference.n)
    kid_mean, _ = kid_from_features(fake, reference.features, subset_size=size)
    return {fid_metric: MetricResult(frechet_distance(GaussianStats.of(fake), reference.gaussian), n),
            "kid": MetricResult(kid_mean, n, setting={"subsets": KID_SUBSETS, "subset_size": size})}


def unavailable_distances(fid_metric: str, reason: str, n: int | None = None) -> Results:
    """The results of :func:`distance_results`, each unavailable for ``reason``."""
    return {key: MetricResult.unavailable(reason, n) for key in (fid_metric, "kid")}


def sample_results(samples: ImageSource, reference: ImageSource | ReferenceStats, *, k: int = 3,
                   batch_size: int = 64, device: str | torch.device = "cpu",
                   extractor: FeatureExtractor | None = None, isc: bool = True) -> Results:
    """gFID, KID and precision / recall (pool3, k-NN radii) of generated samples against a reference set, from one
    feature pass; with ``isc`` also their Inception Score (unavailable, with the reason, without logits weights)."""
    extractor, ref, fake = _pool3(samples, reference, batch_size, device, extractor)
    n = len(fake)
    precision, recall = precision_recall(fake, ref.features, k=k)
    out = {**distance_results("gfid", fake, ref), "precision": MetricResult(precision, n),
           "recall": MetricResult(recall, n)}
    if isc:
        score = inception_score(samples, batch_size=batch_size, device=device)
        out["inception_score"] = MetricResult(score["value"], n, score.get("reason"))
    return out


# --------------------------------------------------------------------------------------------- ADM npz
def _entry(name: str) -> zipfile.ZipInfo:
    """A stored zip member with a fixed timestamp, so equal arrays always give a byte-identical npz."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    return info


class NpzWriter:
    """Stream uint8 [B, 3, H, W] batches into an ADM batch file (``arr_0`` uint8 NHWC, optional ``arr_1`` int64
    labels) with bounded memory; the file appears atomically on :meth:`close` (nothing is left on error)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, raw = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".raw", dir=self.path.parent)
        self._raw, self._file = Path(raw), os.fdopen(fd, "wb")
        self.n, self.image_shape, self._labels = 0, None, []  # type: ignore[var-annotated]

    def add(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Append a batch (all images of one file share one size)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        shape = tuple(images.shape[2:])
        if self.image_shape is not None and shape != self.image_shape:
            raise ValueError(f"{self.path}: images of size {shape} after {self.image_shape}; one npz holds one size")
        if self.n and (labels is not None) != bool(self._labels):
            raise ValueError(f"{self.path}: give labels for every batch or for none")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{self.path}: {len(images)} images but {len(labels)} labels")
        self.image_shape = shape
        self._file.write(images.permute(0, 2, 3, 1).contiguous().cpu().numpy().tobytes())
        if labels is not None:
            self._labels.append(torch.as_tensor(labels).long().cpu().numpy())
        self.n += len(images)

    def close(self) -> Path:
        """Write the npz (atomically) and remove the temporary data."""
        self._file.close()
        try:
            if self.n == 0:
                raise ValueError(f"{self.path}: no images were added")
            h, w = self.image_shape  # type: ignore[misc]
            labels = np.concatenate(self._labels) if self._labels else None

            def write(tmp: Path) -> None:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    with zf.open(_entry("arr_0.npy"), "w", force_zip64=True) as out, open(self._raw, "rb") as src:
                        header = {"descr": "|u1", "fortran_order": False, "shape": (self.n, h, w, 3)}
                        np.lib.format.write_array_header_2_0(out, header)
                        while block := src.read(1 << 24):
                            out.write(block)
                    if labels is not None:
                        with zf.open(_entry("arr_1.npy"), "w", force_zip64=True) as out:
                            np.lib.format.write_array(out, labels, allow_pickle=False)

            return atomic_write(self.path, write)
        finally:
            self._raw.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop everything written so far."""
        self._file.close()
        self._raw.unlink(missing_ok=True)

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_npz(path: str | Path, images: ImageSource, labels: torch.Tensor | np.ndarray | None = None) -> Path:
    """Export any image source (samples, references, reconstructions) to an ADM npz, atomically."""
    with NpzWriter(path) as writer:
        start = 0
        for batch in iter_batches(images, 256):
            writer.add(batch, None if labels is None else torch.as_tensor(labels[start:start + len(batch)]))
            start += len(batch)
    return Path(path)
