"""Open any image source by path or name, and load it in batches with decoding in worker processes.

Sources of :func:`open_images`:

* an ImageFolder tree ``root/<class>/<image>`` or a flat folder of images (label 0, class ``"image"``);
* an uncompressed ``.tar`` of an ImageFolder tree: member offsets are indexed once (headers only), then every
  worker reads its images by seek;
* a ``.tar.gz`` / ``.tgz``: gzip has no random access, so the archive is decompressed once, with its CRC and end
  checked, into ``work_cache_dir("tars")`` (keyed by the archive's sha256; it needs the uncompressed size on
  disk) and then read like a ``.tar``. Small archives (CIFAR-10) go through the decoded-array cache instead;
* an ADM ``.npz`` batch: ``arr_0`` (uint8 [N, H, W, 3]) is memory-mapped straight from the stored zip member
  (``np.savez`` stores uncompressed); labels from ``arr_1`` (or ``labels``);
* a known name, with the grammar ``NAME[:SPLIT]``: ``cifar10:train`` / ``cifar10:test`` (the tar copies under
  ``VFMTOK_DATA/cifar10``), ``imagenet:train`` / ``imagenet:val`` (``VFMTOK_DATA/imagenet/<split>`` as a folder
  or ``<split>.tar``, its image count checked), ``kodak``.

Small sets come back as a memory-mapped :class:`~vfmtok.data.arrays.ArrayDataset` from the decoded-array cache;
everything else is a lazily decoded dataset of :mod:`vfmtok.data.stream`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vfmtok.assets import data_root
from vfmtok.data.datasets import check_expected_count, cifar10, collate_uint8, kodak
from vfmtok.data.stream import FolderImages, LazyImages, NpzImages, TarImages

KNOWN = ("cifar10", "imagenet", "kodak")


def _known(name: str, split: str | None, size: int | None, skip_bad: bool) -> Dataset:
    if name == "cifar10":
        return cifar10(split or "test", size=size)
    if name == "kodak":
        return kodak(size=size)
    if split not in ("train", "val"):
        raise ValueError(f"imagenet needs a split 'train' or 'val' (e.g. imagenet:val), got {split!r}")
    root = data_root() / "imagenet"
    folder, tar = root / split, root / f"{split}.tar"
    if folder.is_dir():
        ds: LazyImages = FolderImages(folder, size, skip_bad=skip_bad)
    elif tar.is_file():
        ds = TarImages(tar, size, skip_bad=skip_bad)
    else:
        raise FileNotFoundError(f"imagenet:{split}: expected an ImageFolder tree {folder} or an archive {tar}")
    ds.source = f"imagenet:{split} ({ds.source})"
    check_expected_count("imagenet", split, len(ds), skipped=len(ds.skipped))
    return ds


def open_images(src: str | Path, *, size: int | None, split: str | None = None, skip_bad: bool = False) -> Dataset:
    """Open an image source lazily (see the module docstring for the sources and the ``NAME[:SPLIT]`` grammar).

    ``size``: centre-crop every image to ``size`` x ``size`` (ADM policy); None keeps native sizes (a batch then
    needs images of one size). ``split`` is used for a bare known name (``"cifar10"`` with ``split="test"``).
    Small sets may come back as a memory-mapped :class:`ArrayDataset` from the decoded-array cache (see
    :data:`vfmtok.data.datasets.ARRAY_CACHE_LIMIT_BYTES`); everything else is a :class:`LazyImages`.
    """
    text = str(src)
    path = Path(text).expanduser()
    if not path.exists():
        name, _, part = text.partition(":")
        if name in KNOWN and "/" not in text:
            if part and split and part != split:
                raise ValueError(f"{text}: the split {part!r} contradicts split={split!r}")
            return _known(name, part or split, size, skip_bad)
        raise FileNotFoundError(f"image source not found: {text} (expected a folder, a .tar/.tar.gz, an .npz, or "
                                f"one of {', '.join(KNOWN)} with an optional :SPLIT, e.g. cifar10:test)")
    if path.is_dir():
        flat = any(p.is_file() and not p.name.startswith(".") for p in path.iterdir())
        return FolderImages(path, size, flat=flat, skip_bad=skip_bad)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".npz":
        if skip_bad:
            raise ValueError(f"{path}: skip_bad applies to image files; an npz holds decoded arrays")
        return NpzImages(path, size)
    if path.suffix.lower() in (".tar", ".tgz") or suffixes == ".tar.gz":
        return TarImages(path, size, skip_bad=skip_bad)
    raise ValueError(f"{path}: unknown image source type (expected a folder, .tar, .tar.gz, .tgz or .npz)")


def image_loader(ds: Dataset, batch_size: int, *, workers: int = 0, device: str | torch.device = "cpu",
                 indices: Sequence[int] | range | None = None) -> DataLoader:
    """A DataLoader over ``ds`` (or its items ``indices``, in that order) yielding ``(uint8 [B, 3, S, S], int64
    [B])``; decoding and the centre crop run in ``workers`` processes; pinned memory when ``device`` is CUDA."""
    if batch_size <= 0 or workers < 0:
        raise ValueError(f"need batch_size > 0 and workers >= 0, got {batch_size} and {workers}")
    data = ds if indices is None else Subset(ds, list(indices))
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_uint8,
                      pin_memory=torch.device(device).type == "cuda", persistent_workers=False,
                      prefetch_factor=4 if workers else None)
