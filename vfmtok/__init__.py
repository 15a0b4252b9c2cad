"""vfmtok: a benchmark harness comparing image tokenizers for autoregressive image generation."""

__version__ = "0.1.0"

from vfmtok.checkpoint import from_pretrained, load_official  # noqa: E402
from vfmtok.factory import create_tokenizer, list_tokenizers, register_tokenizer  # noqa: E402
from vfmtok.interface import Decoded, Encoded, Tokenizer, TokenizerOutput, TokenizerSpec  # noqa: E402

__all__ = [
    "Decoded",
    "Encoded",
    "Tokenizer",
    "TokenizerOutput",
    "TokenizerSpec",
    "create_tokenizer",
    "from_pretrained",
    "list_tokenizers",
    "load_official",
    "register_tokenizer",
]
