"""Datasets yielding (uint8 [3, H, W] image, int label), deterministic subsets and the decoded-array cache."""

from vfmtok.data.arrays import ArrayDataset
from vfmtok.data.cache import cached_arrays, file_sha256, source_identity
from vfmtok.data.datasets import (
    DATASETS,
    build_dataset,
    cifar10,
    collate_uint8,
    dataset_summary,
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

__all__ = [
    "DATASETS", "ArrayDataset", "ImageFileDataset", "ImageReadError", "build_dataset", "cached_arrays", "cifar10",
    "collate_uint8", "dataset_summary", "decode_image", "file_sha256", "image_folder", "image_tar", "kodak",
    "loose_images", "make_loader", "official_order", "read_image_folder", "read_image_tar", "read_loose_images",
    "read_npz", "read_torchvision_cifar10", "select", "source_identity", "synthetic", "torchvision_cifar10",
]
