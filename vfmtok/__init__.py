"""vfmtok: a benchmark harness comparing image tokenizers for autoregressive image generation.

DESIGN: the library is layered, and every import points down (no module imports one above it, no import cycle):

1. Ground: ``registry``, ``fileio`` (atomic writes, the one file / JSON / state-dict hasher), ``images``,
   ``distributed``, ``progress``, ``version``, ``errors``, ``quantizers``.
2. What is on disk: ``store`` (the one content-addressed, verified cache every cache uses), ``assets`` (where
   data and weights come from), ``checkpoint`` (file formats: ``save_pretrained``, released-file selection).
3. Inputs and models below the tokenizer: ``data`` (readers, lazily decoded streams, deterministic subsets),
   ``fid_inception`` and ``lpips_vgg`` (the FID and LPIPS networks from offline weights), ``losses``, ``ar`` (the
   LlamaGen-style GPT, its sampler, released-GPT loaders and sampling protocols).
4. The tokenizer contract: ``encoders`` (frozen vision encoders and their feature cache), ``interface``
   (:class:`Tokenizer`, everything the harness may ask of a tokenizer), ``factory`` (the registry, fed by the
   ``vfmtok.tokenizers`` entry points); beside it ``token_cache``, ``metrics`` and ``train``, which use only the
   contract.
5. Tokenizer families: ``models`` (VFMTok); the baselines are a separate package registered like any third-party
   family. ``pretrained`` (``from_pretrained``, ``load_official``) sits above them.
6. Paper-scale evaluation and the command line: ``evaluation`` (streamed, sharded, resumable), ``commands``,
   ``cli``. The benchmark harness (``benchmarks``) is above the library and adds ``vfmtok bench`` through the
   ``vfmtok.commands`` entry points.
"""

from vfmtok.factory import create_tokenizer, list_tokenizers, register_tokenizer
from vfmtok.interface import Decoded, Encoded, Tokenizer, TokenizerOutput, TokenizerSpec
from vfmtok.pretrained import from_pretrained, load_official
from vfmtok.version import __version__

__all__ = [
    "__version__",
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
