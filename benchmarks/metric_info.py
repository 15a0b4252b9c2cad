"""What each reported metric means: direction, unit, decimals, display name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    """Display metadata of one metric key."""

    title: str
    higher_is_better: bool | None  # None: neither (e.g. a count)
    unit: str = ""
    decimals: int = 2

    def header(self) -> str:
        """Column header with an arrow and the unit, e.g. ``PSNR (dB) ↑``."""
        arrow = {True: " ↑", False: " ↓", None: ""}[self.higher_is_better]
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.title}{unit}{arrow}"


METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo("PSNR", True, "dB", 2),
    "ssim": MetricInfo("SSIM", True, "", 4),
    "lpips": MetricInfo("LPIPS", False, "", 4),
    "rfid": MetricInfo("rFID", False, "", 2),
    "codebook_usage": MetricInfo("usage", True, "%", 1),
    "codebook_perplexity": MetricInfo("perplexity", True, "", 1),
    "codebook_entropy_bits": MetricInfo("entropy", True, "bits", 2),
    "semantic_loss": MetricInfo("semantic loss", False, "", 4),
    "probe_top1": MetricInfo("probe top-1", True, "%", 2),
    "gfid": MetricInfo("gFID", False, "", 2),
    "sfid": MetricInfo("sFID", False, "", 2),
    "inception_score": MetricInfo("IS", True, "", 2),
    "precision": MetricInfo("precision", True, "", 3),
    "recall": MetricInfo("recall", True, "", 3),
    "kid": MetricInfo("KID ×10³", False, "", 2),
    "ar_train_loss": MetricInfo("AR train CE", False, "nats", 3),
    "encode_img_per_s": MetricInfo("encode", True, "img/s", 1),
    "decode_img_per_s": MetricInfo("decode", True, "img/s", 1),
    "gen_tokens_per_s": MetricInfo("AR sampling", True, "tok/s", 1),
    "steps_to_target": MetricInfo("AR steps to target gFID", False, "", 0),
}


def info(metric: str) -> MetricInfo:
    """Metadata of ``metric``; an unknown key is an error (a table must not guess a direction)."""
    try:
        return METRICS[metric]
    except KeyError:
        raise KeyError(f"unknown metric {metric!r}; add it to benchmarks/metric_info.py") from None
