"""Readers for image folders, tar archives, ADM npz batches, loose images and torchvision's CIFAR-10.

Policies, shared by every reader:

* **conversion** -- :func:`vfmtok.images.pil_to_uint8`: grayscale is replicated to three channels, palette
  images are expanded, an alpha channel is composited onto white;
* **resize** -- ``size=None`` keeps images as they are (to be stacked they must then share one size, otherwise
  a ValueError names the first odd file); ``size=S`` sends every image that is not already S x S through ADM's
  :func:`vfmtok.images.center_crop_arr` (after the conversion above);
* **bad files** -- every non-hidden file of a folder or archive must be an image: a corrupt or non-image file
  raises :class:`ImageReadError` naming it (nothing is skipped silently). Names starting with ``.`` are ignored.
  With an explicit ``skip_bad=True`` undecodable files are left out and their names listed in ``ds.skipped``.
  An archive must be readable to its end: a broken header or gzip stream mid-way is an error naming the archive
  and where it broke (:func:`iter_tar_members`), never a silently shorter data set.
* **order** -- classes are the sorted class-folder names; files are sorted by name within a class.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vfmtok.data.arrays import ArrayDataset
from vfmtok.fileio import sha256_file
from vfmtok.images import center_crop_arr, pil_to_uint8, resize_uint8


class ImageReadError(ValueError):
    """A file that should be an image could not be decoded."""


def decode_image(data: bytes | Path, name: str, size: int | None = None) -> torch.Tensor:
    """Decode one image file (path or bytes) to uint8 [3, H, W], applying the conversion and resize policies."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
            out = pil_to_uint8(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot decode image {name}: {e}") from e
    if size is not None and tuple(out.shape[1:]) != (size, size):
        out = pil_to_uint8(center_crop_arr(Image.fromarray(out.permute(1, 2, 0).numpy()), size))
    return out


def decode_all(items: Sequence[tuple[str, bytes | Path]], size: int | None, source: str,
               skip_bad: bool = False) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode (name, data) pairs into one uint8 [N, 3, H, W] array; sizes must agree.

    Returns the array, the positions of the decoded items and the names of the skipped ones: an undecodable item
    raises :class:`ImageReadError` naming it, unless ``skip_bad`` (then it is skipped and named in the list).
    """
    out: np.ndarray | None = None
    first, kept, skipped = "", [], []
    for i, (name, data) in enumerate(items):
        try:
            im = decode_image(data, name, size).numpy()
        except ImageReadError:
            if not skip_bad:
                raise
            skipped.append(name)
            continue
        if out is None:
            out, first = np.empty((len(items) - i, *im.shape), dtype=np.uint8), name
        elif im.shape != out.shape[1:]:
            raise ValueError(f"{source}: images differ in size ({first} is {out.shape[2]}x{out.shape[3]}, {name} is "
                             f"{im.shape[1]}x{im.shape[2]}); pass size=... to centre-crop them to one size")
        out[len(kept)] = im
        kept.append(i)
    if out is None:
        note = f" ({len(skipped)} undecodable, skipped)" if skipped else ""
        raise ValueError(f"{source}: no images to read{note}")
    return out[:len(kept)], kept, skipped


def stack_images(items: Iterable[tuple[str, bytes | Path]], count: int, size: int | None, source: str) -> np.ndarray:
    """Decode ``count`` (name, data) pairs into one uint8 [N, 3, H, W] array; sizes must agree."""
    return decode_all(list(items), size, source)[0]


def _visible_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def list_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and classes of an ImageFolder tree ``root/<class>/<image>``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected an ImageFolder tree root/<class>/<image>)")
    entries = [(f, c) for c, name in enumerate(classes) for f in _visible_files(root / name)]
    if not entries:
        raise ValueError(f"{root}: the class folders {classes} hold no files")
    return [f for f, _ in entries], [c for _, c in entries], classes


def list_loose_images(root: str | Path) -> list[Path]:
    """The files of a flat image folder (no classes), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = _visible_files(root)
    if not files:
        raise ValueError(f"{root}: the folder holds no image files")
    return files


def read_image_folder(root: str | Path, size: int | None = None, skip_bad: bool = False) -> ArrayDataset:
    """An ImageFolder tree ``root/<class>/<image>`` decoded into an :class:`ArrayDataset` (``skip_bad``: see
    :func:`read_image_tar`)."""
    files, labels, classes = list_image_folder(root)
    images, kept, skipped = decode_all([(str(f), f) for f in files], size, str(root), skip_bad)
    names = [f"{files[i].parent.name}/{files[i].name}" for i in kept]
    ds = ArrayDataset(images, [labels[i] for i in kept], classes, str(root), names)
    ds.skipped = skipped
    return ds


def read_loose_images(root: str | Path, size: int | None = None, skip_bad: bool = False) -> ArrayDataset:
    """A flat folder of images (e.g. Kodak), sorted by name, all with label 0 (class ``"image"``)."""
    files = list_loose_images(root)
    images, kept, skipped = decode_all([(str(f), f) for f in files], size, str(root), skip_bad)
    ds = ArrayDataset(images, [0] * len(kept), ["image"], str(root), [files[i].name for i in kept])
    ds.skipped = skipped
    return ds


class _ReadRecorder(io.RawIOBase):
    """A file wrapper remembering the last block read (so the tar end check needs no backward seek in a gzip)."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw, self.last = raw, (-1, b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        pos = self.raw.tell()
        data = self.raw.read(n)
        self.last = (pos, data)
        return data

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _open_archive(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")  # type: ignore[return-value]


def iter_tar_members(path: str | Path, read_data: bool = True) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Every regular file of a tar / tar.gz with its bytes (``None`` when ``read_data=False``), then a check
    that the archive was read to its real end.

    :mod:`tarfile` stops at the first invalid header as if the archive ended there; this generator instead raises
    ValueError naming the archive, the byte offset and the last good member when the block it stopped at is not
    the end-of-archive marker (zeros), when non-zero data follows the marker, or when the gzip stream does not
    end cleanly (CRC / length check, truncation).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"archive not found: {path}")
    last = "(none: the first header)"
    try:
        with _open_archive(path) as raw:
            rec = _ReadRecorder(raw)
            with tarfile.open(fileobj=rec, mode="r:") as tar:  # type: ignore[call-overload]
                for member in tar:
                    if member.isfile():
                        data = None
                        if read_data:
                            f = tar.extractfile(member)
                            data = f.read() if f is not None else b""
                        yield member, data
                    last = member.name
                end = tar.offset
            pos, block = rec.last
            if pos != end:
                rec.seek(end)  # uncompressed (cheap) or forward in a gzip
                block = rec.read(tarfile.BLOCKSIZE)
            if block.strip(b"\0"):
                raise ValueError(f"{path}: the archive breaks at byte {end} after member {last}: no valid tar header "
                                 "there (corrupt or garbled data); refusing to read a truncated image set")
            while chunk := rec.read(1 << 20):  # to EOF: gzip checks its CRC and length there
                if chunk.strip(b"\0"):
                    raise ValueError(f"{path}: non-zero data after the end-of-archive marker at byte {end} (after "
                                     f"member {last}); the archive is corrupt")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable tar archive (after member {last}): {e}") from e


def _class_members(path: Path, members: Iterable[tuple[str, Any]]) -> list[tuple[str, str, Any]]:
    """(class, file name, payload) of the visible members of an ImageFolder archive, sorted by (class, name)."""
    out = []
    for name, payload in members:
        parts = PurePosixPath(name).parts
        if any(p.startswith(".") for p in parts):
            continue
        if len(parts) < 2:
            raise ValueError(f"{path}: {name} is not inside a class folder (<class>/<image>)")
        out.append((parts[-2], parts[-1], payload))
    if not out:
        raise ValueError(f"{path}: the archive holds no image files in class folders")
    out.sort(key=lambda m: (m[0], m[1]))
    return out


def read_image_tar(path: str | Path, size: int | None = None, skip_bad: bool = False) -> ArrayDataset:
    """A tar / tar.gz of an ImageFolder tree (``[top/]<class>/<image>``), decoded into an :class:`ArrayDataset`.

    The archive must be readable to its end (:func:`iter_tar_members`). A member that does not decode raises
    :class:`ImageReadError` naming it, unless ``skip_bad``: then it is left out and listed in ``ds.skipped``.
    """
    path = Path(path)
    members = _class_members(path, ((m.name, data) for m, data in iter_tar_members(path)))
    classes = sorted({c for c, _, _ in members})
    images, kept, skipped = decode_all([(f"{path}:{c}/{n}", data) for c, n, data in members], size, str(path),
                                       skip_bad)
    index = {c: i for i, c in enumerate(classes)}
    members = [members[i] for i in kept]
    ds = ArrayDataset(images, [index[c] for c, _, _ in members], classes, str(path),
                      [f"{c}/{n}" for c, n, _ in members])
    ds.skipped = skipped
    return ds


def read_npz(path: str | Path, size: int | None = None) -> ArrayDataset:
    """An ADM-format batch: ``arr_0`` uint8 [N, H, W, 3]; labels from ``arr_1`` or ``labels`` when present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        f = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable npz file: {e}") from e
    with f:
        if "arr_0" not in f:
            raise KeyError(f"{path}: no 'arr_0' array (the ADM batch format stores images NHWC uint8 there); "
                           f"found {sorted(f.files)}")
        images = f["arr_0"]
        labels = f["arr_1"] if "arr_1" in f else f["labels"] if "labels" in f else np.zeros(len(images), np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers [N], got {labels.dtype} {labels.shape}")
    chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    if size is not None:
        chw = resize_uint8(chw, size)
    n_classes = int(labels.max()) + 1 if len(labels) else 1
    return ArrayDataset(chw, labels.astype(np.int64), [str(c) for c in range(n_classes)], str(path))


def read_torchvision_cifar10(root: str | Path, train: bool, size: int | None = None) -> ArrayDataset:
    """torchvision's CIFAR-10 (the official pickles, lossless, official order) from ``root``; never downloads."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=False)
    except RuntimeError as e:
        raise FileNotFoundError(f"torchvision CIFAR-10 not found under {root} (expected {root}/cifar-10-batches-py; "
                                f"nothing is downloaded): {e}") from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    if size is not None:
        images = resize_uint8(images, size)
    return ArrayDataset(images, np.asarray(ds.targets), ds.classes,
                        f"torchvision-cifar10:{'train' if train else 'test'}")


def synthetic(n: int, size: int = 32, num_classes: int = 10, seed: int = 0) -> ArrayDataset:
    """Seeded smooth random images (low-frequency noise, class-dependent mean colour) for tests."""
    if n <= 0 or size <= 0 or num_classes <= 0:
        raise ValueError(f"synthetic: n, size and num_classes must be positive, got {n}, {size}, {num_classes}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    low = torch.rand(n, 3, max(size // 4, 1), max(size // 4, 1), generator=g)
    tint = torch.linspace(0.2, 0.8, num_classes)[labels].view(n, 1, 1, 1)
    img = torch.nn.functional.interpolate(0.5 * low + 0.5 * tint, size=(size, size), mode="bilinear",
                                          align_corners=False)
    return ArrayDataset((img * 255).round().clamp(0, 255).to(torch.uint8), labels,
                        [f"class{c}" for c in range(num_classes)], f"synthetic(n={n},size={size},seed={seed})")


class ImageFileDataset(Dataset):
    """Image files decoded lazily, one per item: for images that may differ in size (``size=None``).

    Items are ``(uint8 [3, H, W] tensor, int label)``; :meth:`fingerprint` hashes the files' bytes, names,
    labels and the resize policy. :meth:`to_arrays` stacks them into an :class:`ArrayDataset`.
    """

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int], classes: Sequence[str],
                 size: int | None = None, source: str = "files") -> None:
        if not files:
            raise ValueError(f"{source}: the dataset is empty")
        if len(labels) != len(files):
            raise ValueError(f"{source}: {len(files)} files but {len(labels)} labels")
        missing = [str(f) for f in files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"{source}: image file not found: {missing[0]}")
        self.files, self.labels = [Path(f) for f in files], [int(x) for x in labels]
        self.classes, self.size, self.source = list(classes), size, source
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return decode_image(self.files[i], str(self.files[i]), self.size), self.labels[i]

    def fingerprint(self) -> str:
        """sha256 over (name, file sha256, label) of every file, the classes and the resize policy."""
        if self._fingerprint is None:
            h = hashlib.sha256(str((self.classes, self.size)).encode())
            for f, label in zip(self.files, self.labels):
                h.update(f"{f.name}:{sha256_file(f)}:{label}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def to_arrays(self) -> ArrayDataset:
        """All images stacked (they must share one size; see the module's resize policy)."""
        images = stack_images(((str(f), f) for f in self.files), len(self.files), self.size, self.source)
        return ArrayDataset(images, self.labels, self.classes, self.source, [f.name for f in self.files])
