"""Training losses: pixel, perceptual (LPIPS), adversarial (PatchGAN) and semantic."""

from vfmtok.losses.gan import NLayerDiscriminator, adaptive_weight, generator_loss, hinge_d_loss
from vfmtok.losses.perceptual import PerceptualLoss, lpips_unavailable_reason
from vfmtok.losses.pixel import pixel_loss

__all__ = ["NLayerDiscriminator", "PerceptualLoss", "adaptive_weight", "generator_loss", "hinge_d_loss",
           "lpips_unavailable_reason", "pixel_loss"]
