"""Class-conditional autoregressive models over tokenizer indices: LlamaGen's GPT, its sampler, released weights
and named sampling protocols."""

from vfmtok.ar.gpt import AR_MODELS, GPT, GPTConfig, create_gpt, load_gpt_checkpoint
from vfmtok.ar.official import infer_gpt_size, load_official_gpt
from vfmtok.ar.protocols import SamplingProtocol, get_protocol, list_protocols
from vfmtok.ar.sampling import generate

__all__ = ["AR_MODELS", "GPT", "GPTConfig", "SamplingProtocol", "create_gpt", "generate", "get_protocol",
           "infer_gpt_size", "list_protocols", "load_gpt_checkpoint", "load_official_gpt"]
