"""Image sources for metrics: everything becomes a stream of uint8 [B, 3, H, W] batches.

Accepted sources:

* a uint8 tensor [N, 3, H, W];
* a uint8 numpy array, ADM/NHWC [N, H, W, 3] (or NCHW [N, 3, H, W]);
* a path to an ADM ``.npz`` batch (``arr_0``, uint8 NHWC; memory-mapped, or streamed when compressed, never
  loaded whole) or to an image folder (flat, or an ImageFolder tree
  ``<class>/<image>``; files sorted by name, decoded with the data layer's conversion policy);
* a map-style dataset whose items are ``(uint8 [3, H, W], label)`` or bare ``uint8 [3, H, W]`` images;
* any other iterable (a DataLoader, a generator) of uint8 batches ``[B, 3, H, W]`` or ``(batch, labels)`` pairs.

Images of different sizes are batched separately (consecutive images of one size share a batch).
:func:`content_hash` hashes the pixels independently of batching and of the source type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vfmtok.data.arrays import ArrayDataset
from vfmtok.data.readers import ImageFileDataset, list_image_folder, list_loose_images

ImageSource = torch.Tensor | np.ndarray | str | Path | Dataset | Iterable[Any]
HASH_VERSION = b"vfmtok-uint8-images-v1"


def _check_batch(batch: Any, where: str) -> torch.Tensor:
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        batch = batch[0]  # (images, labels)
    if not isinstance(batch, torch.Tensor) or batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
        got = f"{batch.dtype} {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"{where}: expected uint8 image batches [B, 3, H, W], got {got}")
    return batch


def _nchw(array: np.ndarray, where: str) -> torch.Tensor:
    if array.dtype != np.uint8 or array.ndim != 4 or 3 not in (array.shape[1], array.shape[-1]):
        raise ValueError(f"{where}: expected a uint8 array [N, H, W, 3] (ADM) or [N, 3, H, W], "
                         f"got {array.dtype} {array.shape}")
    t = torch.from_numpy(np.ascontiguousarray(array) if array.flags.writeable else np.array(array))
    return t.permute(0, 3, 1, 2).contiguous() if array.shape[-1] == 3 and array.shape[1] != 3 else t


class NpzStream:
    """A compressed npz member read sequentially: uint8 NCHW batches of ``chunk`` images, never the whole array."""

    def __init__(self, path: Path, member: str, shape: tuple[int, ...], dtype: np.dtype, data_offset: int,
                 chunk: int = 256) -> None:
        self.path, self.member, self.shape, self.dtype = path, member, shape, dtype
        self._offset, self.chunk = data_offset, chunk
        self.source = str(path)

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        import zipfile

        per_image = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            f.read(self._offset)  # skip the .npy header
            for start in range(0, self.shape[0], self.chunk):
                count = min(self.chunk, self.shape[0] - start)
                raw = f.read(count * per_image)
                if len(raw) != count * per_image:
                    raise ValueError(f"{self.path}: {self.member} ends after {start + len(raw) // per_image} of "
                                     f"{self.shape[0]} images (truncated file)")
                array = np.frombuffer(raw, np.uint8).reshape(count, *self.shape[1:])  # [B, H, W, 3]
                yield torch.from_numpy(array.copy()).permute(0, 3, 1, 2).contiguous()


def _npy_header(f: Any, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"{where}: unsupported .npy format version {version}")


def open_npz_member(path: str | Path, key: str) -> np.ndarray | NpzStream:
    """One array of an npz without reading it whole: a read-only memory map when the member is stored
    uncompressed (``np.savez``, the ADM format), else a sequential :class:`NpzStream` (``np.savez_compressed``).

    Raises ``KeyError`` naming the keys present when ``key`` is absent, ``ValueError`` for an unreadable file.
    """
    import zipfile

    path = Path(path)
    member = f"{key}.npy"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if member not in names:
                raise KeyError(f"{path}: no {key!r} array; found {sorted(n[:-4] for n in names if n.endswith('.npy'))}")
            info = zf.getinfo(member)
            with zf.open(info) as f:
                shape, fortran, dtype = _npy_header(f, f"{path}:{key}")
                header_len = f.tell()
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable npz file: {e}") from e
    if dtype.hasobject:
        raise ValueError(f"{path}: {key} holds Python objects; expected a numeric array")
    if info.compress_type != zipfile.ZIP_STORED:
        if fortran:
            raise ValueError(f"{path}: {key} is a compressed Fortran-order array; re-save it with np.savez")
        return NpzStream(path, member, tuple(shape), dtype, header_len)
    with open(path, "rb") as raw:  # the member's data starts after its local file header
        raw.seek(info.header_offset)
        local = raw.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: damaged zip local header for {member}")
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    offset = info.header_offset + 30 + name_len + extra_len + header_len
    if not shape or 0 in shape:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape), offset=offset, order="F" if fortran else "C")


def load_npz_images(path: str | Path) -> np.ndarray | NpzStream:
    """``arr_0`` of an ADM batch file, uint8 [N, H, W, 3], memory-mapped (or streamed when compressed)."""
    path = Path(path)
    try:
        images = open_npz_member(path, "arr_0")
    except KeyError as e:
        raise KeyError(f"{e.args[0]} (ADM batches store uint8 NHWC images in 'arr_0')") from None
    shape, dtype = images.shape, images.dtype
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 [N, H, W, 3] (ADM layout), got {dtype} {tuple(shape)}")
    return images


def _folder_dataset(path: Path) -> Dataset:

    if any(p.is_file() and not p.name.startswith(".") for p in path.iterdir()):
        files = list_loose_images(path)
        return ImageFileDataset(files, [0] * len(files), ["image"], None, str(path))
    files, labels, classes = list_image_folder(path)
    return ImageFileDataset(files, labels, classes, None, str(path))


def resolve(source: ImageSource) -> ImageSource:
    """Paths become arrays (npz) or lazily decoded datasets (folders); other sources are returned as they are."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            return _folder_dataset(path)
        if path.suffix == ".npz" and path.is_file():
            return load_npz_images(path)
        raise FileNotFoundError(f"image source {path}: expected an .npz file (arr_0 NHWC uint8) or an image folder")
    return source


def describe(source: ImageSource) -> str:
    """A short description for error messages and records."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return f"{type(source).__name__}{tuple(source.shape)}"
    return getattr(source, "source", None) or type(source).__name__


def _dataset_batches(ds: Dataset, batch_size: int, where: str) -> Iterator[torch.Tensor]:
    pending: list[torch.Tensor] = []
    for i in range(len(ds)):
        item = ds[i]
        image = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"{where}: item {i} should be a uint8 image [3, H, W], got {got}")
        if pending and (len(pending) == batch_size or image.shape != pending[0].shape):
            yield torch.stack(pending)
            pending = []
        pending.append(image)
    if pending:
        yield torch.stack(pending)


def iter_batches(source: ImageSource, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """uint8 [B, 3, H, W] batches of ``source`` (at most ``batch_size`` images each); an empty source raises."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    where = describe(source)
    source = resolve(source)
    count = 0
    if isinstance(source, torch.Tensor):
        stream: Iterable[Any] = _check_batch(source, where).split(batch_size)
    elif isinstance(source, np.ndarray):  # slices of a memory map are read only when converted
        stream = (_nchw(np.asarray(source[i:i + batch_size]), where) for i in range(0, len(source), batch_size))
    elif isinstance(source, ArrayDataset):  # fast path: slices of the (memory-mapped) array
        arr = source.images
        stream = (_nchw(np.asarray(arr[i:i + batch_size]), where) for i in range(0, len(arr), batch_size))
    elif isinstance(source, Dataset) and not isinstance(source, DataLoader) and hasattr(source, "__len__"):
        stream = _dataset_batches(source, batch_size, where)
    elif isinstance(source, Iterable):
        stream = source
    else:
        raise TypeError(f"cannot read images from {type(source).__name__}: pass a uint8 tensor or array, an npz "
                        "path, an image folder, a dataset or an iterable of uint8 batches")
    for batch in stream:
        batch = _check_batch(batch, where)
        for part in batch.split(batch_size):
            count += len(part)
            yield part
    if count == 0:
        raise ValueError(f"{where}: no images")


class ContentHasher:
    """sha256 of a stream of uint8 images: per image its shape and bytes, so batching does not matter."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(HASH_VERSION)
        self.n = 0

    def update(self, batch: torch.Tensor) -> None:
        """Add a uint8 batch [B, 3, H, W]."""
        arr = batch.contiguous().cpu().numpy()
        for image in arr:
            self._h.update("{},{},{};".format(*image.shape).encode())
            self._h.update(image.tobytes())
        self.n += len(arr)

    def hexdigest(self) -> str:
        """The digest of everything added so far."""
        return self._h.hexdigest()


def is_replayable(source: ImageSource) -> bool:
    """True when reading ``source`` twice costs no more than reading it (arrays, npz, in-memory datasets)."""

    if isinstance(source, (str, Path)):
        return Path(source).suffix == ".npz"
    return isinstance(source, (torch.Tensor, np.ndarray, ArrayDataset))


def content_hash(source: ImageSource, batch_size: int = 256) -> tuple[str, int]:
    """(sha256, number of images) of the pixels of ``source``."""
    hasher = ContentHasher()
    for batch in iter_batches(source, batch_size):
        hasher.update(batch)
    return hasher.hexdigest(), hasher.n
