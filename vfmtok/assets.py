"""Where data and weights come from. Nothing here touches the network."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the asset cache (``VFMTOK_CACHE``, default ``~/.cache/vfmtok``)."""
    return Path(os.environ.get("VFMTOK_CACHE", Path.home() / ".cache" / "vfmtok")).expanduser()


def work_cache_dir(kind: str) -> Path:
    """Cache of derived data (decoded arrays, features, statistics): ``VFMTOK_WORK_CACHE`` or the asset cache."""
    root = os.environ.get("VFMTOK_WORK_CACHE")
    return (Path(root).expanduser() if root else cache_dir()) / kind


def data_root() -> Path:
    """Folder holding the data sets (``VFMTOK_DATA``), e.g. ``cifar10/`` and ``kodak/``."""
    root = os.environ.get("VFMTOK_DATA")
    if not root:
        raise FileNotFoundError("VFMTOK_DATA is not set: point it at the folder holding cifar10/ and kodak/ "
                                "(or pass root=... explicitly)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"VFMTOK_DATA={root!r} is not a directory")
    return path
