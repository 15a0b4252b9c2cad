"""In-memory (or memory-mapped) image arrays: the dataset type every loader converts into."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from vfmtok.images import resize_uint8

D = TypeVar("D", bound="DeterministicSubsets")


class DeterministicSubsets:
    """``head``, ``random_subset`` and ``first_per_class`` for a dataset with ``subset(indices, tag)``,
    ``labels``, ``classes`` and ``source``: the same draws for in-memory and lazily read images."""

    def head(self: D, n: int) -> D:
        """The first ``n`` images."""
        self._check_n(n)
        return self.subset(np.arange(n), f":{n}")

    def random_subset(self: D, n: int, seed: int) -> D:
        """``n`` images drawn without replacement by a seeded permutation (sorted back into dataset order)."""
        self._check_n(n)
        perm = np.random.default_rng(seed).permutation(len(self))[:n]
        return self.subset(np.sort(perm), f"random{n},seed{seed}")

    def first_per_class(self: D, n: int) -> D:
        """The first ``n`` images of every class, in dataset order."""
        labels = self.labels
        picks = [np.flatnonzero(labels == c)[:n] for c in range(len(self.classes))]
        short = [self.classes[c] for c, p in enumerate(picks) if len(p) < n]
        if short:
            raise ValueError(f"{self.source}: fewer than {n} images in class(es) {short}")
        return self.subset(np.sort(np.concatenate(picks)), f"first{n}perclass")

    def _check_n(self, n: int) -> None:
        if not 0 < n <= len(self):
            raise ValueError(f"{self.source}: asked for {n} images, the dataset has {len(self)}")


class ArrayDataset(DeterministicSubsets, Dataset):
    """Images uint8 [N, 3, H, W] with int64 labels; items are ``(uint8 [3, H, W] tensor, int label)``.

    ``ds[i]`` is one item; ``ds[a:b]`` is an :class:`ArrayDataset` and, unlike Python slicing, raises
    IndexError when ``b`` lies beyond the end (so ``official[:20000]`` cannot silently return fewer images).

    Args:
        images: uint8 array [N, 3, H, W] (numpy, possibly memory-mapped, or a tensor).
        labels: int array [N].
        classes: class names (``labels`` index into it).
        source: a short description of where the images came from (for error messages and records).
        names: optional file name of every image (e.g. ``airplane/0000.jpg``), carried through subsets.

    ``skipped`` lists the files a reader left out because they did not decode (only with an explicit
    ``skip_bad=True``; empty otherwise), carried through subsets so records can state it.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | Sequence[int],
                 classes: Sequence[str], source: str = "array", names: Sequence[str] | None = None) -> None:
        images = images.numpy() if isinstance(images, torch.Tensor) else images
        labels = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            got = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
            raise ValueError(f"{source}: expected uint8 images [N, 3, H, W], got {got}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{source}: {images.shape[0]} images but labels of shape {labels.shape}")
        if len(images) == 0:
            raise ValueError(f"{source}: the dataset is empty")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"{source}: labels must lie in [0, {len(classes)}) for classes {list(classes)[:10]}")
        if names is not None and len(names) != len(labels):
            raise ValueError(f"{source}: {len(labels)} images but {len(names)} names")
        self.images, self.labels, self.classes, self.source = images, labels, list(classes), source
        self.names = list(names) if names is not None else None
        self.skipped: list[str] = []
        self._fingerprint: str | None = None

    def to_arrays(self) -> ArrayDataset:
        """This dataset (the in-memory form of every dataset type)."""
        return self

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int | slice) -> tuple[torch.Tensor, int] | ArrayDataset:
        if isinstance(i, slice):
            start, stop, step = i.start, i.stop, i.step
            if (stop is not None and stop > len(self)) or (start is not None and start > len(self)):
                tag = f"{'' if start is None else start}:{'' if stop is None else stop}"
                raise IndexError(f"{self.source}: slice [{tag}] reaches beyond its {len(self)} images")
            tag = f"{'' if start is None else start}:{'' if stop is None else stop}" + (
                "" if step in (None, 1) else f":{step}")
            return self.subset(np.arange(len(self))[i], tag)
        return torch.from_numpy(np.array(self.images[i])), int(self.labels[i])  # a copy: memmaps are read-only

    def __repr__(self) -> str:
        return f"ArrayDataset({self.source}, n={len(self)}, size={self.image_size}, classes={len(self.classes)})"

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images uint8 [N, 3, H, W] and labels int64 [N] as tensors (copied into memory)."""
        return torch.from_numpy(np.array(self.images)), torch.from_numpy(self.labels.copy())

    def fingerprint(self) -> str:
        """sha256 of the pixels, labels and class names: the content key of derived caches."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(str((tuple(self.images.shape), self.classes)).encode())
            for start in range(0, len(self), 4096):
                h.update(np.ascontiguousarray(self.images[start:start + 4096]).tobytes())
            h.update(self.labels.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ------------------------------------------------------------------ deterministic subsets
    def subset(self, indices: Sequence[int] | np.ndarray, tag: str = "subset") -> ArrayDataset:
        """The images at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError(f"{self.source}: subset [{tag}] selects no images")
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"{self.source}: subset indices outside [0, {len(self)})")
        names = [self.names[j] for j in idx] if self.names is not None else None
        out = ArrayDataset(self.images[idx], self.labels[idx], self.classes, f"{self.source}[{tag}]", names)
        out.skipped = list(self.skipped)
        return out


def at_size(ds: DeterministicSubsets, size: int) -> ArrayDataset:
    """``ds`` in memory at ``size`` x ``size`` (the ADM centre-crop resize policy) when it differs; a lazily read
    dataset (:mod:`vfmtok.data.stream`) is decoded into memory here, so use it for small sets only."""
    arrays = ds.to_arrays()
    if arrays.image_size == (size, size):
        return arrays
    images = resize_uint8(torch.from_numpy(np.ascontiguousarray(arrays.images)), size)
    return ArrayDataset(images, arrays.labels, arrays.classes, f"{arrays.source}@{size}px")
