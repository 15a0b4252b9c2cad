"""A disk cache of frozen-encoder features, so tokenizer training reads them instead of running the encoder.

Features are stored as one fp16 memmap per variant (``plain`` and, when flip augmentation is on, ``hflip``:
features of horizontally flipped images), rows in dataset order, the levels of a row flattened and
concatenated. The cache directory is keyed by the dataset fingerprint (a content hash of the images, passed
in), the encoder name, the sha256 of its weights and its input size; any change gives a new directory. The
directory is an entry of the store (:mod:`vfmtok.store`, kind ``features``): files are written atomically, then
``meta.json``, then ``MANIFEST.json`` (size and sha256 of each file) last, so a killed build leaves no cache that
looks complete. A build verifies the manifest first (a streaming sha256 of every file) and moves a damaged
directory to ``<root>/../.quarantine/features/`` before recomputing it; reads check sizes against the manifest.

The cached images must be fixed: random crops or other augmentations of the base dataset would not match
the features. Horizontal flips are applied by :class:`CachedFeatureDataset` itself.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vfmtok import store
from vfmtok.distributed import barrier, is_main, ordered_rounds
from vfmtok.encoders.base import FrozenEncoder
from vfmtok.fileio import atomic_write, atomic_write_json
from vfmtok.images import to_model_range

FORMAT_VERSION = 2  # 2: verified by the store's manifest
FP16_MAX = 65504.0
VARIANTS = ("plain", "hflip")


def default_cache_root() -> Path:
    """``$VFMTOK_WORK_CACHE/features``, else ``~/.cache/vfmtok/work/features``."""
    base = os.environ.get("VFMTOK_WORK_CACHE") or Path.home() / ".cache" / "vfmtok" / "work"
    return Path(base) / "features"


@dataclass(frozen=True)
class FeatureCacheKey:
    """What the cached features depend on."""

    dataset: str  # content fingerprint of the images, in order
    encoder: str
    weights: str  # sha256 of the encoder weights
    input_size: int

    @classmethod
    def for_encoder(cls, encoder: FrozenEncoder, dataset_fingerprint: str) -> FeatureCacheKey:
        """The key of ``encoder`` features over the dataset with ``dataset_fingerprint``."""
        if not dataset_fingerprint:
            raise ValueError("a non-empty dataset fingerprint is required to key the feature cache")
        ident = encoder.identity()
        return cls(dataset_fingerprint, ident["encoder"], ident["weights"], int(ident["input_size"]))

    def digest(self) -> str:
        """Short hex digest naming the cache directory."""
        return store.entry_key("features", FORMAT_VERSION, asdict(self), length=20)


def _to_model_range(image: torch.Tensor) -> torch.Tensor:
    return to_model_range(image) if image.dtype == torch.uint8 else image.float()


class FeatureCache:
    """Read access to (and building of) one cache directory.

    Args:
        directory: the cache directory (``root / <encoder>-<digest>``).
        key: its key.
        level_shapes: (C, h, w) per level.
        num_items: number of dataset items.
    """

    def __init__(self, directory: Path, key: FeatureCacheKey, level_shapes: Sequence[tuple[int, int, int]],
                 num_items: int) -> None:
        self.directory, self.key, self.num_items = Path(directory), key, int(num_items)
        self.level_shapes = [tuple(int(v) for v in s) for s in level_shapes]
        self.row_size = sum(c * h * w for c, h, w in self.level_shapes)
        self._maps: dict[str, np.memmap] = {}

    @classmethod
    def for_encoder(cls, encoder: FrozenEncoder, dataset_fingerprint: str, num_items: int,
                    root: str | Path | None = None) -> FeatureCache:
        """The cache of ``encoder`` features over a dataset (it may not be built yet)."""
        key = FeatureCacheKey.for_encoder(encoder, dataset_fingerprint)
        shapes = [(c, h, w) for c, (h, w) in zip(encoder.level_channels, encoder.level_sizes)]
        root = Path(root) if root is not None else default_cache_root()
        return cls(root / f"{key.encoder}-{key.digest()}", key, shapes, num_items)

    def path(self, variant: str) -> Path:
        """File of one variant (``plain`` or ``hflip``)."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown feature variant {variant!r}; expected one of {VARIANTS}")
        return self.directory / f"features_{variant}.f16"

    def _meta(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "key": asdict(self.key), "level_shapes": self.level_shapes,
                "num_items": self.num_items, "dtype": "float16"}

    def is_complete(self, variants: Sequence[str] = ("plain",)) -> bool:
        """True when ``meta.json`` matches, the manifest lists every requested variant and every file has the
        size the manifest gives (no hashing: :meth:`build` verifies the sha256)."""
        meta_path = self.directory / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            manifest = store.read_manifest(self.directory)
        except (OSError, ValueError):
            return False
        if manifest is None or store.verify(self.directory, hashes=False) != []:
            return False
        mine = json.loads(json.dumps(self._meta()))  # tuples -> lists, as stored
        if {k: meta.get(k) for k in mine} != mine:
            return False
        size = self.num_items * self.row_size * 2
        return all(v in meta.get("variants", []) and self.path(v).name in manifest["files"]
                   and self.path(v).stat().st_size == size for v in variants)

    def build(self, encoder: FrozenEncoder, dataset: Dataset, *, flip: bool = False, batch_size: int = 64,
              progress: bool = False) -> FeatureCache:
        """Compute and store the features of every item of ``dataset`` (yielding ``(image, label)``).

        Images are uint8 [3, H, W] or float [3, H, W] in [-1, 1]. Variants already complete are kept. Under
        ``torchrun`` every rank encodes its chunks and rank 0 writes, byte-identical to a one-process build.
        """
        if FeatureCacheKey.for_encoder(encoder, self.key.dataset) != self.key:
            raise ValueError(f"encoder {encoder.name} does not match the cache key {self.key}")
        if len(dataset) != self.num_items:
            raise ValueError(f"dataset has {len(dataset)} items, the cache expects {self.num_items}")
        if self.num_items == 0:
            raise ValueError("cannot build a feature cache of an empty dataset")
        entry = store.Entry(self.directory.parent.parent, self.directory.parent.name, self.directory.name,
                            f"features {self.key.encoder}")
        with entry.lock() if is_main() else contextlib.nullcontext():  # one builder per cache across processes
            return self._build(entry, encoder, dataset, flip, batch_size, progress)

    def _build(self, entry: store.Entry, encoder: FrozenEncoder, dataset: Dataset, flip: bool, batch_size: int,
               progress: bool) -> FeatureCache:
        variants = ["plain", "hflip"] if flip else ["plain"]
        if is_main():
            entry.check()  # a damaged cache is moved aside (one warning line) and recomputed
        barrier()  # rank 0 has verified before any rank looks
        todo = [v for v in variants if not self.is_complete([v])]
        kept = [v for v in VARIANTS if v not in todo and self.is_complete([v])]
        barrier()  # every rank has checked before rank 0 writes
        if todo and is_main():
            (self.directory / store.MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest
        for variant in todo:
            rows = self._rows(encoder, dataset, variant, batch_size)
            if is_main():
                atomic_write(self.path(variant), lambda p, r=rows: self._write(p, r, progress))
            else:
                for _ in rows:  # take part in the collective encoding; rank 0 writes
                    pass
        if todo and is_main():
            done = [v for v in VARIANTS if v in todo or v in kept]
            atomic_write_json(self.directory / "meta.json", {**self._meta(), "variants": done})
            store.write_manifest(self.directory, self.directory.parent.name)
        barrier()
        self._maps.clear()
        return self

    def _rows(self, encoder: FrozenEncoder, dataset: Dataset, variant: str,
              batch_size: int) -> Iterator[tuple[range, torch.Tensor]]:
        """(items, fp16 rows [len(items), row_size]) in dataset order; every rank encodes its own chunks."""
        device = next(encoder.parameters()).device

        def chunk(items: range) -> tuple[torch.Tensor]:
            x = torch.stack([_to_model_range(dataset[i][0]) for i in items]).to(device)  # [b, 3, H, W] in [-1, 1]
            if variant == "hflip":
                x = x.flip(-1)
            rows = torch.cat([t.flatten(1) for t in encoder(x).levels], dim=1).cpu()  # [b, row_size]
            peak = float(rows.abs().max())
            if not np.isfinite(peak) or peak > FP16_MAX:
                raise ValueError(f"features of items {items.start}..{items.stop - 1} reach {peak}: "
                                 "not storable as fp16")
            return (rows.half(),)

        for items, (rows,) in ordered_rounds(chunk, self.num_items, batch_size):
            yield items, rows

    def _write(self, path: Path, rows: Iterator[tuple[range, torch.Tensor]], progress: bool) -> None:
        out = np.memmap(path, dtype=np.float16, mode="w+", shape=(self.num_items, self.row_size))
        if progress:
            from tqdm import tqdm

            rows = tqdm(rows, desc=f"features {self.key.encoder} {path.stem}")
        for items, block in rows:
            out[items.start:items.stop] = block.numpy()
        out.flush()
        del out

    def _map(self, variant: str) -> np.memmap:
        if variant not in self._maps:  # opened lazily, once per process (DataLoader workers included)
            if not self.is_complete([variant]):
                raise FileNotFoundError(f"feature cache {self.directory} has no complete {variant!r} variant; "
                                        "build it first")
            self._maps[variant] = np.memmap(self.path(variant), dtype=np.float16, mode="r",
                                            shape=(self.num_items, self.row_size))
        return self._maps[variant]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}

    def read(self, index: int, flipped: bool = False) -> list[torch.Tensor]:
        """Features of item ``index`` as float32 tensors [C, h, w], one per level."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"item {index} out of range for a cache of {self.num_items} items")
        row = torch.from_numpy(np.array(self._map("hflip" if flipped else "plain")[index], dtype=np.float32))
        parts = row.split([c * h * w for c, h, w in self.level_shapes])
        return [p.view(c, h, w) for p, (c, h, w) in zip(parts, self.level_shapes)]


def build_feature_cache(encoder: FrozenEncoder, dataset: Dataset, dataset_fingerprint: str, *, flip: bool = False,
                        root: str | Path | None = None, batch_size: int = 64, progress: bool = False) -> FeatureCache:
    """Open the cache of ``encoder`` features over ``dataset``, computing what is missing."""
    cache = FeatureCache.for_encoder(encoder, dataset_fingerprint, len(dataset), root)
    return cache.build(encoder, dataset, flip=flip, batch_size=batch_size, progress=progress)


class CachedFeatureDataset(Dataset):
    """Wrap a dataset of ``(image, label)`` to yield ``(image, label, features)`` from a feature cache.

    With ``flip=True`` each item is horizontally flipped with probability 1/2, decided by
    ``(seed, epoch, index)`` (call :meth:`set_epoch` each epoch), and its features come from the ``hflip``
    variant. ``features`` is a list of float32 [C, h, w] tensors (batched by the default collate).
    """

    def __init__(self, dataset: Dataset, cache: FeatureCache, *, flip: bool = False, seed: int = 0) -> None:
        if len(dataset) != cache.num_items:
            raise ValueError(f"dataset has {len(dataset)} items but the feature cache holds {cache.num_items}")
        variants = ["plain", "hflip"] if flip else ["plain"]
        if not cache.is_complete(variants):
            raise FileNotFoundError(f"feature cache {cache.directory} lacks the variants {variants}; build it with "
                                    f"flip={flip}")
        self.dataset, self.cache, self.flip, self.seed, self.epoch = dataset, cache, flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Change the flip draws (same epoch and seed -> same draws)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def flipped(self, index: int) -> bool:
        """Whether item ``index`` is flipped in the current epoch."""
        return self.flip and bool(np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any, list[torch.Tensor]]:
        image, label = self.dataset[index][:2]
        flipped = self.flipped(index)
        if flipped:
            image = image.flip(-1)
        return image, label, self.cache.read(index, flipped)
