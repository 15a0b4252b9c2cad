"""Named datasets for the harness: CIFAR-10 (our tar copy or torchvision's), Kodak, folders, archives, npz.

Every dataset yields ``(uint8 [3, H, W] tensor, int label)`` and has ``classes`` and ``fingerprint()``.
Small folders and archives are decoded once into the array cache (:mod:`vfmtok.data.cache`) and memory-mapped
after. A source whose decoded pixels would exceed :data:`ARRAY_CACHE_LIMIT_BYTES` is not decoded into one array:
it is served as a lazily decoded :class:`vfmtok.data.stream.LazyImages` (same items, same order, same subsets).
Known data sets have their image counts checked (:func:`check_expected_count`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vfmtok.assets import data_root
from vfmtok.data.arrays import ArrayDataset
from vfmtok.data.cache import cached_arrays, source_identity
from vfmtok.data.readers import (
    ImageFileDataset,
    iter_tar_members,
    list_image_folder,
    list_loose_images,
    read_image_folder,
    read_image_tar,
    read_loose_images,
    read_npz,
    read_torchvision_cifar10,
    synthetic,
)
from vfmtok.data.stream import FolderImages, LazyImages, TarImages
from vfmtok.registry import Registry

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
OFFICIAL_TRAIN_COVERED = 10_000  # official_order.json covers train[:10000] (data_batch_1) and the whole test set

#: the decoded-array cache takes sources of at most this many bytes of decoded uint8 pixels (N * 3 * H * W);
#: 4 GiB holds CIFAR-10 (150 MB) or ~20,000 images of 256 px. Larger sources stream (decoded per image).
ARRAY_CACHE_LIMIT_BYTES = 4 << 30

#: image counts of the known data sets: (name, split) -> N
EXPECTED_COUNTS: dict[tuple[str, str], int] = {
    ("cifar10", "train"): 50_000, ("cifar10", "test"): 10_000,
    ("imagenet", "train"): 1_281_167, ("imagenet", "val"): 50_000,
}


def check_expected_count(name: str, split: str, n: int, *, skipped: int = 0) -> None:
    """Raise ValueError when a known data set (:data:`EXPECTED_COUNTS`) does not have its image count.

    ``n`` images were read and ``skipped`` were left out on request (``skip_bad``); together they must make the
    expected count. Unknown (name, split) pairs are not checked.
    """
    expected = EXPECTED_COUNTS.get((name.lower(), split))
    if expected is not None and n + skipped != expected:
        extra = f" and skipped {skipped}" if skipped else ""
        raise ValueError(f"{name}:{split} should hold {expected:,} images; read {n:,}{extra}. The copy is incomplete "
                         "or corrupt (or holds extra files)")


def _cached(path: Path, reader: Callable[..., ArrayDataset], size: int | None,
            skip_bad: bool = False) -> ArrayDataset:
    if skip_bad:  # the cache keeps no list of skipped files: decode afresh so ``skipped`` is always right
        return reader(path, size=size, skip_bad=True)
    ident = {"reader": reader.__name__, "size": size, "resize": "adm_center_crop" if size else None,
             **source_identity(path)}
    return cached_arrays(ident, lambda: reader(path, size=size))


def decoded_bytes(n: int, size: int | None, first: bytes | Path | None = None) -> int:
    """Bytes of ``n`` decoded uint8 RGB images of ``size`` x ``size`` (native size of ``first`` when None)."""
    if size is None:
        import io

        from PIL import Image

        if first is None:
            return 0
        try:
            with Image.open(io.BytesIO(first) if isinstance(first, bytes) else first) as img:
                w, h = img.size
        except Exception:  # noqa: BLE001 - undecodable: the reader reports it with the file name
            return 0
        return n * 3 * w * h
    return n * 3 * size * size


def _stream_or_cache(path: Path, reader: Callable[..., ArrayDataset], size: int | None, skip_bad: bool,
                     count: Callable[[], tuple[int, bytes | Path]],
                     lazy: Callable[[], LazyImages]) -> ArrayDataset | LazyImages:
    """The cached arrays when ``count()`` (number of images, first image) says they fit the limit, else ``lazy()``
    (which drops and lists undecodable images when ``skip_bad``)."""
    n, first = count()
    if decoded_bytes(n, size, first) <= ARRAY_CACHE_LIMIT_BYTES:
        return _cached(path, reader, size, skip_bad)
    ds = lazy()
    if skip_bad:
        ds._drop_undecodable()
    return ds


def _folder_count(path: Path, flat: bool) -> tuple[int, Path]:
    files = list_loose_images(path) if flat else list_image_folder(path)[0]
    return len(files), files[0]


def _tar_count(path: Path) -> tuple[int, bytes]:
    """Number of visible class-folder members and the first one's bytes (one pass over the headers)."""
    n, first = 0, b""
    for member, _ in iter_tar_members(path, read_data=False):
        parts = PurePosixPath(member.name).parts
        if len(parts) >= 2 and not any(p.startswith(".") for p in parts):
            n += 1
    if n:
        for member, data in iter_tar_members(path):  # stops at the first image: cheap
            parts = PurePosixPath(member.name).parts
            if len(parts) >= 2 and not any(p.startswith(".") for p in parts):
                first = data or b""
                break
    return n, first


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
    check_expected_count("cifar10", split, len(ds))
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
def image_folder(path: str | Path, size: int | None = None, skip_bad: bool = False) -> ArrayDataset | LazyImages:
    """An ImageFolder tree ``path/<class>/<image>``: decoded once into the array cache when its decoded pixels
    fit :data:`ARRAY_CACHE_LIMIT_BYTES`, else streamed (:class:`~vfmtok.data.stream.FolderImages`)."""
    path = Path(path)
    return _stream_or_cache(path, read_image_folder, size, skip_bad, lambda: _folder_count(path, False),
                            lambda: FolderImages(path, size))


@DATASETS.register("images")
def loose_images(path: str | Path, size: int | None = None, skip_bad: bool = False) -> ArrayDataset | LazyImages:
    """A flat folder of images (label 0): cached or streamed as :func:`image_folder`."""
    path = Path(path)
    return _stream_or_cache(path, read_loose_images, size, skip_bad, lambda: _folder_count(path, True),
                            lambda: FolderImages(path, size, flat=True))


@DATASETS.register("tar")
def image_tar(path: str | Path, size: int | None = None, skip_bad: bool = False) -> ArrayDataset | LazyImages:
    """A tar / tar.gz of an ImageFolder tree: cached or streamed as :func:`image_folder` (a large .tar.gz is
    decompressed once into the work cache, see :func:`vfmtok.data.stream.decompressed_tar`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"archive not found: {path}")
    return _stream_or_cache(path, read_image_tar, size, skip_bad, lambda: _tar_count(path),
                            lambda: TarImages(path, size))


DATASETS.register("npz", read_npz)
DATASETS.register("synthetic", synthetic)


@DATASETS.register("torchvision_cifar10")
def torchvision_cifar10(root: str | Path, split: str = "train", size: int | None = None) -> ArrayDataset:
    """torchvision's CIFAR-10 pickles under ``root`` (official order, lossless); never downloads."""
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    return read_torchvision_cifar10(root, train=split == "train", size=size)


def select(ds: ArrayDataset | LazyImages, *, head: int | None = None, random: int | None = None,
           per_class: int | None = None, seed: int = 0) -> ArrayDataset | LazyImages:
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
    if not isinstance(ds, (ArrayDataset, LazyImages)):
        raise TypeError(f"dataset {name!r} does not support subsets (it is a {type(ds).__name__})")
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
