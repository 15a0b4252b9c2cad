"""gFID, sFID, precision/recall and Inception Score the way the ADM evaluator (guided-diffusion) reports them.

The published ImageNet-256 generation numbers (LlamaGen, VFMTok) come from ADM's evaluator run on a 50,000-sample
npz against the reference batch ``VIRTUAL_imagenet256_labeled.npz``. That file holds ``arr_0`` (10,000 uint8 NHWC
reference images), ``mu``/``sigma`` (pool3 statistics over the whole ImageNet train split) and ``mu_s``/``sigma_s``
(the same for the spatial sFID features). This module reproduces the evaluator's choices with the project's metric
code (:mod:`vfmtok.metrics`):

* **FID** against the *stored* ``mu``/``sigma`` when the reference has them (never against the 10k images, which
  gives a different, larger number), else against the reference images' own statistics. mu and sigma are taken in
  float64; Tr sqrt(S1 S2) by eigenvalues (ADM uses ``scipy.linalg.sqrtm``; the two agree to ~1e-6 absolute).
* **sFID**: the post-ReLU output of the first 1x1 convolution of the TF graph's ``mixed_6`` block
  (``mixed_6/conv:0``, torch-fidelity's ``Mixed_6d.branch1x1``, [B, 192, 17, 17]), first 7 channels, flattened in
  H, W, C order (2023 dims), against the stored ``mu_s``/``sigma_s``. Only when the reference carries them.
* **Precision / recall** (k = 3) of the samples against the pool3 features of the reference's ``arr_0``, with
  exact float64 distances (ADM computes squared distances in float16, which flips a few borderline points: expect
  differences of order 1e-3).
* **Inception Score**: logits without bias over 1008 classes, consecutive chunks of 5,000 samples in file order
  (no shuffling; a last partial chunk is kept), the mean over chunks (ADM reports no std). Softmax in float64 here,
  float32 in ADM (~1e-3 relative). Needs torch-fidelity's full Inception weights; without them the value is None
  and the reason says why.
* **Pixels and resize**: uint8 images go to torch-fidelity's ``inception-v3-compat`` extractor, whose
  TF1-compatible bilinear resize to 299 x 299 (no antialias) and (x - 128) / 128 are the operations ADM's graph
  applies after its ``ExpandDims`` input. 256 px samples are therefore fed exactly as ADM feeds them.

Samples are streamed in batches (an npz ``arr_0`` is memory-mapped, never loaded whole).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmtok.assets import MissingAssetError, file_sha256
from vfmtok.fid_inception import LOGITS, POOL3, inception_score_unavailable_reason
from vfmtok.metrics.fidelity import (
    GaussianStats,
    extract_image_features,
    frechet_distance,
    inception_score_from_logits,
    precision_recall,
)
from vfmtok.metrics.inception import FeatureExtractor, fid_extractor
from vfmtok.metrics.reference import reference_statistics
from vfmtok.metrics.result import MetricResult
from vfmtok.metrics.sources import (
    ContentHasher,
    ImageSource,
    NpzStream,
    describe,
    iter_batches,
    load_npz_images,
    open_npz_member,
)

POOL3_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
IS_CHUNK = 5000
PR_K = 3
PROTOCOL = ("ADM evaluator (guided-diffusion evaluations/evaluator.py): FID vs the reference's stored mu/sigma "
            "when present, P/R (k=3) vs its arr_0 images, IS over consecutive chunks of 5000")


@dataclass(frozen=True)
class AdmReference:
    """A validated ADM reference batch: images (lazily read) and the statistics stored beside them."""

    path: Path
    images: np.ndarray | NpzStream | None  # arr_0, uint8 [N, H, W, 3]
    stats: GaussianStats | None  # stored mu [2048], sigma [2048, 2048] (float64 here)
    spatial: GaussianStats | None  # stored mu_s [2023], sigma_s [2023, 2023]
    stored_dtypes: dict[str, str]
    sha256: str

    @property
    def n_images(self) -> int | None:
        """Number of reference images (``arr_0``), None without images."""
        return None if self.images is None else int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the reference images."""
        return None if self.images is None else (int(self.images.shape[1]), int(self.images.shape[2]))


def _stats(path: Path, files: set[str], mu_key: str, sigma_key: str, dim: int | None) -> GaussianStats | None:
    if mu_key not in files and sigma_key not in files:
        return None
    missing = [k for k in (mu_key, sigma_key) if k not in files]
    if missing:
        raise ValueError(f"{path}: has {sorted({mu_key, sigma_key} - set(missing))} but not {missing}; an ADM "
                         f"reference batch stores both {mu_key!r} and {sigma_key!r}")
    mu, sigma = (np.asarray(open_npz_member(path, k)) for k in (mu_key, sigma_key))
    for key, value in ((mu_key, mu), (sigma_key, sigma)):
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{path}: {key!r} must be a float array, got dtype {value.dtype}")
    if mu.ndim != 1 or (dim is not None and mu.shape[0] != dim):
        what = "pool3 features of the FID Inception" if mu_key == "mu" else "sFID features (17 x 17 x 7)"
        raise ValueError(f"{path}: {mu_key!r} has shape {mu.shape}, expected ({dim},): the {what} are {dim}-d")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(f"{path}: {sigma_key!r} has shape {sigma.shape}, expected ({d}, {d}) to match {mu_key!r}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: {mu_key!r}/{sigma_key!r} contain NaN or inf")
    return GaussianStats(mu.astype(np.float64), sigma.astype(np.float64), 0)


def read_reference_batch(path: str | Path) -> AdmReference:
    """Open and validate an ADM reference batch (``arr_0`` and/or ``mu``, ``sigma``; optional ``mu_s``,
    ``sigma_s``). Nothing large is loaded: ``arr_0`` is memory-mapped; the statistics are read (~50 MB)."""
    import zipfile

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reference batch {path} does not exist (expected an ADM .npz such as "
                                "VIRTUAL_imagenet256_labeled.npz, or an image folder)")
    try:
        with zipfile.ZipFile(path) as zf:
            files = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable npz file: {e}") from e
    stats = _stats(path, files, "mu", "sigma", POOL3_DIM)
    spatial = _stats(path, files, "mu_s", "sigma_s", SPATIAL_DIM)
    if "arr_0" not in files and stats is None:
        raise ValueError(f"{path}: neither reference images ('arr_0') nor statistics ('mu', 'sigma'); found "
                         f"{sorted(files)}")
    images = load_npz_images(path) if "arr_0" in files else None
    if images is not None and images.shape[0] == 0:
        raise ValueError(f"{path}: 'arr_0' holds no images")
    dtypes = {k: str(open_npz_member(path, k).dtype) for k in ("arr_0", "mu", "sigma", "mu_s", "sigma_s")
              if k in files}
    return AdmReference(path, images, stats, spatial, dtypes, file_sha256(path))


# --------------------------------------------------------------------------------------------- samples
def _sample_size(samples: ImageSource) -> tuple[int, int] | None:
    """(H, W) of the samples when it is known without decoding (arrays, tensors, npz); validates dtype/layout."""
    if isinstance(samples, (str, Path)):
        path = Path(samples).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"samples {path} do not exist (expected an ADM .npz or an image folder)")
        if path.is_dir():
            return None
        if path.suffix != ".npz":
            raise ValueError(f"samples {path}: expected an .npz file (arr_0 uint8 NHWC) or an image folder")
        arr = load_npz_images(path)
        return int(arr.shape[1]), int(arr.shape[2])
    if isinstance(samples, (np.ndarray, torch.Tensor)):
        dtype_ok = samples.dtype in (np.uint8, torch.uint8)
        shape = tuple(samples.shape)
        if not dtype_ok or len(shape) != 4 or 3 not in (shape[1], shape[-1]):
            raise ValueError(f"samples: expected uint8 images [N, H, W, 3] or [N, 3, H, W], got {samples.dtype} "
                             f"{shape}")
        return (shape[2], shape[3]) if shape[1] == 3 else (shape[1], shape[2])
    return None


def _checked(samples: ImageSource, size: tuple[int, int] | None, batch_size: int) -> Iterator[torch.Tensor]:
    where = describe(samples)
    for batch in iter_batches(samples, batch_size):
        if size is not None and tuple(batch.shape[2:]) != size:
            raise ValueError(f"samples {where}: images of {batch.shape[2]}x{batch.shape[3]} px, but the reference "
                             f"images are {size[0]}x{size[1]}: resize the samples to the reference size first (the "
                             "paper protocol decodes or resizes to 256 px, bicubic, then rounds to uint8)")
        yield batch


@contextlib.contextmanager
def spatial_tap(extractor: FeatureExtractor) -> Iterator[list[torch.Tensor]]:
    """Collect sFID features (``mixed_6/conv`` = ``Mixed_6d.branch1x1``, channels [:7], NHWC-flattened, float32
    [B, 2023]) of every batch the extractor processes while the context is open."""
    block = getattr(extractor.module, "Mixed_6d", None)
    if block is None or not hasattr(block, "branch1x1"):
        raise ValueError(f"the extractor {extractor.identity.get('extractor')!r} has no Mixed_6d.branch1x1 (sFID needs "
                         "torch-fidelity's Inception-v3)")
    out: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, y: torch.Tensor) -> None:
        # [B, 192, 17, 17] -> [B, 17, 17, 192] -> first 7 channels -> [B, 2023] (ADM's H, W, C order)
        out.append(y.permute(0, 2, 3, 1)[..., :SPATIAL_CHANNELS].reshape(len(y), -1).float().cpu())

    handle = block.branch1x1.register_forward_hook(hook)
    try:
        yield out
    finally:
        handle.remove()


def adm_inception_score(logits: torch.Tensor, chunk: int = IS_CHUNK) -> float:
    """Mean over consecutive ``chunk``-sized blocks (file order, last partial block kept) of the Inception Score."""
    return float(np.mean([inception_score_from_logits(part, splits=1, seed=None)[0]
                          for part in torch.as_tensor(logits).split(chunk)]))


def evaluate_samples(samples: ImageSource, reference: str | Path | AdmReference | ImageSource, *,
                     batch_size: int = 64, device: str | torch.device = "cpu", inception_score: bool = True,
                     sfid: bool = True, extractor: FeatureExtractor | None = None,
                     weights_path: str | Path | None = None) -> dict[str, Any]:
    """FID, sFID, precision, recall and Inception Score of ``samples`` against ``reference``, ADM style.

    Args:
        samples: uint8 images: an ADM npz (``arr_0`` NHWC, streamed), an image folder, an array or tensor.
        reference: an ADM reference batch (npz path or :class:`AdmReference`), or any image source (then FID is
            computed against the reference images' own statistics).
        inception_score: compute IS when the logits weights exist (else value None with the reason).
        sfid: compute sFID when the reference stores ``mu_s``/``sigma_s``.
        extractor: the pool3 feature network (default: the FID Inception); tests pass a small stand-in.

    Returns a dict with ``fid``, ``sfid``, ``precision``, ``recall``, ``inception_score`` (each None with a
    ``*_reason`` when not computed), ``n``, ``n_reference``, ``fid_reference`` (which statistics FID used),
    ``samples_sha256`` (pixel content), ``reference`` (path, sha256, stored dtypes), ``fid_backend`` and
    ``results``: the same numbers typed, by metric key (``gfid``, ``sfid``, ``precision``, ``recall``,
    ``inception_score``).
    Inputs are validated before any feature is extracted.
    """
    ref: AdmReference | None = None
    if isinstance(reference, AdmReference):
        ref = reference
    elif isinstance(reference, (str, Path)) and Path(reference).suffix == ".npz":
        ref = read_reference_batch(reference)
    elif isinstance(reference, (str, Path)) and not Path(reference).expanduser().is_dir():
        raise FileNotFoundError(f"reference {reference}: expected an ADM .npz reference batch or an image folder")
    size = _sample_size(samples)
    ref_size = ref.image_size if ref is not None else None
    if size is not None and ref_size is not None and size != ref_size:
        raise ValueError(f"samples {describe(samples)} are {size[0]}x{size[1]} px but the reference images are "
                         f"{ref_size[0]}x{ref_size[1]}: resize the samples to the reference size first")

    pool = extractor or fid_extractor((POOL3,), weights_path=weights_path, device=device)
    sample_ex, is_reason = pool, None
    if inception_score and extractor is None:
        is_reason = inception_score_unavailable_reason(weights_path)
        if is_reason is None:
            try:
                sample_ex = fid_extractor((POOL3, LOGITS), weights_path=weights_path, device=device)
            except MissingAssetError as e:
                is_reason = f"Inception Score unavailable: {e}"
    elif inception_score:
        is_reason = "Inception Score needs the FID Inception's logits; a custom feature extractor was given"
    else:
        is_reason = "Inception Score not requested"
    want_sfid = sfid and ref is not None and ref.spatial is not None
    sfid_reason = None if want_sfid else (
        "sFID not requested" if not sfid else
        "sFID needs the reference's stored spatial statistics (mu_s, sigma_s), which it does not have")

    hasher = ContentHasher()
    with spatial_tap(sample_ex) if want_sfid else contextlib.nullcontext([]) as spatial:
        feats = extract_image_features(_checked(samples, ref_size, batch_size), sample_ex, batch_size=batch_size,
                                 hasher=hasher)
    fake = feats[POOL3]
    if len(fake) < 2:
        raise ValueError(f"samples {describe(samples)}: FID needs at least 2 images, got {len(fake)}")

    out: dict[str, Any] = {"protocol": PROTOCOL, "n": len(fake), "samples": describe(samples),
                           "samples_sha256": hasher.hexdigest(), "fid_backend": dict(pool.identity)}
    ref_features = None
    if ref is None or ref.images is not None:
        ref_stats = reference_statistics(reference if ref is None else ref.images, batch_size=batch_size,
                                         device=device, extractor=pool)
        ref_features = ref_stats.features
    if ref is not None and ref.stats is not None:
        if ref.stats.mu.shape[0] != fake.shape[1]:
            raise ValueError(f"{ref.path}: 'mu' is {ref.stats.mu.shape[0]}-d but the extractor gives "
                             f"{fake.shape[1]}-d features")
        out["fid"] = frechet_distance(GaussianStats.of(fake), ref.stats)
        out["fid_reference"] = f"stored mu/sigma of {ref.path.name} (ADM)"
    else:
        out["fid"] = frechet_distance(GaussianStats.of(fake), ref_stats.gaussian)
        out["fid_reference"] = f"statistics of the {ref_stats.n} reference images"
    out["n_reference"] = None if ref_features is None else len(ref_features)
    if ref is not None:
        out["reference"] = {"path": str(ref.path), "sha256": ref.sha256, "stored_dtypes": ref.stored_dtypes,
                            "n_images": ref.n_images}
    else:
        out["reference"] = {"source": describe(reference), "statistics_key": ref_stats.key}

    if want_sfid:
        out["sfid"] = frechet_distance(GaussianStats.of(torch.cat(spatial)), ref.spatial)  # type: ignore[union-attr]
    else:
        out["sfid"], out["sfid_reason"] = None, sfid_reason

    if ref_features is None:
        out["precision"] = out["recall"] = None
        out["precision_recall_reason"] = "the reference has no images (arr_0) to define the real manifold"
    else:
        dev = torch.device(device)
        out["precision"], out["recall"] = precision_recall(fake.to(dev), ref_features.to(dev), k=PR_K)
        out["k"] = PR_K

    if LOGITS in feats:
        out["inception_score"] = adm_inception_score(feats[LOGITS])
        out["inception_score_chunk"] = IS_CHUNK
    else:
        out["inception_score"], out["inception_score_reason"] = None, is_reason
    n, pr_reason = out["n"], out.get("precision_recall_reason")
    out["results"] = {"gfid": MetricResult(out["fid"], n), "sfid": MetricResult(out["sfid"], n, out.get("sfid_reason")),
                      "precision": MetricResult(out["precision"], n, pr_reason),
                      "recall": MetricResult(out["recall"], n, pr_reason),
                      "inception_score": MetricResult(out["inception_score"], n, out.get("inception_score_reason"))}
    return out
