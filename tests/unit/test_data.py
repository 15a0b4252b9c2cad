"""Datasets: real CIFAR-10 and Kodak, subsets, the decoded-array cache, and bad input."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.data import ArrayDataset, ImageReadError, build_dataset, cifar10, kodak, make_loader, synthetic
from vfmtok.data.readers import read_image_folder, read_image_tar, read_loose_images, read_npz


def test_cifar10_test_split_and_official_order(data_root) -> None:
    ds = cifar10("test", root=data_root)
    assert ds.images.shape == (10000, 3, 32, 32) and ds.images.dtype == np.uint8
    assert ds.classes[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    official = cifar10("test", root=data_root, order="official")
    table = json.loads((data_root / "cifar10" / "official_order.json").read_text())
    assert official.labels.tolist() == table["test"]
    # the official image 3 is airplane file 0000 (the first airplane in official order)
    assert np.array_equal(official.images[3], ds.images[0])
    train = cifar10("train", root=data_root, order="official")
    assert len(train) == 10000 and train.labels.tolist() == table["train_first_10000"]


def test_cache_round_trip_equals_fresh_decode(data_root) -> None:
    first = cifar10("test", root=data_root)
    again = cifar10("test", root=data_root)  # served from the memory-mapped cache
    assert isinstance(again.images, np.memmap)
    fresh = read_image_tar(data_root / "cifar10" / "test.tar.gz")
    assert np.array_equal(np.asarray(again.images[:500]), fresh.images[:500])
    assert again.fingerprint() == first.fingerprint() == fresh.fingerprint()


def test_kodak_resize_policy(data_root) -> None:
    ds = kodak(root=data_root)
    assert len(ds) == 24 and ds.image_size == (512, 512)
    small = kodak(root=data_root, size=64)
    assert small.images.shape == (24, 3, 64, 64)
    with pytest.raises(ValueError, match="differ in size"):
        read_loose_images(data_root / "kodak")


def test_subsets_are_deterministic() -> None:
    ds = synthetic(200, size=8, num_classes=4, seed=1)
    assert np.array_equal(ds.random_subset(50, seed=3).labels, ds.random_subset(50, seed=3).labels)
    assert ds.random_subset(50, seed=3).fingerprint() != ds.random_subset(50, seed=4).fingerprint()
    per_class = ds.first_per_class(5)
    assert np.bincount(per_class.labels).tolist() == [5] * 4
    assert len(ds.head(10)) == 10 and np.array_equal(ds.head(10).images, ds.images[:10])
    with pytest.raises(ValueError, match="asked for 500"):
        ds.head(500)
    assert torch.equal(synthetic(4, seed=0).tensors()[0], synthetic(4, seed=0).tensors()[0])


def test_fingerprint_tracks_content() -> None:
    ds = synthetic(10, size=8)
    images = ds.images.copy()
    images[0, 0, 0, 0] ^= 1
    assert ArrayDataset(images, ds.labels, ds.classes).fingerprint() != ds.fingerprint()


def test_npz_round_trip_and_loader(tmp_path) -> None:
    ds = synthetic(12, size=8, num_classes=3)
    np.savez(tmp_path / "batch.npz", ds.images.transpose(0, 2, 3, 1), ds.labels)
    back = build_dataset("npz", path=tmp_path / "batch.npz")
    assert np.array_equal(back.images, ds.images) and np.array_equal(back.labels, ds.labels)
    images, labels = next(iter(make_loader(back, batch_size=5, shuffle=True, seed=0)))
    again, _ = next(iter(make_loader(back, batch_size=5, shuffle=True, seed=0)))
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 8, 8) and labels.dtype == torch.int64
    assert torch.equal(images, again)
    np.savez(tmp_path / "bad.npz", images=ds.images)
    with pytest.raises(KeyError, match="arr_0"):
        read_npz(tmp_path / "bad.npz")


def _folder(tmp_path):
    root = tmp_path / "tree"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "cats" / "a.png")
    Image.new("L", (8, 8), 77).save(root / "dogs" / "gray.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(root / "dogs" / "rgba.png")
    return root


def test_folder_conversions_and_tar(tmp_path) -> None:
    root = _folder(tmp_path)
    ds = read_image_folder(root)
    assert ds.classes == ["cats", "dogs"] and ds.labels.tolist() == [0, 1, 1]
    gray, rgba = ds.images[1], ds.images[2]
    assert (gray == 77).all()  # grayscale replicated to three channels
    assert (rgba == 255).all()  # fully transparent pixels composited onto white
    with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="tree")
    from_tar = read_image_tar(tmp_path / "tree.tar.gz")
    assert np.array_equal(from_tar.images, ds.images) and from_tar.classes == ds.classes


def test_bad_inputs_get_clear_errors(tmp_path) -> None:
    root = _folder(tmp_path)
    (root / "cats" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image_folder(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        read_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="no image files"):
        read_loose_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_image_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="missing.tar.gz"):
        read_image_tar(tmp_path / "missing.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        read_image_tar(tmp_path / "junk.tar.gz")
    with pytest.raises(ValueError, match="empty"):
        ArrayDataset(np.zeros((0, 3, 4, 4), np.uint8), [], ["a"])
