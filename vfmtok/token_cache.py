"""A disk cache of tokenizer indices, so AR training reads tokens instead of running the tokenizer.

A cache directory holds ``tokens.npy`` (uint16 when the codebook has at most 65536 codes, else int32; [N, L]),
``tokens_flip.npy`` (the same for horizontally flipped images, when built with ``flip=True``), ``labels.npy``
(int64 [N]), ``meta.json`` (tokenizer name and spec, the caller's key, shapes, dtype) and the store's
``MANIFEST.json`` (size and sha256 of each file, :mod:`vfmtok.store`). Every file is written atomically, the
manifest last, so a killed build leaves no cache that looks complete. A directory whose ``meta.json`` carries the
same key and tokenizer and whose files match the manifest is reused; a damaged one is moved to
``<parent>/.quarantine/tokens/`` and rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vfmtok import store
from vfmtok.distributed import barrier, is_main, ordered_map
from vfmtok.distributed import mix64 as _mix
from vfmtok.fileio import atomic_save_npy, atomic_write_json, sha256_json
from vfmtok.interface import Tokenizer

FORMAT_VERSION = 2  # 2: verified by the store's manifest
KIND = "tokens"
VARIANTS = {"plain": "tokens.npy", "flip": "tokens_flip.npy"}


def disk_dtype(codebook_size: int) -> np.dtype:
    """uint16 for codebooks of at most 65536 codes, int32 above."""
    return np.dtype(np.uint16) if codebook_size <= 65536 else np.dtype(np.int32)


class TokenCache:
    """Read access to a cache directory written by :func:`build_token_cache` (arrays are memory-mapped).

    The files are checked against the manifest first (``verify=False`` skips the sha256, not the sizes).
    """

    def __init__(self, directory: str | Path, verify: bool = True) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        problems = store.verify(self.directory, hashes=verify)
        if problems is None:
            raise FileNotFoundError(f"{self.directory / store.MANIFEST} not found: {self.directory} is not a complete "
                                    "token cache (interrupted build?); build it again")
        if problems:
            raise ValueError(f"token cache {self.directory} is damaged: {problems[0]}; build it again")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format version {self.meta.get('format_version')}, "
                             f"expected {FORMAT_VERSION}; rebuild the cache")
        shape = (self.meta["num_items"], self.meta["num_tokens"])
        self._tokens = {}
        for variant in self.meta["variants"]:
            arr = np.load(self.directory / VARIANTS[variant], mmap_mode="r")
            if arr.shape != shape or arr.dtype != np.dtype(self.meta["dtype"]):
                raise ValueError(f"{self.directory / VARIANTS[variant]}: {arr.dtype} {arr.shape}, "
                                 f"meta.json says {self.meta['dtype']} {shape}")
            self._tokens[variant] = arr
        self.labels = np.load(self.directory / "labels.npy")
        if self.labels.shape != (shape[0],):
            raise ValueError(f"{self.directory / 'labels.npy'}: shape {self.labels.shape}, expected ({shape[0]},)")

    def __len__(self) -> int:
        return self.meta["num_items"]

    @property
    def num_tokens(self) -> int:
        return self.meta["num_tokens"]

    @property
    def codebook_size(self) -> int:
        return self.meta["spec"]["codebook_size"]

    @property
    def has_flip(self) -> bool:
        return "flip" in self._tokens

    def tokens(self, variant: str = "plain") -> np.ndarray:
        """The memory-mapped [N, L] array of ``variant`` ("plain" or "flip")."""
        if variant not in self._tokens:
            raise KeyError(f"token cache {self.directory} has no {variant!r} tokens (has {list(self._tokens)})")
        return self._tokens[variant]


def _tokenize(tokenizer: Tokenizer, images: torch.Tensor, flip: bool, batch_size: int) -> np.ndarray:
    """int32 [N, L] indices of ``images`` (mirrored with ``flip``), computed by every rank on its chunks."""
    length, k = tokenizer.spec.num_tokens, tokenizer.spec.codebook_size

    def chunk(items: range) -> tuple[torch.Tensor]:
        batch = images[items.start:items.stop]
        tokens = tokenizer.tokenize(batch.flip(-1) if flip else batch).cpu()  # int64 [b, L]
        if tokens.shape != (len(items), length):
            raise ValueError(f"{tokenizer.spec.name} returned tokens {tuple(tokens.shape)}, "
                             f"expected ({len(items)}, {length})")
        if int(tokens.min()) < 0 or int(tokens.max()) >= k:
            raise ValueError(f"{tokenizer.spec.name} returned indices outside [0, {k})")
        return (tokens.to(torch.int32),)  # half the bytes to gather

    return ordered_map(chunk, images.shape[0], batch_size)[0].numpy()


def build_token_cache(tokenizer: Tokenizer, images_u8: torch.Tensor, labels: torch.Tensor, out_dir: str | Path, *,
                      key: dict[str, Any], flip: bool = False, batch_size: int = 64) -> TokenCache:
    """Tokenize ``images_u8`` uint8 [N, 3, H, W] (and their mirror images with ``flip``) into ``out_dir``.

    ``key`` (JSON-serialisable) says what the tokens depend on; an existing cache with the same key, tokenizer
    and flip setting is returned as is, anything else is rebuilt. Under ``torchrun`` every rank tokenizes its
    chunks and rank 0 writes the files, byte-identical to a one-process build.
    """
    out_dir = Path(out_dir)
    spec = tokenizer.spec
    if spec.codebook_size is None:
        raise TypeError(f"{spec.name} is continuous: it has no token indices to cache")
    if images_u8.dtype != torch.uint8 or images_u8.dim() != 4 or images_u8.shape[1] != 3:
        raise ValueError(f"images must be uint8 [N, 3, H, W], got {images_u8.dtype} {tuple(images_u8.shape)}")
    n = images_u8.shape[0]
    if n == 0:
        raise ValueError("cannot build a token cache from an empty image set")
    labels = torch.as_tensor(labels)
    if labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {tuple(labels.shape)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    key = json.loads(json.dumps(key))  # canonical JSON form; raises on values JSON cannot hold
    identity = {"key": key, "tokenizer": spec.name, "spec": spec.to_dict(), "flip": bool(flip)}
    meta_path = out_dir / "meta.json"
    if is_main() and out_dir.is_dir():
        store.check(out_dir, out_dir.parent, KIND, f"tokens {spec.name}")  # a damaged cache is moved aside
    barrier()  # rank 0 has verified before any rank reads
    if _is_built(meta_path, sha256_json(identity), n):
        return TokenCache(out_dir, verify=False)  # just verified by rank 0
    barrier()  # every rank has checked before rank 0 removes a stale manifest
    if is_main():
        (out_dir / store.MANIFEST).unlink(missing_ok=True)  # from here on the directory no longer looks complete
        meta_path.unlink(missing_ok=True)

    dtype = disk_dtype(spec.codebook_size)
    variants = ["plain", "flip"] if flip else ["plain"]
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        arrays = {v: _tokenize(tokenizer, images_u8, v == "flip", batch_size).astype(dtype) for v in variants}
    finally:
        tokenizer.train(was_training)
    if is_main():
        for variant, array in arrays.items():
            atomic_save_npy(out_dir / VARIANTS[variant], array)
        atomic_save_npy(out_dir / "labels.npy", labels.to(torch.int64).numpy())
        atomic_write_json(meta_path, {
            "format_version": FORMAT_VERSION, "tokenizer": spec.name, "spec": spec.to_dict(), "key": key,
            "identity_sha256": sha256_json(identity), "num_items": n, "num_tokens": spec.num_tokens,
            "dtype": dtype.name, "variants": variants,
        })
        store.write_manifest(out_dir, KIND)
    barrier()
    return TokenCache(out_dir, verify=False)  # written just now


def _is_built(meta_path: Path, identity_sha256: str, n: int) -> bool:
    """Whether ``meta_path`` describes a complete cache of this identity and size."""
    if not (meta_path.parent / store.MANIFEST).is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
        return meta.get("identity_sha256") == identity_sha256 and meta.get("num_items") == n
    except (OSError, ValueError, AttributeError):
        return False  # missing, unreadable or damaged: rebuild


class TokenDataset(Dataset):
    """Items ``(tokens int64 [L], label int64 [])`` from a :class:`TokenCache`.

    With a flipped copy in the cache, item ``i`` in epoch ``e`` (see :meth:`set_epoch`) comes from the flipped
    tokens when a hash of ``(seed, e, i)`` is odd: deterministic, and about half of the items each epoch.
    """

    def __init__(self, cache: TokenCache, seed: int = 0) -> None:
        self.cache, self.seed, self.epoch = cache, int(seed), 0

    def __len__(self) -> int:
        return len(self.cache)

    def set_epoch(self, epoch: int) -> None:
        """Select the flip pattern of ``epoch``."""
        self.epoch = int(epoch)

    def use_flip(self, index: int) -> bool:
        """Whether item ``index`` is read from the flipped tokens in the current epoch."""
        return self.cache.has_flip and _mix(self.seed, self.epoch, int(index)) & 1 == 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        tokens = self.cache.tokens("flip" if self.use_flip(index) else "plain")[index]
        return torch.from_numpy(tokens.astype(np.int64)), torch.tensor(int(self.cache.labels[index]))

    def batch(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked items: tokens int64 [B, L], labels int64 [B]."""
        items = [self[int(i)] for i in indices]
        return torch.stack([t for t, _ in items]), torch.stack([y for _, y in items])
