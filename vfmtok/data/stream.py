"""Lazily decoded image sets: folders, tar archives and ADM npz files read one image at a time.

No path here holds a whole split in memory: a dataset keeps only its index (file names or archive offsets and
labels); ``ds[i]`` reads and decodes one image and, with ``size=S``, applies ADM's centre crop
(:func:`vfmtok.images.center_crop_arr`). :func:`vfmtok.data.sources.image_loader` runs that work in DataLoader
worker processes; :func:`vfmtok.data.sources.open_images` picks the dataset type for a path or a known name.

Folders and archives follow the policies of :mod:`vfmtok.data.readers` (conversion, order, bad files). Decode
errors happen where the image is read; ``skip_bad=True`` instead decodes every image once when the dataset is
opened, drops the undecodable ones and lists them in ``ds.skipped``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vfmtok.assets import file_sha256, work_cache_dir
from vfmtok.data.arrays import ArrayDataset, DeterministicSubsets
from vfmtok.data.readers import (
    ImageReadError,
    _class_members,
    decode_image,
    iter_tar_members,
    list_image_folder,
    list_loose_images,
)
from vfmtok.fileio import atomic_write, sha256_json
from vfmtok.images import center_crop_arr, pil_to_uint8

#: files up to this size are identified by their sha256 in fingerprints; larger ones by (name, size, mtime)
HASH_LIMIT_BYTES = 1 << 30


class LazyImages(DeterministicSubsets, Dataset):
    """Images read and decoded one at a time; items are ``(uint8 [3, S, S] tensor, int label)``.

    Subclasses implement :meth:`_payload` (the bytes, path or HWC array of stored image ``j``). ``index`` maps
    item ``i`` to stored image ``index[i]`` (subsets share the storage). Attributes: ``classes``, ``source``,
    ``names``, ``labels`` (of the items), ``size`` and ``skipped``.
    """

    def __init__(self, names: Sequence[str], labels: Sequence[int], classes: Sequence[str], size: int | None,
                 source: str, identity: dict[str, Any] | None) -> None:
        if not names:
            raise ValueError(f"{source}: the dataset is empty")
        self._names, self._labels = list(names), np.asarray(labels, dtype=np.int64)
        self.classes, self.size, self.source, self.identity = list(classes), size, source, identity
        self.index = np.arange(len(self._names), dtype=np.int64)
        self.skipped: list[str] = []
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ storage access (subclasses)
    def _payload(self, j: int) -> bytes | Path | np.ndarray:
        raise NotImplementedError

    def _source_identity(self) -> dict[str, Any]:
        """The source's identity when it was not given up front (computed at the first :meth:`fingerprint`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ dataset protocol
    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.index[i])
        return self._decode(j), int(self._labels[j])

    def _decode(self, j: int) -> torch.Tensor:
        data = self._payload(j)
        if isinstance(data, np.ndarray):  # HWC uint8 from an npz
            if self.size is not None and data.shape[:2] != (self.size, self.size):
                return pil_to_uint8(center_crop_arr(Image.fromarray(np.ascontiguousarray(data)), self.size))
            return torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1)))
        return decode_image(data, f"{self.source}:{self._names[j]}", self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source}, n={len(self)}, size={self.size}, classes={len(self.classes)})"

    @property
    def names(self) -> list[str]:
        """File (member) name of every item."""
        return [self._names[j] for j in self.index]

    @property
    def labels(self) -> np.ndarray:
        """int64 [N] labels of the items."""
        return self._labels[self.index]

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """sha256 of the source's identity (content hash of files up to 1 GiB, else name/size/mtime; a folder's
        listing), the resize policy and the items' names and labels. Cheap: no image is decoded."""
        if self._fingerprint is None:
            if self.identity is None:
                self.identity = self._source_identity()
            h = hashlib.sha256(sha256_json({"source": self.identity, "size": self.size,
                                            "classes": self.classes}).encode())
            for j in self.index:
                h.update(f"{self._names[j]}:{self._labels[j]}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ------------------------------------------------------------------ subsets (same rules as ArrayDataset)
    def subset(self, indices: Sequence[int] | np.ndarray, tag: str = "subset") -> LazyImages:
        """The items at ``indices`` (in that order), sharing this dataset's storage."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError(f"{self.source}: subset [{tag}] selects no images")
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"{self.source}: subset indices outside [0, {len(self)})")
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.index, out.source, out._fingerprint = self.index[idx], f"{self.source}[{tag}]", None
        out.skipped = list(self.skipped)
        return out

    def to_arrays(self) -> ArrayDataset:
        """Every item decoded into an in-memory :class:`ArrayDataset` (for small sets only)."""
        if self.size is None:
            raise ValueError(f"{self.source}: to stack the images give size=... (they may differ in size)")
        images = np.empty((len(self), 3, self.size, self.size), dtype=np.uint8)
        for i in range(len(self)):
            images[i] = self[i][0].numpy()
        out = ArrayDataset(images, self.labels, self.classes, self.source, self.names)
        out.skipped = list(self.skipped)
        return out

    def _drop_undecodable(self) -> None:
        """Decode every stored image once; drop those that fail and name them in ``skipped``."""
        keep = []
        for j in self.index:
            try:
                self._decode(int(j))
                keep.append(j)
            except ImageReadError:
                self.skipped.append(self._names[j])
        if not keep:
            raise ValueError(f"{self.source}: none of its {len(self.index)} images decodes")
        self.index = np.asarray(keep, dtype=np.int64)


# --------------------------------------------------------------------------------------------- folders
def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    if st.st_size <= HASH_LIMIT_BYTES:
        return {"file": path.name, "sha256": file_sha256(path)}
    return {"file": path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "identity": "stat"}


def _folder_identity(root: Path, files: Sequence[Path]) -> dict[str, Any]:
    listing = []
    for f in files:
        st = f.stat()
        listing.append((f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return {"folder": root.resolve().name, "listing_sha256": sha256_json(listing)}


class FolderImages(LazyImages):
    """An ImageFolder tree ``root/<class>/<image>`` (``flat=False``) or a flat folder of images (label 0)."""

    def __init__(self, root: str | Path, size: int | None = None, *, flat: bool = False,
                 skip_bad: bool = False) -> None:
        root = Path(root)
        if flat:
            files, labels, classes = list_loose_images(root), None, ["image"]
            names = [f.name for f in files]
            labels = [0] * len(files)
        else:
            files, labels, classes = list_image_folder(root)
            names = [f"{f.parent.name}/{f.name}" for f in files]
        super().__init__(names, labels, classes, size, str(root), None)  # the listing is stat'ed on demand
        self.root, self.files = root, files
        if skip_bad:
            self._drop_undecodable()

    def _payload(self, j: int) -> Path:
        return self.files[j]

    def _source_identity(self) -> dict[str, Any]:
        return _folder_identity(self.root, self.files)


# --------------------------------------------------------------------------------------------- tar
def _tar_index(path: Path) -> list[tuple[str, int, int]]:
    """(member name, data offset, size) of every regular file, read from the headers once (archive checked to its
    end, see :func:`vfmtok.data.readers.iter_tar_members`)."""
    return [(m.name, m.offset_data, m.size) for m, _ in iter_tar_members(path, read_data=False)]


def decompressed_tar(path: str | Path) -> Path:
    """The uncompressed copy of a ``.tar.gz`` in ``work_cache_dir("tars")`` (made once, atomically; the gzip
    CRC and length are checked, so a corrupt archive raises naming it and nothing is cached)."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"archive not found: {path}")
    out = work_cache_dir("tars") / f"{file_sha256(path)[:32]}.tar"
    if out.is_file():
        return out

    def write(tmp: Path) -> None:
        try:
            with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: the gzip stream is corrupt or truncated: {e}") from e

    return atomic_write(out, write)


class TarImages(LazyImages):
    """A tar (or tar.gz, see :func:`decompressed_tar`) of an ImageFolder tree, read by seek in each worker."""

    def __init__(self, path: str | Path, size: int | None = None, *, skip_bad: bool = False) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"archive not found: {path}")
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        raw = decompressed_tar(path) if gz else path
        members = _class_members(path, ((name, (offset, size_)) for name, offset, size_ in _tar_index(raw)))
        classes = sorted({c for c, _, _ in members})
        label = {c: i for i, c in enumerate(classes)}
        super().__init__([f"{c}/{n}" for c, n, _ in members], [label[c] for c, _, _ in members], classes, size,
                         str(path), _file_identity(path))
        self.raw = raw
        self.offsets = np.asarray([p[0] for _, _, p in members], dtype=np.int64)
        self.sizes = np.asarray([p[1] for _, _, p in members], dtype=np.int64)
        self._fh: Any = None
        self._pid = -1
        if skip_bad:
            self._drop_undecodable()

    def _payload(self, j: int) -> bytes:
        if self._fh is None or self._pid != os.getpid():  # one handle per (worker) process
            self._fh, self._pid = open(self.raw, "rb"), os.getpid()  # noqa: SIM115 - kept open across reads
        self._fh.seek(int(self.offsets[j]))
        data = self._fh.read(int(self.sizes[j]))
        if len(data) != self.sizes[j]:
            raise ValueError(f"{self.source}: {self._names[j]} is cut short ({len(data)} of {self.sizes[j]} bytes)")
        return data

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fh"], state["_pid"] = None, -1
        return state

    def subset(self, indices: Sequence[int] | np.ndarray, tag: str = "subset") -> TarImages:
        out = super().subset(indices, tag)
        out._fh, out._pid = None, -1  # type: ignore[attr-defined]
        return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- npz
def npz_member_memmap(path: str | Path, member: str = "arr_0") -> np.ndarray:
    """Memory-map ``member`` of an uncompressed npz (what ``np.savez`` writes) without reading it."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable npz file: {e}") from e
    with zf:
        names = {n.removesuffix(".npy"): n for n in zf.namelist()}
        if member not in names:
            raise KeyError(f"{path}: no {member!r} array (the ADM batch format stores images NHWC uint8 in "
                           f"'arr_0'); found {sorted(names)}")
        info = zf.getinfo(names[member])
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: {member} is compressed (np.savez_compressed); it cannot be memory-mapped. "
                         "Re-save the file with np.savez (uncompressed) to stream it")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: corrupt zip member header for {member}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if fortran or dtype.hasobject:
        raise ValueError(f"{path}: {member} is a Fortran-order or object array; expected a plain C array")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


class NpzImages(LazyImages):
    """An ADM batch file: ``arr_0`` uint8 [N, H, W, 3] memory-mapped; labels from ``arr_1`` / ``labels`` (else 0)."""

    def __init__(self, path: str | Path, size: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"npz file not found: {path}")
        images = npz_member_memmap(path, "arr_0")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{path}: arr_0 must be uint8 images [N, H, W, 3] (the ADM batch format), got "
                             f"{images.dtype} {images.shape}")
        with np.load(path) as f:
            key = "arr_1" if "arr_1" in f.files else "labels" if "labels" in f.files else None
            labels = f[key] if key else np.zeros(len(images), np.int64)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or \
                (len(labels) and labels.min() < 0):
            raise ValueError(f"{path}: labels must be non-negative integers [{len(images)}], got {labels.dtype} "
                             f"{labels.shape}")
        n_classes = int(labels.max()) + 1 if len(labels) else 1
        super().__init__([f"{i:06d}" for i in range(len(images))], labels, [str(c) for c in range(n_classes)],
                         size, str(path), _file_identity(path))
        self.images = images

    def _payload(self, j: int) -> np.ndarray:
        return np.asarray(self.images[j])
