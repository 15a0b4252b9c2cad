"""FID, KID, Inception Score and precision/recall from Inception features.

Features come from torch-fidelity's ``inception-v3-compat`` extractor (see :mod:`vfmtok.metrics.inception`);
the statistics are implemented here once and checked against torch-fidelity's functions on identical
features. Conventions follow torch-fidelity 0.4.0: FID via the eigenvalues of ``sigma1 @ sigma2``; KID with
a cubic polynomial kernel, 100 subsets of 1000 (clamped to the sample count), seed 2020; IS over 10 splits
after a seeded shuffle; precision/recall with the k = 3 nearest-neighbour radius (improved P/R).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from vfmtok.metrics.inception import load_fid_inception

DEFAULT_SEED = 2020


@torch.inference_mode()
def inception_features(images: torch.Tensor | np.ndarray | Iterable[torch.Tensor], *, batch_size: int = 64,
                       extractor: torch.nn.Module | None = None, device: str | torch.device = "cpu",
                       feature: str = "2048") -> torch.Tensor:
    """float32 [N, 2048] pool3 features (or another extractor output) of uint8 images.

    ``images``: a uint8 tensor [N, 3, H, W], an ADM-style array [N, H, W, 3], or an iterable of uint8 batches.
    Any size is accepted: the extractor resizes to 299 px itself (TF1-compatible bilinear).
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected an NHWC uint8 array, got shape {images.shape}")
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    net = (extractor or load_fid_inception((feature,))).to(device)
    out = []
    for batch in batches:
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"Inception features need uint8 [B, 3, H, W] batches, got {batch.dtype} "
                             f"{tuple(batch.shape)}")
        out.append(net(batch.to(device))[0].float().cpu())
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out)


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set (float64)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features: torch.Tensor) -> GaussianStats:
        """Statistics of float [N, D] features."""
        f = features.double().numpy()
        if len(f) < 2:
            raise ValueError(f"FID needs at least 2 feature vectors, got {len(f)}")
        return cls(f.mean(0), np.cov(f, rowvar=False), len(f))


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)); the trace via eigenvalues of S_a S_b."""
    diff = a.mu - b.mu
    eig = np.linalg.eigvals(a.sigma @ b.sigma).astype(np.complex128)
    tr_sqrt = np.sqrt(eig).real.sum()
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * tr_sqrt)


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """FID between two feature sets."""
    return frechet_distance(GaussianStats.of(f1), GaussianStats.of(f2))


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    return (x @ y.T / x.shape[1] + coef0) ** degree


def _unbiased_mmd2(kxx: np.ndarray, kxy: np.ndarray, kyy: np.ndarray) -> float:
    m = len(kxx)
    off_xx = kxx.sum() - np.trace(kxx)
    off_yy = kyy.sum() - np.trace(kyy)
    return float((off_xx + off_yy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kid_from_features(f1: torch.Tensor, f2: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000,
                      seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over random subsets (size clamped to the smaller set)."""
    x, y = f1.double().numpy(), f2.double().numpy()
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        a = x[rng.choice(len(x), size, replace=False)]
        b = y[rng.choice(len(y), size, replace=False)]
        mmds[i] = _unbiased_mmd2(_poly_kernel(a, a), _poly_kernel(a, b), _poly_kernel(b, b))
    return float(mmds.mean()), float(mmds.std())


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision (fake inside some real k-NN ball) and recall (real inside some fake k-NN ball)."""
    fake, real = fake.double(), real.double()
    if min(len(fake), len(real)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    radius_fake = torch.cdist(fake, fake).kthvalue(k + 1, dim=1).values  # k-th neighbour, self excluded
    radius_real = torch.cdist(real, real).kthvalue(k + 1, dim=1).values
    real_to_fake = torch.cdist(real, fake)  # [N_real, N_fake]
    recall = (real_to_fake <= radius_fake).any(dim=1).double().mean().item()
    fake_to_real = real_to_fake.T  # [N_fake, N_real]
    precision = (fake_to_real <= radius_real).any(dim=1).double().mean().item()
    return precision, recall


def inception_score_from_logits(logits: torch.Tensor, splits: int = 10,
                                seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y))), after a seeded shuffle."""
    n = len(logits)
    if n < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples, got {n}")
    logits = logits[np.random.RandomState(seed).permutation(n)].double()
    log_p = logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_q = part.exp().mean(0, keepdim=True).log()
        scores.append(float((part.exp() * (part - log_q)).sum(1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))
