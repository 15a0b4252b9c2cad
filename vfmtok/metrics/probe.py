"""Linear probing of tokenizer features.

Protocol (every result says which features it used):

* features, mean-pooled over tokens, from one eval-mode encode of uint8 images mapped to [-1, 1]:
  ``pre_quant`` -- the encoder's latents before quantization (``Encoded.aux["pre_quant"]``; tokenizers that
  do not expose it fall back to ``Encoded.latents``, and the result says so); ``codes`` -- the quantized
  latents the decoder sees (``Encoded.latents``; for continuous tokenizers, the continuous latents);
* features are extracted once and cached in the verified store (:mod:`vfmtok.store`, kind ``probe_features``
  under the work cache), keyed by a hash of the tokenizer (spec + every weight, frozen encoders included) and of
  the data (pixels and labels);
* head: ``BatchNorm1d(affine=False)`` + ``Linear`` (weights N(0, 0.01), bias 0), AdamW, a fixed number of
  epochs, mini-batches drawn by a seeded generator; the reported number is top-1 accuracy on the held-out split
  **after the last epoch** (not the best epoch), so the same seed gives the same number.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vfmtok import store
from vfmtok.assets import work_cache_dir
from vfmtok.fileio import atomic_torch_save, sha256_json, sha256_state_dict
from vfmtok.interface import Tokenizer
from vfmtok.metrics.sources import ContentHasher

FEATURE_KINDS = ("pre_quant", "codes")
CACHE_VERSION = 2  # 2: entries of the verified store
LabelledData = Dataset | DataLoader | tuple[torch.Tensor, torch.Tensor] | Iterable[Any]


class ProbeFeatures(dict):
    """``{"pre_quant": float32 [N, D], "codes": float32 [N, D]}`` plus ``taps`` (where each came from) and
    ``labels`` (int64 [N], when the data had labels)."""

    taps: dict[str, str]
    labels: torch.Tensor | None


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's spec and all of its weights and buffers (frozen modules included)."""
    return sha256_json({"name": tokenizer.registry_name, "spec": tokenizer.spec.to_dict(),
                        "weights": sha256_state_dict(tokenizer.state_dict())})


def _labelled_batches(data: LabelledData, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    if isinstance(data, torch.Tensor):
        for x in data.split(batch_size):
            yield x, None
    elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        yield from zip(images.split(batch_size), torch.as_tensor(labels).long().split(batch_size))
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        for start in range(0, len(data), batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            yield torch.stack([im for im, _ in items]), torch.tensor([int(y) for _, y in items])
    else:
        for batch in data:
            if isinstance(batch, (tuple, list)):
                yield batch[0], torch.as_tensor(batch[1]).long()
            else:
                yield batch, None


@torch.inference_mode()
def extract_probe_features(tokenizer: Tokenizer, data: LabelledData, batch_size: int = 64) -> ProbeFeatures:
    """Mean-pooled ``pre_quant`` and ``codes`` features (float32 [N, D]) of uint8 images.

    ``data``: a uint8 tensor [N, 3, H, W], an ``(images, labels)`` pair, a dataset of ``(image, label)`` items,
    or an iterable of ``(images, labels)`` batches.
    """
    tokenizer.eval()
    pre, codes, labels = [], [], []
    has_pre = True
    for images, y in _labelled_batches(data, batch_size):
        enc = tokenizer.encode(tokenizer.prepare(images))
        codes.append(enc.latents.float().mean(1).cpu())  # [B, L, D] -> [B, D]
        has_pre = has_pre and "pre_quant" in enc.aux
        pre.append(enc.aux.get("pre_quant", enc.latents).float().mean(1).cpu())
        if y is not None:
            labels.append(y)
    if not codes:
        raise ValueError("no images to extract probe features from")
    out = ProbeFeatures(pre_quant=torch.cat(pre), codes=torch.cat(codes))
    kind = "quantized codes" if tokenizer.spec.is_discrete else "continuous latents"
    out.taps = {"pre_quant": "Encoded.aux['pre_quant']" if has_pre else "Encoded.latents (no pre_quant exposed)",
                "codes": f"Encoded.latents ({kind})"}
    out.labels = torch.cat(labels) if labels and len(labels) == len(codes) else None
    return out


def _data_fingerprint(data: LabelledData, batch_size: int = 256) -> str:
    hasher, labels = ContentHasher(), hashlib.sha256()
    for images, y in _labelled_batches(data, batch_size):
        hasher.update(images)
        labels.update(b"-" if y is None else y.long().numpy().tobytes())
    return sha256_json({"images": hasher.hexdigest(), "labels": labels.hexdigest()})


def cached_features(tokenizer: Tokenizer, data: LabelledData, *, batch_size: int = 64) -> ProbeFeatures:
    """:func:`extract_probe_features`, cached by (tokenizer weights hash, data fingerprint, pooling)."""
    inputs = {"tokenizer": tokenizer_fingerprint(tokenizer), "data": _data_fingerprint(data),
              "pooling": "mean over tokens"}
    cache = store.Store(work_cache_dir("probe_features").parent)
    label = f"probe features {tokenizer.spec.name}"
    folder = cache.get("probe_features", CACHE_VERSION, inputs, label)
    if folder is not None:
        d = torch.load(folder / "features.pt", map_location="cpu", weights_only=True)
        out = ProbeFeatures(pre_quant=d["pre_quant"], codes=d["codes"])
        out.taps, out.labels = d["taps"], d["labels"]
        return out
    out = extract_probe_features(tokenizer, data, batch_size=batch_size)
    payload = {"key": sha256_json(inputs), "pre_quant": out["pre_quant"], "codes": out["codes"], "taps": out.taps,
               "labels": out.labels}
    cache.put("probe_features", CACHE_VERSION, inputs, lambda f: atomic_torch_save(f / "features.pt", payload), label)
    return out


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 epochs: int = 20, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 256,
                 seed: int = 0, num_classes: int | None = None) -> float:
    """Top-1 accuracy (fraction) of a BN + linear head trained on (train_x, train_y), after the last epoch."""
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"probe features must be [N, D] with equal D, got {tuple(train_x.shape)} and "
                         f"{tuple(test_x.shape)}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"features and labels differ in length: train {len(train_x)}/{len(train_y)}, "
                         f"test {len(test_x)}/{len(test_y)}")
    if len(train_x) < 2 or epochs < 1:
        raise ValueError(f"a probe needs at least 2 training samples and 1 epoch, got {len(train_x)} and {epochs}")
    g = torch.Generator().manual_seed(seed)
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    head = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
    with torch.no_grad():
        head[1].weight.normal_(0.0, 0.01, generator=g)
        head[1].bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    x, y = train_x.float(), train_y.long()
    head.train()
    with torch.enable_grad():
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


def probe(tokenizer: Tokenizer, train: LabelledData, test: LabelledData, *, features: str = "pre_quant",
          epochs: int = 20, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0,
          extract_batch_size: int = 64, cache: bool = True) -> dict[str, Any]:
    """Linear-probe top-1 (fraction) of ``features`` ("pre_quant" or "codes") with the protocol of this module."""
    if features not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS}, got {features!r}")
    get = cached_features if cache else extract_probe_features
    tr, te = get(tokenizer, train, batch_size=extract_batch_size), get(tokenizer, test, batch_size=extract_batch_size)
    if tr.labels is None or te.labels is None:
        raise ValueError("probing needs labels: pass (images, labels), a dataset of (image, label) or labelled batches")
    acc = linear_probe(tr[features], tr.labels, te[features], te.labels, epochs=epochs, lr=lr,
                       weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                       num_classes=int(np.max([int(tr.labels.max()), int(te.labels.max())])) + 1)
    return {"metric": "probe_top1", "value": acc, "features": features, "tap": tr.taps[features],
            "pooling": "mean over tokens", "head": "BatchNorm1d(affine=False) + Linear", "optimizer": "AdamW",
            "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size, "seed": seed,
            "reported": "top-1 after the last epoch", "n_train": len(tr.labels), "n_test": len(te.labels)}
