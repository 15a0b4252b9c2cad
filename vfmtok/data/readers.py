"""Readers for image folders, tar archives, ADM npz batches, loose images and torchvision's CIFAR-10.

Every reader returns images as uint8 [3, H, W] through :func:`vfmtok.images.pil_to_uint8` (grayscale is
replicated, alpha is composited onto white) and applies one resize policy: ``size=None`` keeps images as they
are (they must then share one size to be stacked), ``size=S`` applies ADM's centre crop to S x S to any
image that is not already S x S.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vfmtok.data.arrays import ArrayDataset
from vfmtok.images import center_crop_arr, pil_to_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


class ImageReadError(ValueError):
    """A file that should be an image could not be decoded."""


def decode_image(data: bytes | Path, name: str, size: int | None = None) -> torch.Tensor:
    """Decode one image file (path or bytes) to uint8 [3, H, W], applying the resize policy."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
            if size is not None and img.size != (size, size):
                img = center_crop_arr(img.convert("RGB") if img.mode not in ("RGB", "RGBA", "L") else img, size)
            return pil_to_uint8(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode image {name}: {e}") from e


def _stack(images: list[torch.Tensor], names: list[str], source: str) -> np.ndarray:
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        first = tuple(images[0].shape)
        odd = next(n for im, n in zip(images, names) if tuple(im.shape) != first)
        raise ValueError(f"{source}: images differ in size ({names[0]} is {first[1:]}, {odd} is not); "
                         "pass size=... to centre-crop them to one size")
    return torch.stack(images).numpy()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _folder_entries(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected an ImageFolder tree root/<class>/<image>)")
    entries = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())
               if f.is_file() and not f.name.startswith(".")]
    if not entries:
        raise ValueError(f"{root}: the class folders hold no files")
    return entries, classes


def read_image_folder(root: str | Path, size: int | None = None) -> ArrayDataset:
    """An ImageFolder tree ``root/<class>/<image>`` (classes and files sorted by name). Non-image files are errors."""
    root = Path(root)
    entries, classes = _folder_entries(root)
    images = [decode_image(f, str(f), size) for f, _ in entries]
    return ArrayDataset(_stack(images, [str(f) for f, _ in entries], str(root)), [c for _, c in entries], classes,
                        str(root))


def read_loose_images(root: str | Path, size: int | None = None) -> ArrayDataset:
    """A flat folder of images (e.g. Kodak), sorted by name, all with label 0."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(f for f in root.iterdir() if f.is_file() and _is_image(f.name))
    if not files:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    images = [decode_image(f, str(f), size) for f in files]
    return ArrayDataset(_stack(images, [str(f) for f in files], str(root)), [0] * len(files), ["image"], str(root))


def _tar_members(tar: tarfile.TarFile) -> Iterator[tuple[str, str, bytes]]:
    """(class name, member name, bytes) of every regular file two levels below the top folder."""
    for member in tar:
        if not member.isfile():
            continue
        parts = PurePosixPath(member.name).parts
        if len(parts) < 2 or parts[-1].startswith("."):
            continue
        f = tar.extractfile(member)
        if f is not None:
            yield parts[-2], member.name, f.read()


def read_image_tar(path: str | Path, size: int | None = None) -> ArrayDataset:
    """A tar / tar.gz of an ImageFolder tree (``[top/]<class>/<image>``); classes and files sorted by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"archive not found: {path}")
    try:
        with tarfile.open(path) as tar:
            members = list(_tar_members(tar))
    except tarfile.TarError as e:
        raise ValueError(f"{path}: not a readable tar archive: {e}") from e
    if not members:
        raise ValueError(f"{path}: the archive holds no image files in class folders")
    members.sort(key=lambda m: (m[0], m[1]))
    classes = sorted({c for c, _, _ in members})
    images = [decode_image(data, f"{path}:{name}", size) for _, name, data in members]
    labels = [classes.index(c) for c, _, _ in members]
    return ArrayDataset(_stack(images, [f"{path}:{n}" for _, n, _ in members], str(path)), labels, classes, str(path))


def read_npz(path: str | Path) -> ArrayDataset:
    """An ADM-format batch: ``arr_0`` uint8 [N, H, W, 3]; labels from ``arr_1`` or ``labels`` when present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    with np.load(path) as f:
        if "arr_0" not in f:
            raise KeyError(f"{path}: no 'arr_0' array (the ADM batch format stores images NHWC uint8 there)")
        images = f["arr_0"]
        labels = f["arr_1"] if "arr_1" in f else f["labels"] if "labels" in f else np.zeros(len(images), np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    n_classes = int(labels.max()) + 1 if len(labels) else 1
    return ArrayDataset(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64),
                        [str(c) for c in range(n_classes)], str(path))


def read_torchvision_cifar10(root: str | Path, train: bool) -> ArrayDataset:
    """torchvision's CIFAR-10 (the official pickles) from ``root``; never downloads."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=False)
    except RuntimeError as e:
        raise FileNotFoundError(f"torchvision CIFAR-10 not found under {root}: {e}") from e
    return ArrayDataset(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets), ds.classes,
                        f"torchvision-cifar10:{'train' if train else 'test'}")


def synthetic(n: int, size: int = 32, num_classes: int = 10, seed: int = 0) -> ArrayDataset:
    """Seeded smooth random images (low-frequency noise, class-dependent mean colour) for tests."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    low = torch.rand(n, 3, max(size // 4, 1), max(size // 4, 1), generator=g)
    tint = torch.linspace(0.2, 0.8, num_classes)[labels].view(n, 1, 1, 1)
    img = torch.nn.functional.interpolate(0.5 * low + 0.5 * tint, size=(size, size), mode="bilinear",
                                          align_corners=False)
    return ArrayDataset((img * 255).round().clamp(0, 255).to(torch.uint8), labels,
                        [f"class{c}" for c in range(num_classes)], f"synthetic(n={n},size={size},seed={seed})")
