"""Named datasets for the harness: CIFAR-10 (our tar copy or torchvision's), Kodak, folders, archives, npz.

Every dataset yields ``(uint8 [3, H, W] tensor, int label)`` and has ``classes`` and ``fingerprint()``.
Folders and archives are decoded once into the array cache (:mod:`vfmtok.data.cache`) and memory-mapped after.
"""

from __future__ import annotations

import json
from collections import defaultdict
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
    ImageFileDataset,
    list_loose_images,
    read_image_folder,
    read_image_tar,
    read_loose_images,
    read_npz,
    read_torchvision_cifar10,
    synthetic,
)
from vfmtok.registry import Registry

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
OFFICIAL_TRAIN_COVERED = 10_000  # official_order.json covers train[:10000] (data_batch_1) and the whole test set


def _cached(path: Path, reader: Callable[..., ArrayDataset], size: int | None) -> ArrayDataset:
    ident = {"reader": reader.__name__, "size": size, "resize": "adm_center_crop" if size else None,
             **source_identity(path)}
    return cached_arrays(ident, lambda: reader(path, size=size))


def _sub_root(root: str | Path | None, name: str) -> Path:
    folder = Path(root) if root is not None else data_root()
    return folder / name if (folder / name).is_dir() else folder


@DATASETS.register("cifar10")
def cifar10(split: str = "train", root: str | Path | None = None, order: str = "folder",
            size: int | None = None) -> ArrayDataset:
    """CIFAR-10 from ``<root>/cifar10/<split>.tar.gz`` (``root`` defaults to ``VFMTOK_DATA``).

    ``order="folder"``: class-major, file-sorted (50,000 train / 10,000 test). ``order="official"``: the
    official CIFAR-10 order rebuilt from ``official_order.json`` (file NNNN is the NNNN-th image of its class
    in that order): the whole test set, and only the first 10,000 training images -- slicing beyond them raises.
    """
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    if order not in ("folder", "official"):
        raise ValueError(f"CIFAR-10 order must be 'folder' or 'official', got {order!r}")
    folder = _sub_root(root, "cifar10")
    ds = _cached(folder / f"{split}.tar.gz", read_image_tar, size)
    if order == "folder":
        ds.source = f"cifar10:{split}"
        return ds
    out = official_order(ds, folder / "official_order.json", split)
    out.source = (f"cifar10:{split} (official order" + (
        "; official_order.json covers train[:10000] only)" if split == "train" else ")"))
    return out


def official_order(ds: ArrayDataset, table_path: str | Path, split: str) -> ArrayDataset:
    """Reorder a folder-ordered CIFAR-10 split by the label sequence in ``official_order.json``."""
    table_path = Path(table_path)
    if not table_path.is_file():
        raise FileNotFoundError(f"official order table not found: {table_path}")
    table = json.loads(table_path.read_text())
    key = "train_first_10000" if split == "train" else "test"
    if key not in table or "classes" not in table:
        raise KeyError(f"{table_path}: expected keys 'classes' and {key!r}, found {sorted(table)}")
    if table["classes"] != ds.classes:
        raise ValueError(f"{ds.source}: class folders {ds.classes} differ from {table_path} classes {table['classes']}")
    if ds.names is None:
        raise ValueError(f"{ds.source}: file names are needed to rebuild the official order")
    by_name: dict[tuple[int, int], int] = {}
    for i, (name, label) in enumerate(zip(ds.names, ds.labels)):
        stem = Path(name).stem
        if stem.isdigit():
            by_name[(int(label), int(stem))] = i
    seen: dict[int, int] = defaultdict(int)
    indices = []
    for label in table[key]:
        k = seen[label]
        seen[label] += 1
        if (label, k) not in by_name:
            raise ValueError(f"{ds.source}: the official order needs {ds.classes[label]}/{k:04d}.*, which is missing")
        indices.append(by_name[(label, k)])
    return ds.subset(indices, "official")


@DATASETS.register("kodak")
def kodak(root: str | Path | None = None, size: int | None = None) -> ArrayDataset | ImageFileDataset:
    """The 24 Kodak photos from ``<root>/kodak/`` (label 0).

    ``size=None``: a lazily decoded :class:`ImageFileDataset` at native size (768x512, six portrait 512x768),
    which cannot be batched as is; ``size=S``: a cached :class:`ArrayDataset` centre-cropped to S x S.
    """
    folder = _sub_root(root, "kodak")
    if size is None:
        files = list_loose_images(folder)
        return ImageFileDataset(files, [0] * len(files), ["image"], None, str(folder))
    return _cached(folder, read_loose_images, size)


@DATASETS.register("folder")
def image_folder(path: str | Path, size: int | None = None) -> ArrayDataset:
    """An ImageFolder tree ``path/<class>/<image>``, decoded once into the array cache."""
    return _cached(Path(path), read_image_folder, size)


@DATASETS.register("images")
def loose_images(path: str | Path, size: int | None = None) -> ArrayDataset:
    """A flat folder of images (label 0), decoded once into the array cache."""
    return _cached(Path(path), read_loose_images, size)


@DATASETS.register("tar")
def image_tar(path: str | Path, size: int | None = None) -> ArrayDataset:
    """A tar / tar.gz of an ImageFolder tree, decoded once into the array cache."""
    return _cached(Path(path), read_image_tar, size)


DATASETS.register("npz", read_npz)
DATASETS.register("synthetic", synthetic)


@DATASETS.register("torchvision_cifar10")
def torchvision_cifar10(root: str | Path, split: str = "train", size: int | None = None) -> ArrayDataset:
    """torchvision's CIFAR-10 pickles under ``root`` (official order, lossless); never downloads."""
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    return read_torchvision_cifar10(root, train=split == "train", size=size)


def select(ds: ArrayDataset, *, head: int | None = None, random: int | None = None, per_class: int | None = None,
           seed: int = 0) -> ArrayDataset:
    """A deterministic subset: the first ``head`` images, then ``per_class`` first images of every class, then
    ``random`` images drawn with ``seed`` (each step optional, applied in that order)."""
    if head is not None:
        ds = ds.head(head)
    if per_class is not None:
        ds = ds.first_per_class(per_class)
    if random is not None:
        ds = ds.random_subset(random, seed)
    return ds


def build_dataset(name: str, *, head: int | None = None, random: int | None = None, per_class: int | None = None,
                  subset_seed: int = 0, **kwargs: Any) -> Dataset:
    """Build a registered dataset by name (see ``DATASETS.list()``) with its keyword arguments, then
    optionally take a deterministic subset (:func:`select`, ``random`` drawn with ``subset_seed``), e.g.
    ``build_dataset("cifar10", split="test", order="official", head=5000)``."""
    ds = DATASETS.get(name)(**kwargs)
    if head is None and random is None and per_class is None:
        return ds
    if not isinstance(ds, ArrayDataset):
        raise TypeError(f"dataset {name!r} is not an ArrayDataset; subsets need a fixed size (pass size=...)")
    return select(ds, head=head, random=random, per_class=per_class, seed=subset_seed)


def collate_uint8(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items into (uint8 [B, 3, H, W], int64 [B]); images of different sizes are an error."""
    shapes = {tuple(im.shape) for im, _ in batch}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch images of different sizes {sorted(shapes)}; build the dataset with size=... "
                         "or use batch_size=1")
    images = torch.stack([im for im, _ in batch])
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images, torch.tensor([int(y) for _, y in batch], dtype=torch.int64)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader yielding (uint8 [B, 3, H, W], int64 [B]); the order depends only on ``seed`` when shuffling."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                      drop_last=drop_last, num_workers=num_workers, collate_fn=collate_uint8)


def dataset_summary(ds: Dataset) -> dict[str, Any]:
    """Size, classes, source and fingerprint of a dataset: what a results record stores about its data."""
    out: dict[str, Any] = {"n": len(ds), "classes": list(ds.classes), "source": getattr(ds, "source", "?"),
                           "fingerprint": ds.fingerprint()}
    if isinstance(ds, ArrayDataset):
        out["image_size"] = list(ds.image_size)
        out["label_counts"] = np.bincount(ds.labels, minlength=len(ds.classes)).tolist()
    return out
