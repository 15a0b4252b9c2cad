"""The FID Inception-v3 (TF-2015 graph, ImageNet-supervised) as a frozen multi-level encoder.

It is the only real pretrained vision network available offline, so VFMTok can be trained on real
pretrained features without a network. Levels (at 299 px input): Mixed_5d 288 x 35 x 35, Mixed_6e
768 x 17 x 17, Mixed_7c 2048 x 8 x 8. Preprocessing follows the FID network: [-1, 1] images are mapped to
0..255, resized with TF1-style bilinear interpolation to ``input_size`` and scaled by (x - 128) / 128, so at
299 px the average-pooled Mixed_7c equals the FID pool3 feature. When this network is also the FID network,
results tables must say so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from vfmtok.encoders.base import FrozenEncoder, register_encoder
from vfmtok.fid_inception import load_fid_inception, random_fid_inception

#: blocks of torch-fidelity's FeatureExtractorInceptionV3 in forward order (pools included)
_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
         "MaxPool_2")
_MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
          "Mixed_7a", "Mixed_7b", "Mixed_7c")
DEFAULT_LEVELS = ("Mixed_5d", "Mixed_6e", "Mixed_7c")


def pretrained_fid_inception() -> FeatureExtractorInceptionV3:
    """The FID Inception with its real weights, from the offline asset (see ``vfmtok.metrics.inception``)."""
    return load_fid_inception()


class InceptionEncoder(FrozenEncoder):
    """Frozen Inception-v3 returning maps after chosen Mixed blocks.

    Args:
        network: torch-fidelity ``FeatureExtractorInceptionV3`` (real or random weights).
        input_size: square input size (299 is the network's native size; at least 75).
        levels: Mixed block names to return, in forward order.
    """

    def __init__(self, network: FeatureExtractorInceptionV3, input_size: int = 299,
                 levels: Sequence[str] = DEFAULT_LEVELS) -> None:
        super().__init__()
        levels = list(levels)
        bad = [n for n in levels if n not in _MIXED]
        order = [_MIXED.index(n) for n in levels if n in _MIXED]
        if bad or not levels or order != sorted(set(order)):
            raise ValueError(f"levels must be Mixed blocks in forward order from {_MIXED}, got {levels}")
        if input_size < 75:
            raise ValueError(f"Inception-v3 needs input_size >= 75, got {input_size}")
        last = max(order)
        self.blocks = nn.ModuleDict({n: getattr(network, n) for n in _STEM + _MIXED[:last + 1]})
        self.levels, self.input_size = levels, input_size
        self.freeze()
        with torch.no_grad():
            shapes = [t.shape[1:] for t in self.extract(torch.zeros(1, 3, input_size, input_size))]
        self.level_channels = tuple(int(s[0]) for s in shapes)
        self.level_sizes = tuple((int(s[1]), int(s[2])) for s in shapes)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> 0..255 -> TF1 bilinear resize -> (x - 128) / 128, as the FID network does."""
        x = (x.clamp(-1.0, 1.0) + 1.0) * 127.5
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(self.input_size, self.input_size),
                                                          align_corners=False)
        return (x - 128.0) / 128.0

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the ``levels`` blocks, float [B, C, h, w] each."""
        x = self.preprocess(x)
        out = []
        for name, block in self.blocks.items():
            x = block(x)
            if name in self.levels:
                out.append(x)
        return out


@register_encoder("inception_v3_fid")
def inception_v3_fid(pretrained: bool = True, input_size: int = 299,
                     levels: Sequence[str] = DEFAULT_LEVELS) -> InceptionEncoder:
    """The FID Inception-v3 as a frozen encoder (``pretrained=False``: random weights, for tests)."""
    network = pretrained_fid_inception() if pretrained else random_fid_inception()
    return InceptionEncoder(network, input_size=input_size, levels=levels)
