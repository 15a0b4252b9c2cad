"""Class-conditional autoregressive models over tokenizer indices: LlamaGen's GPT and its sampler."""

from vfmtok.ar.gpt import AR_MODELS, GPT, GPTConfig, create_gpt, load_gpt_checkpoint
from vfmtok.ar.sampling import generate

__all__ = ["AR_MODELS", "GPT", "GPTConfig", "create_gpt", "generate", "load_gpt_checkpoint"]
