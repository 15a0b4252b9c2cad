"""Frozen feature encoders: timm ViTs (DINOv2, CLIP, SigLIP) and the offline FID Inception-v3; their features
cached on disk for training (:mod:`vfmtok.encoders.feature_cache`)."""

from vfmtok.encoders import inception, timm_vit  # noqa: F401  (register the built-in encoders)
from vfmtok.encoders.base import (
    ENCODERS,
    FeatureOutput,
    FrozenEncoder,
    create_encoder,
    list_encoders,
    register_encoder,
)

__all__ = ["ENCODERS", "FeatureOutput", "FrozenEncoder", "create_encoder", "list_encoders", "register_encoder"]
