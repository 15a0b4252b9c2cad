"""One spec per reported metric key: display, units, regression gate and the table columns it fills.

Adding a metric touches two files: the library function that measures it returns one more
:class:`vfmtok.metrics.result.MetricResult` under the new key, and :data:`METRICS` below gets its spec (title,
direction, unit, decimals, scale, tolerance, columns). Stages turn results into rows generically
(:func:`benchmarks.records.stage_rows`), records validate keys here, the regression gate reads the tolerances and
the tables (:mod:`benchmarks.tables`) read the columns: nothing else names the key. Cached stage results predate a
new metric: bump the stage's version (``benchmarks.stages.STAGE_VERSIONS``) to recompute them.

A table's columns are its column groups in order, and within a group the metrics that name it, in the order of
:data:`METRICS`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: (table name, column group label) of :mod:`benchmarks.tables`
Placement = tuple[str, str]
RECONSTRUCTION: tuple[Placement, ...] = (("reconstruction", ""),)
CODEBOOK: tuple[Placement, ...] = (("codebook", ""),)
GENERATION: tuple[Placement, ...] = (("generation", "cfg=1"), ("generation", "best cfg"))
THROUGHPUT: tuple[Placement, ...] = (("throughput", ""),)


@dataclass(frozen=True)
class MetricSpec:
    """Everything the harness knows about one metric key."""

    title: str
    higher_is_better: bool | None  # None: neither (e.g. a count)
    unit: str = ""
    decimals: int = 2
    scale: float = 1.0  # reported value = the library's value x scale (fractions as %, KID x 10^3)
    #: allowed worsening in the regression gate (absolute, reported units); None: never gated (it measures the
    #: machine, not the code). Sized for the smoke preset's tiny sample counts (16-32 images per FID, 32 probe
    #: images) and float differences between CPUs, so that only real breakage trips the gate.
    tolerance: float | None = None
    columns: tuple[Placement, ...] = ()

    @property
    def gated(self) -> bool:
        """Whether the regression gate compares this metric."""
        return self.tolerance is not None

    def header(self) -> str:
        """Column header with an arrow and the unit, e.g. ``PSNR (dB) ↑``."""
        arrow = {True: " ↑", False: " ↓", None: ""}[self.higher_is_better]
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.title}{unit}{arrow}"


METRICS: dict[str, MetricSpec] = {
    "psnr": MetricSpec("PSNR", True, "dB", 2, tolerance=0.5, columns=RECONSTRUCTION),
    "ssim": MetricSpec("SSIM", True, "", 4, tolerance=0.02, columns=RECONSTRUCTION),
    "lpips": MetricSpec("LPIPS", False, "", 4, tolerance=0.05, columns=RECONSTRUCTION),
    "rfid": MetricSpec("rFID", False, "", 2, tolerance=15.0, columns=RECONSTRUCTION),
    "gfid": MetricSpec("gFID", False, "", 2, tolerance=25.0, columns=GENERATION),
    "kid": MetricSpec("KID ×10³", False, "", 2, scale=1e3, tolerance=5.0, columns=RECONSTRUCTION + GENERATION),
    "sfid": MetricSpec("sFID", False, "", 2, tolerance=25.0),
    "inception_score": MetricSpec("IS", True, "", 2, tolerance=0.5, columns=GENERATION),
    "precision": MetricSpec("precision", True, "", 3, tolerance=0.25, columns=GENERATION),
    "recall": MetricSpec("recall", True, "", 3, tolerance=0.25, columns=GENERATION),
    "codebook_usage": MetricSpec("usage", True, "%", 1, scale=100.0, tolerance=10.0,
                                 columns=RECONSTRUCTION + CODEBOOK),
    "codebook_perplexity": MetricSpec("perplexity", True, "", 1, tolerance=5.0, columns=CODEBOOK),
    "codebook_entropy_bits": MetricSpec("entropy", True, "bits", 2, tolerance=0.5, columns=CODEBOOK),
    "semantic_loss": MetricSpec("semantic loss", False, "", 4, tolerance=0.05, columns=RECONSTRUCTION),
    "probe_top1": MetricSpec("probe top-1", True, "%", 2, scale=100.0, tolerance=10.0,
                             columns=(("probing", "pre-quant latents"), ("probing", "quantized codes"))),
    "train_psnr": MetricSpec("PSNR along tokenizer training", True, "dB", 2),
    "ar_train_loss": MetricSpec("AR train CE", False, "nats", 3),
    "encode_img_per_s": MetricSpec("encode", True, "img/s", 1, columns=THROUGHPUT),
    "decode_img_per_s": MetricSpec("decode", True, "img/s", 1, columns=THROUGHPUT),
    "gen_tokens_per_s": MetricSpec("AR sampling", True, "tok/s", 1,
                                   columns=(("throughput", "KV cache"), ("throughput", "no cache"))),
    "steps_to_target": MetricSpec("AR steps to target gFID", False, "", 0,
                                  columns=(("convergence", "seed 0"), ("convergence", "seed 1"))),
}


def spec(metric: str) -> MetricSpec:
    """The spec of ``metric``; an unknown key is an error (a table must not guess a direction)."""
    try:
        return METRICS[metric]
    except KeyError:
        raise KeyError(f"unknown metric {metric!r}; add it to benchmarks/metric_specs.py") from None
