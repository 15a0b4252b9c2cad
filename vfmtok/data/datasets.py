"""Named datasets for the harness: CIFAR-10 (our tar copy or torchvision's), Kodak, folders, archives, npz."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vfmtok.assets import data_root
from vfmtok.data.arrays import ArrayDataset
from vfmtok.data.cache import cached_arrays, source_identity
from vfmtok.data.readers import (
    read_image_folder,
    read_image_tar,
    read_loose_images,
    read_npz,
    read_torchvision_cifar10,
    synthetic,
)
from vfmtok.registry import Registry

DATASETS: Registry[Callable[..., ArrayDataset]] = Registry("dataset")


def _cached(path: Path, reader: Callable[..., ArrayDataset], size: int | None) -> ArrayDataset:
    ident = {"reader": reader.__name__, "size": size, **source_identity(path)}
    return cached_arrays(ident, lambda: reader(path, size=size))


@DATASETS.register("cifar10")
def cifar10(split: str = "train", root: str | Path | None = None, order: str = "folder",
            size: int | None = None) -> ArrayDataset:
    """CIFAR-10 from ``<root>/cifar10/<split>.tar.gz`` (root defaults to ``VFMTOK_DATA``).

    ``order="folder"`` sorts by class then file number; ``order="official"`` rebuilds the official order
    from ``official_order.json`` (the whole test set; the first 10,000 training images).
    """
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    folder = Path(root) if root is not None else data_root()
    folder = folder / "cifar10" if (folder / "cifar10").is_dir() else folder
    ds = _cached(folder / f"{split}.tar.gz", read_image_tar, size)
    if order == "folder":
        return ds
    if order != "official":
        raise ValueError(f"order must be 'folder' or 'official', got {order!r}")
    table = json.loads((folder / "official_order.json").read_text())
    if table["classes"] != ds.classes:
        raise ValueError(f"class folders {ds.classes} differ from official_order.json classes {table['classes']}")
    wanted = np.asarray(table["train_first_10000" if split == "train" else "test"], dtype=np.int64)
    starts = np.searchsorted(ds.labels, np.arange(len(ds.classes)))  # folder order: class-major, file-sorted
    rank = np.zeros_like(wanted)
    for c in range(len(ds.classes)):  # k-th occurrence of class c in official order is file k of class c
        rank[wanted == c] = np.arange(int((wanted == c).sum()))
    out = ds.subset(starts[wanted] + rank, "official")
    out.source = f"cifar10:{split}(official order)"
    return out


@DATASETS.register("kodak")
def kodak(root: str | Path | None = None, size: int | None = 512) -> ArrayDataset:
    """The 24 Kodak photos, centre-cropped to ``size`` x ``size`` (their short side is 512; landscape and
    portrait photos mix, so ``size=None`` fails: they cannot be stacked at their own sizes)."""
    folder = Path(root) if root is not None else data_root()
    folder = folder / "kodak" if (folder / "kodak").is_dir() else folder
    return _cached(folder, read_loose_images, size)


@DATASETS.register("folder")
def image_folder(path: str | Path, size: int | None = None) -> ArrayDataset:
    """An ImageFolder tree ``path/<class>/<image>``."""
    return _cached(Path(path), read_image_folder, size)


@DATASETS.register("images")
def loose_images(path: str | Path, size: int | None = None) -> ArrayDataset:
    """A flat folder of images (label 0)."""
    return _cached(Path(path), read_loose_images, size)


@DATASETS.register("tar")
def image_tar(path: str | Path, size: int | None = None) -> ArrayDataset:
    """A tar / tar.gz of an ImageFolder tree."""
    return _cached(Path(path), read_image_tar, size)


DATASETS.register("npz", read_npz)
DATASETS.register("synthetic", synthetic)


@DATASETS.register("torchvision_cifar10")
def torchvision_cifar10(root: str | Path, split: str = "train") -> ArrayDataset:
    """torchvision's CIFAR-10 pickles under ``root`` (official order, lossless)."""
    return read_torchvision_cifar10(root, train=split == "train")


def build_dataset(name: str, **kwargs: Any) -> ArrayDataset:
    """Build a registered dataset by name (``cifar10``, ``kodak``, ``folder``, ``images``, ``tar``, ``npz``, ...)."""
    return DATASETS.get(name)(**kwargs)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0) -> DataLoader:
    """A DataLoader collating to (uint8 [B, 3, H, W], int64 [B]); shuffling is seeded."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                      num_workers=num_workers)
