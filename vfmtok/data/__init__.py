"""Datasets yielding (uint8 [3, H, W] image, int label), deterministic subsets and the decoded-array cache."""

from vfmtok.data.arrays import ArrayDataset
from vfmtok.data.datasets import DATASETS, build_dataset, cifar10, kodak, make_loader
from vfmtok.data.readers import ImageReadError, synthetic

__all__ = ["DATASETS", "ArrayDataset", "ImageReadError", "build_dataset", "cifar10", "kodak", "make_loader",
           "synthetic"]
