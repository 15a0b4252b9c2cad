"""Datasets: real CIFAR-10 and Kodak, subsets, the decoded-array cache, loaders and bad input."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vfmtok.assets as assets_mod
from vfmtok import assets
from vfmtok.data import (
    DATASETS,
    ArrayDataset,
    ImageFileDataset,
    ImageReadError,
    build_dataset,
    cifar10,
    decode_image,
    image_folder,
    image_tar,
    kodak,
    make_loader,
    read_image_folder,
    read_image_tar,
    read_loose_images,
    read_npz,
    synthetic,
    torchvision_cifar10,
)
from vfmtok.images import center_crop_arr, pil_to_uint8

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- real data
def test_cifar10_counts_and_official_order(data_root: Path) -> None:
    table = json.loads((data_root / "cifar10" / "official_order.json").read_text())
    for split, n in (("train", 50_000), ("test", 10_000)):
        ds = cifar10(split, root=data_root)
        assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == np.uint8 and ds.classes == CLASSES
        assert np.bincount(ds.labels).tolist() == [n // 10] * 10
        assert ds.names[0] == "airplane/0000.jpg" and ds.names[-1] == f"truck/{n // 10 - 1:04d}.jpg"
        assert isinstance(ds.images, np.memmap)  # served from the array cache
        image, label = ds[n - 1]
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 9

    test = cifar10("test", root=data_root, order="official")
    assert test.labels.tolist() == table["test"]
    first_airplane = table["test"].index(0)
    assert test.names[first_airplane] == "airplane/0000.jpg"
    assert test.names[table["test"].index(3, 100)].startswith("cat/")
    folder = cifar10("test", root=data_root)
    assert np.array_equal(test.images[first_airplane], folder.images[0])

    train = cifar10("train", root=data_root, order="official")
    assert len(train) == 10_000 and train.labels.tolist() == table["train_first_10000"]
    first5k = train[:5000]
    assert isinstance(first5k, ArrayDataset) and first5k.labels.tolist() == table["train_first_10000"][:5000]
    with pytest.raises(IndexError, match=r"train\[:10000\] only"):
        train[:10_001]


def test_cifar10_cache_equals_fresh_decode(data_root: Path) -> None:
    cached = cifar10("test", root=data_root)
    wanted = {f"test/{c}/{k:04d}.jpg" for c in ("bird", "truck") for k in range(40)}
    fresh = {}
    with tarfile.open(data_root / "cifar10" / "test.tar.gz") as tar:
        for m in tar:
            if m.name in wanted:
                fresh[m.name.removeprefix("test/")] = decode_image(tar.extractfile(m).read(), m.name)
    assert len(fresh) == 80
    index = {name: i for i, name in enumerate(cached.names)}
    for name, image in fresh.items():
        assert torch.equal(cached[index[name]][0], image), name
    assert cached.fingerprint() == cifar10("test", root=data_root).fingerprint()


def test_kodak_sizes_and_resize_policy(data_root: Path) -> None:
    native = kodak(root=data_root)
    assert isinstance(native, ImageFileDataset) and len(native) == 24
    shapes = [tuple(native[i][0].shape) for i in range(len(native))]
    assert sorted(set(shapes)) == [(3, 512, 768), (3, 768, 512)] and shapes.count((3, 768, 512)) == 6
    with pytest.raises(ValueError, match=r"kodim\d\d\.png is 768x512.*size="):
        native.to_arrays()
    small = kodak(root=data_root, size=64)
    assert small.images.shape == (24, 3, 64, 64) and small.labels.tolist() == [0] * 24
    expected = pil_to_uint8(center_crop_arr(Image.open(data_root / "kodak" / "kodim01.png").convert("RGB"), 64))
    assert torch.equal(small[0][0], expected)


# ---------------------------------------------------------------- synthetic, subsets, loaders
def test_synthetic_is_deterministic() -> None:
    a, b, c = synthetic(16, size=8, seed=1), synthetic(16, size=8, seed=1), synthetic(16, size=8, seed=2)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.images.std() > 5  # not a constant image


def test_subsets_are_deterministic() -> None:
    ds = synthetic(200, size=8, num_classes=4, seed=1)
    r1, r2 = ds.random_subset(50, seed=3), ds.random_subset(50, seed=3)
    assert np.array_equal(r1.images, r2.images) and len(r1) == 50
    assert r1.fingerprint() != ds.random_subset(50, seed=4).fingerprint()
    per_class = ds.first_per_class(5)
    assert np.bincount(per_class.labels).tolist() == [5] * 4
    assert all((ds.labels[: np.flatnonzero(ds.labels == c)[4] + 1] == c).sum() == 5 for c in range(4))
    assert np.array_equal(ds[:10].images, ds.images[:10]) and np.array_equal(ds.head(10).labels, ds.labels[:10])
    with pytest.raises(ValueError, match="asked for 500"):
        ds.head(500)
    with pytest.raises(IndexError, match="beyond its 200"):
        ds[:201]
    with pytest.raises(ValueError, match="fewer than 100"):
        ds.first_per_class(100)
    sub = build_dataset("synthetic", n=200, size=8, num_classes=4, seed=1, head=100, per_class=3)
    assert np.array_equal(sub.images, ds.head(100).first_per_class(3).images)
    drawn = build_dataset("synthetic", n=200, size=8, num_classes=4, seed=1, random=20, subset_seed=7)
    assert np.array_equal(drawn.images, ds.random_subset(20, seed=7).images)


def test_loader_collates_uint8_deterministically() -> None:
    ds = synthetic(30, size=8, num_classes=3)
    first = [(x.clone(), y.clone()) for x, y in make_loader(ds, 8, shuffle=True, seed=5)]
    again = list(make_loader(ds, 8, shuffle=True, seed=5))
    other = next(iter(make_loader(ds, 8, shuffle=True, seed=6)))
    images, labels = first[0]
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 8, 8) and labels.dtype == torch.int64
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(images, other[0])
    seen = torch.cat([y for _, y in first])
    assert sorted(seen.tolist()) == sorted(ds.labels.tolist())  # one epoch covers every item once
    plain = next(iter(make_loader(ds, 4)))
    assert torch.equal(plain[0], torch.from_numpy(ds.images[:4]))


def test_npz_round_trip(tmp_path: Path) -> None:
    ds = synthetic(12, size=8, num_classes=3)
    np.savez(tmp_path / "batch.npz", ds.images.transpose(0, 2, 3, 1), ds.labels)
    back = build_dataset("npz", path=tmp_path / "batch.npz")
    assert np.array_equal(back.images, ds.images) and np.array_equal(back.labels, ds.labels)
    assert back.fingerprint() == ArrayDataset(ds.images, ds.labels, back.classes).fingerprint()
    np.savez(tmp_path / "named.npz", arr_0=ds.images.transpose(0, 2, 3, 1), labels=ds.labels)
    assert np.array_equal(read_npz(tmp_path / "named.npz").labels, ds.labels)
    assert read_npz(tmp_path / "named.npz", size=4).images.shape == (12, 3, 4, 4)
    np.savez(tmp_path / "nolabels.npz", ds.images.transpose(0, 2, 3, 1))
    assert read_npz(tmp_path / "nolabels.npz").labels.tolist() == [0] * 12
    np.savez(tmp_path / "bad.npz", images=ds.images)
    with pytest.raises(KeyError, match=r"bad\.npz.*arr_0"):
        read_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "float.npz", ds.images.astype(np.float32))
    with pytest.raises(ValueError, match=r"float\.npz.*uint8"):
        read_npz(tmp_path / "float.npz")


# ---------------------------------------------------------------- folders, archives, conversions
def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "cats" / "a.png")
    Image.new("L", (8, 8), 77).save(root / "dogs" / "gray.png")
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (10, 20, 30, 255))
    rgba.save(root / "dogs" / "rgba.png")
    return root


def _tar(root: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    return out


def test_folder_conversions_and_tar(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    ds = read_image_folder(root)
    assert ds.classes == ["cats", "dogs"] and ds.labels.tolist() == [0, 1, 1]
    assert ds.names == ["cats/a.png", "dogs/gray.png", "dogs/rgba.png"]
    gray, rgba = ds.images[1], ds.images[2]
    assert (gray == 77).all()  # grayscale replicated to three channels
    assert (rgba[:, 0, 0] == 255).all()  # a fully transparent pixel is composited onto white
    assert rgba[:, 1, 1].tolist() == [10, 20, 30]  # an opaque pixel keeps its colour
    from_tar = read_image_tar(_tar(root, tmp_path / "tree.tar.gz"))
    assert np.array_equal(from_tar.images, ds.images) and from_tar.names == ds.names
    assert image_tar(tmp_path / "tree.tar.gz").fingerprint() == image_folder(root).fingerprint() == ds.fingerprint()


def test_resize_policy(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    Image.new("RGB", (16, 12), (1, 2, 3)).save(root / "cats" / "wide.png")
    with pytest.raises(ValueError, match=r"wide\.png is 12x16.*size="):
        read_image_folder(root)
    resized = read_image_folder(root, size=8)
    assert resized.images.shape == (4, 3, 8, 8) and resized.names[1] == "cats/wide.png"
    untouched = [decode_image(root / n, n).numpy() for n in ("cats/a.png", "dogs/gray.png", "dogs/rgba.png")]
    assert np.array_equal(resized.images[[0, 2, 3]], np.stack(untouched))  # already 8x8: left as they are
    assert (resized.images[1] == np.array([1, 2, 3], np.uint8)[:, None, None]).all()
    assert read_image_folder(root, size=4).images.shape == (4, 3, 4, 4)


def test_array_cache_tracks_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFMTOK_WORK_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path)
    first = image_folder(root)
    assert isinstance(first.images, np.memmap) and len(list((tmp_path / "cache" / "arrays").iterdir())) == 1
    Image.new("RGB", (8, 8), (201, 10, 10)).save(root / "cats" / "a.png")
    os.utime(root / "cats" / "a.png", ns=(1, 1))  # a new mtime, whatever the clock resolution
    changed = image_folder(root)
    assert changed.images[0, 0, 0, 0] == 201 and changed.fingerprint() != first.fingerprint()
    archive = _tar(root, tmp_path / "tree.tar")
    calls: list[Path] = []
    real = assets_mod.sha256_file
    monkeypatch.setattr(assets_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    a = image_tar(archive)
    assert image_tar(archive).fingerprint() == a.fingerprint() and len(calls) == 1  # hash remembered
    assert assets_mod.file_sha256(archive) == real(archive)
    _tar(_tree(tmp_path / "other"), archive)  # same path, new content
    os.utime(archive, ns=(2, 2))
    assert image_tar(archive).fingerprint() != a.fingerprint() and len(calls) == 2


# ---------------------------------------------------------------- bad input
def test_bad_inputs_get_clear_errors(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "cats" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        read_image_folder(root)
    with pytest.raises(ImageReadError, match=r"tree\.tar\.gz:cats/broken\.png"):
        read_image_tar(_tar(root, tmp_path / "tree.tar.gz"))
    truncated = io.BytesIO()
    Image.new("RGB", (64, 64), (5, 5, 5)).save(truncated, format="JPEG")
    (root / "dogs" / "cut.jpg").write_bytes(truncated.getvalue()[:200])
    with pytest.raises(ImageReadError, match=r"cut\.jpg"):
        decode_image(root / "dogs" / "cut.jpg", str(root / "dogs" / "cut.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        read_image_folder(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(ValueError, match="hold no files"):
        read_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="no image files"):
        read_loose_images(tmp_path / "empty" / "cls")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(ValueError, match=r"empty\.tar: the archive holds no image files"):
        read_image_tar(tmp_path / "empty.tar")
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.tar\.gz: not a readable tar archive"):
        read_image_tar(tmp_path / "junk.tar.gz")
    for call in (lambda: read_image_folder(tmp_path / "nowhere"), lambda: image_tar(tmp_path / "nowhere.tar.gz"),
                 lambda: read_npz(tmp_path / "nowhere.npz"), lambda: kodak(root=tmp_path / "nowhere"),
                 lambda: cifar10("test", root=tmp_path / "nowhere")):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            call()
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        torchvision_cifar10(tmp_path, split="test")
    with pytest.raises(ValueError, match="empty"):
        ArrayDataset(np.zeros((0, 3, 4, 4), np.uint8), [], ["a"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        ArrayDataset(np.zeros((2, 3, 4, 4), np.uint8), [0, 1], ["a"])
    with pytest.raises(ValueError, match="split must be"):
        cifar10("val", root=tmp_path)


def test_registry_and_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {"cifar10", "kodak", "folder", "tar", "npz", "synthetic", "torchvision_cifar10"}
    assert expected <= set(DATASETS.list())
    with pytest.raises(KeyError, match="did you mean 'cifar10'"):
        build_dataset("cifar100")
    monkeypatch.delenv("VFMTOK_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="VFMTOK_DATA is not set"):
        assets.data_root()
    monkeypatch.setenv("VFMTOK_DATA", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="absent"):
        assets.data_root()
    monkeypatch.setenv("VFMTOK_DATA", str(tmp_path))
    assert assets.data_root() == tmp_path
    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"


def test_incomplete_cifar10_copy_is_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    _tar(root, tmp_path / "data" / "cifar10" / "test.tar.gz")  # 3 images where CIFAR-10 test has 10,000
    with pytest.raises(ValueError, match=r"cifar10:test should hold 10,000 images; read 3"):
        cifar10("test", root=tmp_path / "data")
    ds = image_tar(tmp_path / "data" / "cifar10" / "test.tar.gz")  # an unnamed archive has no expected count
    assert len(ds) == 3 and ds.skipped == []
