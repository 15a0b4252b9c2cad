"""Streaming data benchmarks: peak RSS does not grow with N, input-pipeline rate, eval-recon time with VQ-16.

* ``test_recon_peak_rss_does_not_grow_with_n``: reconstructs N = 2,000 and N = 8,000 256 px JPEGs of an ImageFolder
  (CIFAR-10 test images upsampled) through :func:`evaluate_reconstruction_stream` (decode + ADM centre crop in 2
  DataLoader workers, a tiny 256 px tokenizer, PSNR/SSIM, shards, the final npz; rFID off so the Inception does not
  dominate), each N in a fresh process that reports its own ``ru_maxrss``; the two peaks must differ by < 200 MB.
  ``VFMTOK_BENCH_RSS_N="200,800"`` runs smaller sizes.
* ``test_input_pipeline_rate``: images/s of decode + centre crop for 0, 1 and 2 workers (best of 3; a
  pytest-benchmark, so it is in ``nox -s perf``'s table).
* ``test_eval_recon_vq16_time``: a few batches of ``vfmtok eval-recon``'s path with the full-size
  ``llamagen_vq_f16_k16384`` (random weights: timing only) at 256 px, rFID on, extrapolated to 2,000 images.

The other two are plain tests (``nox -s perf`` runs benchmarks only): run them with
``pytest tests/bench/test_bench_data.py -m bench -s``; results are printed and written to ``$VFMTOK_BENCH_OUT``
(default: the test's temp dir) as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bench.common import peak_memory_mb

pytestmark = pytest.mark.bench
REPO = Path(__file__).resolve().parents[2]
SIZE = 256
#: a 256 px test tokenizer cheap enough for thousands of images on a CPU (16 x 16 tokens, K = 64)
TINY_256 = {"image_size": 256, "ch": 8, "norm_groups": 4, "ch_mult": (1, 2, 2, 4, 4)}

CHILD = """
import json, resource, sys, time, torch
from vfmtok.data import open_images
from vfmtok.evaluation.recon import evaluate_reconstruction_stream
from vfmtok.evaluation.resolve import resolve_tokenizer
folder, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tok = resolve_tokenizer("test_llamagen_vq", **json.loads(sys.argv[4]))
start = time.time()
m = evaluate_reconstruction_stream(tok, open_images(folder, size=256), num=n, batch_size=32, out_dir=out,
                                   workers=2, fid=False)
print(json.dumps({"n": m["n"], "seconds": time.time() - start, "psnr": m["psnr"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _jpeg_folder(root: Path, n: int, data_root: Path) -> Path:
    """``n`` 256 px JPEGs (CIFAR-10 images, every class, upsampled bicubic) in class folders."""
    from PIL import Image

    from vfmtok.data import cifar10

    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) >= n:
        return root
    test = cifar10("test", root=data_root)
    train = cifar10("train", root=data_root) if n > len(test) else None
    stride = max(len(test) // n, 1)  # the splits are class-sorted: stride through them to cover every class
    for i in range(n):
        ds, j = (test, i * stride) if i < len(test) else (train, i - len(test))
        image, label = ds[j]
        folder = root / ds.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).resize((SIZE, SIZE), Image.BICUBIC).save(
            folder / f"{i:06d}.jpg", quality=90)
    return root


def _report(tmp_path: Path, name: str, result: dict) -> None:
    out = Path(os.environ.get("VFMTOK_BENCH_OUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{name}: {json.dumps(result)}")


def test_recon_peak_rss_does_not_grow_with_n(tmp_path: Path, data_root: Path) -> None:
    sizes = [int(x) for x in os.environ.get("VFMTOK_BENCH_RSS_N", "2000,8000").split(",")]
    folder = _jpeg_folder(tmp_path / "jpegs", max(sizes), data_root)
    runs = {}
    for n in sizes:  # a fresh process per N: ru_maxrss is its own peak
        proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(n), str(tmp_path / f"out{n}"),
                               json.dumps(TINY_256)], capture_output=True, text=True, cwd=REPO, timeout=6 * 3600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    peaks = [runs[n]["peak_rss_mb"] for n in sizes]
    _report(tmp_path, "recon_peak_rss", {"runs": runs, "difference_mb": max(peaks) - min(peaks)})
    assert max(peaks) - min(peaks) < 200, runs


@pytest.fixture(scope="module")
def pipeline_images(tmp_path_factory: pytest.TempPathFactory, data_root: Path):
    from vfmtok.data import open_images

    n = int(os.environ.get("VFMTOK_BENCH_PIPELINE_N", "512"))
    return open_images(_jpeg_folder(tmp_path_factory.mktemp("jpegs"), n, data_root), size=SIZE)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_input_pipeline_rate(benchmark, pipeline_images, workers: int) -> None:
    """JPEG decode + centre crop to 256 px through the evaluation loader (batches of 32), best of 3."""
    from vfmtok.data import image_loader

    n = len(pipeline_images)

    def run() -> int:
        return sum(len(x) for x, _ in image_loader(pipeline_images, 32, workers=workers, indices=range(n)))

    assert benchmark.pedantic(run, rounds=3, iterations=1) == n
    benchmark.extra_info.update({"images": n, "image_size": SIZE, "workers": workers, "cpu_count": os.cpu_count(),
                                 "images_per_s_best": n / benchmark.stats.stats.min, **dict([peak_memory_mb()])})


def test_eval_recon_vq16_time(tmp_path: Path, data_root: Path) -> None:
    from vfmtok.data import open_images
    from vfmtok.evaluation.recon import evaluate_reconstruction_stream
    from vfmtok.evaluation.resolve import resolve_tokenizer

    batch, batches = int(os.environ.get("VFMTOK_BENCH_VQ16_BATCH", "8")), 2
    ds = open_images(_jpeg_folder(tmp_path / "jpegs", batch * batches, data_root), size=SIZE)
    tok = resolve_tokenizer("llamagen_vq_f16_k16384", random_ok=True)
    start = time.perf_counter()
    m = evaluate_reconstruction_stream(tok, ds, num=batch * batches, batch_size=batch, out_dir=tmp_path / "vq16",
                                       fid=True)
    seconds = time.perf_counter() - start
    per_image = seconds / m["n"]
    _report(tmp_path, "eval_recon_vq16", {
        "n_measured": m["n"], "batch_size": batch, "seconds": seconds, "seconds_per_image": per_image,
        "extrapolated_seconds_for_2000": per_image * 2000, "rfid_computed": m["rfid"] is not None,
        "note": "random VQ-16 weights (timing only); includes Inception on real and reconstructed images"})
