"""Lazily decoded image sets: folders, tars, npz, the loader, the cache limit, corrupt archives, expected counts."""

from __future__ import annotations

import gzip
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vfmtok.data.datasets as datasets_mod
from vfmtok.data import (
    ArrayDataset,
    FolderImages,
    ImageReadError,
    LazyImages,
    NpzImages,
    TarImages,
    check_expected_count,
    cifar10,
    image_folder,
    image_loader,
    image_tar,
    open_images,
    read_image_folder,
    read_image_tar,
)

JPEG_SIZE = 256


def make_jpeg_folder(root: Path, cifar_root: Path, n: int = 200, size: int = JPEG_SIZE) -> Path:
    """An ImageFolder of ``n`` JPEGs of ``size`` px: CIFAR-10 test images upsampled (every 50th, all classes)."""
    if root.is_dir():
        return root
    ds = cifar10("test", root=cifar_root)
    step = len(ds) // n
    for i in range(0, step * n, step):
        image, label = ds[i]
        folder = root / ds.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).resize((size, size), Image.BICUBIC).save(
            folder / f"{i:05d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs") / "tree", data_root, n=60)


def _tar(root: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tar:
        for f in sorted(root.rglob("*")):
            tar.add(f, arcname=str(f.relative_to(root.parent)), recursive=False)
    return path


# ---------------------------------------------------------------- sources agree with the in-memory readers
def test_folder_tar_and_npz_streams_equal_the_decoded_arrays(jpeg_folder: Path, tmp_path: Path) -> None:
    arrays = read_image_folder(jpeg_folder, size=64)
    folder = FolderImages(jpeg_folder, size=64)
    plain, packed = _tar(jpeg_folder, tmp_path / "tree.tar"), _tar(jpeg_folder, tmp_path / "tree.tar.gz")
    streams = [folder, TarImages(plain, size=64), TarImages(packed, size=64), open_images(plain, size=64)]
    for ds in streams:
        assert isinstance(ds, LazyImages) and len(ds) == len(arrays) == 60
        assert ds.classes == arrays.classes and ds.labels.tolist() == arrays.labels.tolist()
        assert ds.names == arrays.names
        for i in (0, 17, 59):
            image, label = ds[i]
            assert torch.equal(image, torch.from_numpy(arrays.images[i])) and label == arrays.labels[i]
    assert folder.fingerprint() == FolderImages(jpeg_folder, size=64).fingerprint()
    assert folder.fingerprint() != FolderImages(jpeg_folder, size=32).fingerprint()

    np.savez(tmp_path / "batch.npz", arr_0=arrays.images.transpose(0, 2, 3, 1), arr_1=arrays.labels)
    npz = open_images(tmp_path / "batch.npz", size=None)
    assert isinstance(npz, NpzImages) and isinstance(npz.images, np.memmap)
    assert all(torch.equal(npz[i][0], torch.from_numpy(arrays.images[i])) for i in (0, 30, 59))
    assert npz.labels.tolist() == arrays.labels.tolist()
    smaller = open_images(tmp_path / "batch.npz", size=32)  # the ADM centre crop, as for files
    assert torch.equal(smaller[3][0], torch.from_numpy(read_image_folder(jpeg_folder, size=32).images[3]))

    sub = folder.random_subset(10, seed=3)  # the same draw as ArrayDataset's
    assert sub.names == arrays.random_subset(10, seed=3).names
    assert torch.equal(sub.to_arrays().tensors()[0], arrays.random_subset(10, seed=3).tensors()[0])


def test_loader_workers_give_the_same_batches(jpeg_folder: Path) -> None:
    ds = FolderImages(jpeg_folder, size=32)
    ref = [(x.clone(), y.clone()) for x, y in image_loader(ds, 8, workers=0, indices=range(5, 45))]
    got = list(image_loader(ds, 8, workers=2, indices=range(5, 45)))
    assert len(ref) == len(got) == 5
    for (a, la), (b, lb) in zip(ref, got):
        assert a.dtype == torch.uint8 and a.shape == (8, 3, 32, 32) and torch.equal(a, b) and torch.equal(la, lb)
    tar_ds = open_images(_tar(jpeg_folder, jpeg_folder.parent / "w.tar"), size=32)
    for (a, _), (b, _) in zip(ref, image_loader(tar_ds, 8, workers=2, indices=range(5, 45))):
        assert torch.equal(a, b)  # each worker opens its own handle and reads by seek


# ---------------------------------------------------------------- the cache limit
def test_sources_above_the_cache_limit_stream(jpeg_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    small = image_folder(jpeg_folder, size=16)
    assert isinstance(small, ArrayDataset)  # 60 x 3 x 16 x 16 bytes: cached
    monkeypatch.setattr(datasets_mod, "ARRAY_CACHE_LIMIT_BYTES", 60 * 3 * 16 * 16 - 1)
    big = image_folder(jpeg_folder, size=16)
    assert isinstance(big, FolderImages)
    assert torch.equal(big.to_arrays().tensors()[0], small.tensors()[0])
    archive = image_tar(_tar(jpeg_folder, tmp_path / "t.tar"), size=16)
    assert isinstance(archive, TarImages) and archive.head(5).names == small.head(5).names
    assert isinstance(image_folder(jpeg_folder, size=8), ArrayDataset)  # 8 px fits again


# ---------------------------------------------------------------- corrupt archives and files
def test_garbled_tar_gz_is_an_error_not_a_shorter_set(data_root: Path, tmp_path: Path) -> None:
    data = bytearray((data_root / "cifar10" / "test.tar.gz").read_bytes())
    for k in range(64):  # garble 64 bytes in the middle of the gzip stream
        data[len(data) // 2 + k] ^= 0x5A
    bad = tmp_path / "test.tar.gz"
    bad.write_bytes(bytes(data))
    with tarfile.open(bad) as tar:  # the standard library stops early without a word
        silently = sum(1 for m in tar if m.isfile())
    assert 0 < silently < 10_000
    with pytest.raises(ValueError, match=r"test\.tar\.gz: .*(breaks at byte|corrupt|CRC)"):
        read_image_tar(bad)
    with pytest.raises(ValueError, match=r"test\.tar\.gz"):
        TarImages(bad, size=None)


def test_tar_with_bad_header_or_trailing_garbage(jpeg_folder: Path, tmp_path: Path) -> None:
    good = _tar(jpeg_folder, tmp_path / "good.tar").read_bytes()
    with tarfile.open(tmp_path / "good.tar") as tar:
        tenth = [m for m in tar][10]
    cut = bytearray(good)
    cut[tenth.offset:tenth.offset + 512] = b"\xff" * 512  # an invalid header mid-archive
    (tmp_path / "cut.tar").write_bytes(bytes(cut))
    with pytest.raises(ValueError, match=rf"cut\.tar: the archive breaks at byte {tenth.offset}"):
        read_image_tar(tmp_path / "cut.tar")
    with pytest.raises(ValueError, match=r"cut\.tar"):
        open_images(tmp_path / "cut.tar", size=16)
    (tmp_path / "tail.tar").write_bytes(good + b"garbage" * 100)
    with pytest.raises(ValueError, match=r"tail\.tar: non-zero data after the end-of-archive"):
        read_image_tar(tmp_path / "tail.tar")
    (tmp_path / "trunc.tar.gz").write_bytes(gzip.compress(good)[:-20])  # gzip stream cut short
    with pytest.raises(ValueError, match=r"trunc\.tar\.gz"):
        read_image_tar(tmp_path / "trunc.tar.gz")


def test_undecodable_files_raise_unless_skipped(jpeg_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for f in sorted(jpeg_folder.rglob("*.jpg"))[:12]:
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        (root / f.parent.name / f.name).write_bytes(f.read_bytes())
    victim = sorted(root.rglob("*.jpg"))[4]
    victim.write_bytes(victim.read_bytes()[:300])  # a truncated JPEG
    name = f"{victim.parent.name}/{victim.name}"
    archive = _tar(root, tmp_path / "tree.tar")
    with pytest.raises(ImageReadError, match=victim.name):
        read_image_folder(root, size=16)
    with pytest.raises(ImageReadError, match=rf"tree\.tar:{name}"):
        read_image_tar(archive, size=16)
    with pytest.raises(ImageReadError, match=victim.name):
        FolderImages(root, size=16)[4]
    for ds in (read_image_folder(root, size=16, skip_bad=True), read_image_tar(archive, size=16, skip_bad=True),
               FolderImages(root, size=16, skip_bad=True), TarImages(archive, size=16, skip_bad=True),
               image_folder(root, size=16, skip_bad=True), open_images(archive, size=16, skip_bad=True)):
        assert len(ds) == 11 and name not in ds.names
        assert [s.split(":")[-1].removeprefix(str(root) + "/") for s in ds.skipped] == [name], ds.skipped
        assert ds[4][0].shape == (3, 16, 16)
    assert read_image_folder(root, size=16, skip_bad=True).head(3).skipped  # carried through subsets


def test_expected_counts_of_known_sets(data_root: Path) -> None:
    check_expected_count("cifar10", "test", 10_000)
    check_expected_count("imagenet", "val", 49_999, skipped=1)
    check_expected_count("mydata", "val", 7)  # unknown sets are not checked
    with pytest.raises(ValueError, match=r"cifar10:test should hold 10,000 images; read 9,999"):
        check_expected_count("cifar10", "test", 9_999)
    with pytest.raises(ValueError, match=r"imagenet:train should hold 1,281,167 images"):
        check_expected_count("imagenet", "train", 1_281_166)
    ds = open_images("cifar10:test", size=None)
    assert len(ds) == 10_000 and ds.source == "cifar10:test"


# ---------------------------------------------------------------- bad input
def test_bad_sources_get_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"float\.npz: arr_0 must be uint8 images \[N, H, W, 3\].*float32"):
        open_images(tmp_path / "float.npz", size=None)
    np.savez(tmp_path / "nchw.npz", arr_0=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"nchw\.npz: arr_0 must be uint8 images"):
        open_images(tmp_path / "nchw.npz", size=None)
    np.savez_compressed(tmp_path / "packed.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"packed\.npz: arr_0 is compressed"):
        open_images(tmp_path / "packed.npz", size=None)
    np.savez(tmp_path / "nokey.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(KeyError, match=r"no 'arr_0' array"):
        open_images(tmp_path / "nokey.npz", size=None)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable npz"):
        open_images(tmp_path / "junk.npz", size=None)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unknown image source type"):
        open_images(tmp_path / "notes.txt", size=None)
    with pytest.raises(FileNotFoundError, match=r"image source not found: nowhere/at/all"):
        open_images("nowhere/at/all", size=None)
    with pytest.raises(ValueError, match=r"cifar10 split must be|CIFAR-10 split must be"):
        open_images("cifar10:val", size=None)
    monkeypatch.setenv("VFMTOK_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"imagenet:val: expected an ImageFolder tree"):
        open_images("imagenet:val", size=256)
    with pytest.raises(ValueError, match="contradicts"):
        open_images("imagenet:val", size=256, split="train")
    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as zf:  # a zip without npy members
        zf.writestr("arr_0.npy", b"not an npy")
    with pytest.raises(ValueError):
        open_images(tmp_path / "odd.npz", size=None)
    with pytest.raises(ValueError, match="need batch_size > 0"):
        image_loader(FolderImages.__new__(FolderImages), 0)
