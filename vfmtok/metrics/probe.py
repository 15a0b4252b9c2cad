"""Linear probing of tokenizer features.

Features are mean-pooled over tokens: ``pre_quant`` (the encoder's latents before quantization,
``Encoded.aux["pre_quant"]``) and ``codes`` (the quantized latents the decoder sees, ``Encoded.latents``).
Head: BatchNorm1d without affine parameters + Linear, AdamW, a fixed number of epochs; the reported
number is top-1 accuracy after the last epoch (not the best epoch), fully determined by the seed.
"""

from __future__ import annotations

import torch
from torch import nn

from vfmtok.images import to_model_range
from vfmtok.interface import Tokenizer


@torch.inference_mode()
def extract_features(tokenizer: Tokenizer, images: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Mean-pooled features float32 [N, D] of uint8 ``images``: ``pre_quant`` and ``codes``."""
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    pre, codes = [], []
    for batch in images.split(batch_size):
        enc = tokenizer.encode(to_model_range(batch.to(device)))
        codes.append(enc.latents.float().mean(1).cpu())  # [B, L, D] -> [B, D]
        pre.append(enc.aux.get("pre_quant", enc.latents).float().mean(1).cpu())
    return {"pre_quant": torch.cat(pre), "codes": torch.cat(codes)}


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 epochs: int = 20, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 256,
                 seed: int = 0) -> float:
    """Top-1 accuracy (fraction) of a BN + linear head trained on (train_x, train_y), after the last epoch."""
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"probe features must be [N, D] with equal D, got {tuple(train_x.shape)} and "
                         f"{tuple(test_x.shape)}")
    g = torch.Generator().manual_seed(seed)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
    with torch.no_grad():
        head[1].weight.normal_(0.0, 0.01, generator=g)
        head[1].bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    x, y = train_x.float(), train_y.long()
    head.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        return float((head(test_x.float()).argmax(1) == test_y.long()).float().mean())
