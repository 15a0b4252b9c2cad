"""Decoded-array cache: decode an image source once, then memory-map it.

An entry of the store (:mod:`vfmtok.store`) of kind ``arrays`` under the work cache (``$VFMTOK_WORK_CACHE``, else
``~/.cache/vfmtok``) holding ``images.npy`` (uint8 [N, 3, H, W]), ``labels.npy`` (int64 [N]), ``meta.json``
(classes, file names, the key's inputs) and ``MANIFEST.json`` (written last). Its key hashes the source's content
identity -- an archive's sha256 (itself remembered per (path, size, mtime) so an unchanged archive is not
re-hashed), or a folder's relative names, sizes and modification times -- together with the reader and the
resize policy. So a changed source is decoded again and an unchanged one loads in seconds; a damaged entry is
moved aside and decoded again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vfmtok import store
from vfmtok.assets import file_sha256, work_cache_dir
from vfmtok.data.arrays import ArrayDataset
from vfmtok.fileio import atomic_save_npy, atomic_write_json, sha256_json

CACHE_VERSION = 2  # 2: entries of the verified store
KIND = "arrays"


def source_identity(path: str | Path) -> dict[str, Any]:
    """Content identity of a file (sha256) or folder (relative names, sizes, mtimes of every file)."""
    path = Path(path)
    if path.is_file():
        return {"file": path.name, "sha256": file_sha256(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = [(p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return {"folder": path.resolve().name, "listing_sha256": sha256_json(listing)}
    raise FileNotFoundError(f"image source not found: {path}")


def _store() -> store.Store:
    return store.Store(work_cache_dir(KIND).parent)


def cache_entry(identity: dict[str, Any]) -> Path:
    """The cache folder of ``identity`` (which need not exist yet)."""
    return _store().entry(KIND, CACHE_VERSION, identity).path


def cached_arrays(identity: dict[str, Any], build: Callable[[], ArrayDataset]) -> ArrayDataset:
    """The cached arrays of ``identity`` (memory-mapped); on a miss call ``build()`` and cache its result."""

    def write(folder: Path) -> None:
        ds = build()
        atomic_save_npy(folder / "images.npy", np.ascontiguousarray(ds.images))
        atomic_save_npy(folder / "labels.npy", ds.labels)
        atomic_write_json(folder / "meta.json", {"classes": ds.classes, "source": ds.source, "identity": identity,
                                                 "shape": list(ds.images.shape), "names": ds.names})

    label = f"arrays {identity.get('file') or identity.get('folder') or ''}".strip()
    folder = _store().get_or_build(KIND, CACHE_VERSION, identity, write, label)
    return _load(folder)  # the memory-mapped copy, exactly as a later load would serve it


def _load(folder: Path) -> ArrayDataset:
    meta = json.loads((folder / "meta.json").read_text())
    images = np.load(folder / "images.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    return ArrayDataset(images, labels, meta["classes"], meta["source"], meta.get("names"))
