"""Datasets yielding (uint8 [3, H, W] image, int label), deterministic subsets, the decoded-array cache for small
sets and lazily decoded streams (:mod:`vfmtok.data.stream`) for everything else."""

from vfmtok.data.arrays import ArrayDataset
from vfmtok.data.cache import cached_arrays, source_identity
from vfmtok.data.datasets import (
    ARRAY_CACHE_LIMIT_BYTES,
    DATASETS,
    EXPECTED_COUNTS,
    build_dataset,
    check_expected_count,
    cifar10,
    collate_uint8,
    image_folder,
    image_tar,
    kodak,
    loose_images,
    make_loader,
    official_order,
    select,
    torchvision_cifar10,
)
from vfmtok.data.readers import (
    ImageFileDataset,
    ImageReadError,
    decode_image,
    read_image_folder,
    read_image_tar,
    read_loose_images,
    read_npz,
    read_torchvision_cifar10,
    synthetic,
)
from vfmtok.data.sources import image_loader, open_images
from vfmtok.data.stream import FolderImages, LazyImages, NpzImages, TarImages

__all__ = [
    "ARRAY_CACHE_LIMIT_BYTES", "ArrayDataset", "DATASETS", "EXPECTED_COUNTS", "FolderImages", "ImageFileDataset",
    "ImageReadError", "LazyImages", "NpzImages", "TarImages", "build_dataset", "cached_arrays",
    "check_expected_count", "cifar10", "collate_uint8", "decode_image",
    "image_folder", "image_loader", "image_tar", "kodak", "loose_images", "make_loader", "official_order",
    "open_images", "read_image_folder", "read_image_tar", "read_loose_images", "read_npz", "read_torchvision_cifar10",
    "select", "source_identity", "synthetic", "torchvision_cifar10",
]
