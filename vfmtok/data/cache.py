"""Decoded-array cache: decode an image source once, then memory-map it.

The key hashes the source's content (a file's sha256, or a folder's names, sizes and modification times)
and the resize policy, so a changed source is decoded again and an unchanged one loads in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vfmtok.assets import work_cache_dir
from vfmtok.data.arrays import ArrayDataset
from vfmtok.fileio import atomic_write, atomic_write_json, sha256_file, sha256_json

CACHE_VERSION = 1


def source_identity(path: str | Path) -> dict[str, Any]:
    """Content identity of a file (sha256) or folder (relative names, sizes, mtimes)."""
    path = Path(path).resolve()
    if path.is_file():
        return {"file": path.name, "sha256": sha256_file(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return {"folder": path.name, "listing_sha256": sha256_json(listing)}
    raise FileNotFoundError(f"image source not found: {path}")


def cached_arrays(identity: dict[str, Any], build: Callable[[], ArrayDataset]) -> ArrayDataset:
    """Return the cached arrays for ``identity``, calling ``build()`` and caching its result when absent."""
    folder = work_cache_dir("arrays") / sha256_json({"v": CACHE_VERSION, **identity})[:24]
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        images = np.load(folder / "images.npy", mmap_mode="r")
        return ArrayDataset(images, np.load(folder / "labels.npy"), meta["classes"], meta["source"])
    ds = build()
    atomic_write(folder / "images.npy", lambda p: _save_npy(p, np.ascontiguousarray(ds.images)))
    atomic_write(folder / "labels.npy", lambda p: _save_npy(p, ds.labels))
    atomic_write_json(meta_path, {"classes": ds.classes, "source": ds.source, "identity": identity,
                                  "shape": list(ds.images.shape)})  # written last: marks the entry complete
    return ds


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
