"""FID throughput of our path against torch-fidelity's ``calculate_metrics`` on the same images and weights.

Both sides extract pool3 features of two CIFAR-10 halves and compute the FID, with every cache off.
Run: ``nox -s perf -- -k fidelity``; the ratio of the two means is the speed of our path relative to
torch-fidelity's.
"""

from __future__ import annotations

import pytest
import torch

from vfmtok.assets import MissingAssetError
from vfmtok.fid_inception import converted_weights_path
from vfmtok.metrics import reference
from vfmtok.metrics.inception import fid_extractor

N = 128  # images per side


class _Images(torch.utils.data.Dataset):
    """uint8 [3, H, W] items, the input torch-fidelity expects."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


@pytest.fixture(scope="module")
def halves(data_root) -> tuple[torch.Tensor, torch.Tensor]:
    from vfmtok.data import cifar10

    images = torch.from_numpy(cifar10("test", root=data_root).images[: 2 * N].copy())
    return images[:N], images[N:]


@pytest.fixture(scope="module")
def extractor():
    try:
        return fid_extractor()
    except MissingAssetError as e:
        pytest.skip(str(e))


def _ours(extractor, a: torch.Tensor, b: torch.Tensor) -> float:
    reference._recent.clear()  # no memoised sample features between rounds
    ref = reference.reference_statistics(b, extractor=extractor, cache=False)
    return reference.gfid(a, ref, extractor=extractor)["value"]


def _torch_fidelity(a: torch.Tensor, b: torch.Tensor) -> float:
    import torch_fidelity

    out = torch_fidelity.calculate_metrics(input1=_Images(a), input2=_Images(b), fid=True, cuda=False, cache=False,
                                           verbose=False, batch_size=64,
                                           feature_extractor_weights_path=str(converted_weights_path()))
    return out["frechet_inception_distance"]


@pytest.mark.bench
@pytest.mark.parametrize("path", ["vfmtok", "torch_fidelity"])
def test_fid_throughput(benchmark, extractor, halves, path: str) -> None:
    a, b = halves
    ours, theirs = (lambda: _ours(extractor, a, b)), (lambda: _torch_fidelity(a, b))
    run, other = (ours, theirs) if path == "vfmtok" else (theirs, ours)
    value = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    assert value == pytest.approx(other(), rel=1e-6)  # the same number either way
    benchmark.extra_info.update({"images": 2 * N, "threads": torch.get_num_threads(), "fid": value,
                                 "images_per_s_best": 2 * N / benchmark.stats.stats.min})
