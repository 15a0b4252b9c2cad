"""Figures (matplotlib PNG) from a run record and its cached stage outputs.

* ``recon_<preset>.png``: originals above each tokenizer's reconstructions of the same images;
* ``samples_<preset>.png``: generated samples per tokenizer without and with guidance;
* ``convergence_<preset>.png``: gFID against AR training steps per tokenizer and GPT seed, and (when measured)
  evaluation PSNR against tokenizer training steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.records import curves  # noqa: E402

GRID_IMAGES = 8


def _strip(images: np.ndarray, n: int = GRID_IMAGES) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one [H, n*W, 3] strip of the first n images."""
    return np.concatenate(list(images[:n]), axis=1)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: byte-stable for the same pixels
    plt.close(fig)
    return path


def _grid(rows: list[tuple[str, np.ndarray]], path: Path) -> Path:
    fig, axes = plt.subplots(len(rows), 1, figsize=(GRID_IMAGES * 0.9, 1.1 * len(rows)), squeeze=False)
    for ax, (label, strip) in zip(axes[:, 0], rows):
        ax.imshow(strip, interpolation="nearest")
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def _load(path: str | None) -> np.ndarray | None:
    if not path or not Path(path).is_file():
        return None
    with np.load(path) as f:
        return f["arr_0"]


def render_figures(results_dir: str | Path, record: dict[str, Any], work_dir: str | Path) -> list[Path]:
    """Write the figures of ``record``; stage outputs it points to are read from ``work_dir``."""
    out = Path(results_dir) / "figures"
    preset, written = record["preset"], []
    arts = record["artifacts"]
    recon_rows = []
    for name, art in arts.items():
        recon = _load(art.get("recon_npz"))
        if recon is not None:
            if not recon_rows and _load(art.get("real_npz")) is not None:
                recon_rows.append(("original", _strip(_load(art["real_npz"]))))
            recon_rows.append((name, _strip(recon)))
    if recon_rows:
        written.append(_grid(recon_rows, out / f"recon_{preset}.png"))
    sample_rows = []
    for name, art in arts.items():
        for scale, path in sorted((art.get("samples_npz") or {}).items(), key=lambda kv: float(kv[0])):
            samples = _load(path)
            if samples is not None:
                sample_rows.append((f"{name}\ncfg {float(scale):g}", _strip(samples)))
    if sample_rows:
        written.append(_grid(sample_rows, out / f"samples_{preset}.png"))
    panels = [(p, label) for p, label in ((curves(record, "gfid", "ar_step"), ("AR training step", "gFID (cfg = 1)")),
                                          (curves(record, "train_psnr", "train_step"),
                                           ("tokenizer training step", "eval PSNR (dB)"))) if p]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
        for ax, (by_model, (xlabel, ylabel)) in zip(axes[0], panels):
            for (name, seed), points in sorted(by_model.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
                steps, values = zip(*points)
                label = name if seed is None else f"{name}, seed {seed}"
                ax.plot(steps, values, marker="o", linestyle="-" if not seed else "--", label=label)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, out / f"convergence_{preset}.png"))
    return written
