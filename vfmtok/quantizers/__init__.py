"""Quantizers: l2-normalised and legacy vector quantization."""

from vfmtok.quantizers.vq import QuantizerOutput, VectorQuantizer

__all__ = ["QuantizerOutput", "VectorQuantizer"]
