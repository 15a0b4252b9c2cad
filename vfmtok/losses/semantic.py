"""VFMTok's semantic reconstruction loss: cosine distance to the frozen encoder's features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_feature_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """mean(1 - cos(pred, target)) over tokens, cosine along channels.

    Args:
        pred: float [B, N, C] predicted features.
        target: float [B, N, C] encoder features (treated as a constant).

    Returns:
        scalar loss in [0, 2].
    """
    if pred.shape != target.shape:
        raise ValueError(f"semantic prediction {tuple(pred.shape)} does not match target {tuple(target.shape)}")
    return (1.0 - F.cosine_similarity(pred.float(), target.detach().float(), dim=-1, eps=eps)).mean()
