"""Baseline tokenizers (taming VQGAN, LlamaGen VQ) behind the vfmtok interface."""
