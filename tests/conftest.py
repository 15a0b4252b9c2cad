"""Shared fixtures: the data root, determinism, small synthetic batches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    env = os.environ.get("VFMTOK_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    return next((p for p in candidates if (p / "cifar10").is_dir()), None)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding cifar10/ and kodak/ (``VFMTOK_DATA``); tests needing real data skip without it."""
    root = _data_root()
    if root is None:
        pytest.skip("real test data not found: set VFMTOK_DATA to the folder holding cifar10/ and kodak/")
    return root


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test session writes caches under a temp dir, except the asset cache, which is shared."""
    monkeypatch.setenv("VFMTOK_WORK_CACHE", str(tmp_path_factory.getbasetemp() / "work-cache"))


def random_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [B, 3, size, size] smooth random images (low-frequency noise upsampled)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, max(size // 4, 1), max(size // 4, 1), generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (img * 255).round().to(torch.uint8)
