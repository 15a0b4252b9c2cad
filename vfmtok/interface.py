"""The shared tokenizer interface: one base class and its frozen dataclasses.

Every tokenizer (VFMTok, VQGAN, LlamaGen VQ, ...) is a :class:`Tokenizer`. Shapes:

* ``encode(x float[B,3,H,W] in [-1,1]) -> Encoded(indices int64[B,L] | None, latents float[B,L,D], aux)``
* ``decode(latents float[B,L,D]) -> Decoded(image float[B,3,H,W], aux)``
* ``decode_indices(indices int64[B,L]) -> Decoded``
* ``forward(x) -> TokenizerOutput(recon, indices, losses, logs)`` (training path)
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vfmtok.checkpoint import load_state_dict_strict, save_pretrained
from vfmtok.images import to_model_range, to_uint8

if TYPE_CHECKING:  # for the annotation only: the encoders package loads torch-fidelity and timm
    from vfmtok.encoders.base import FrozenEncoder


@dataclass(frozen=True)
class TokenizerSpec:
    """What a tokenizer is, saved with every checkpoint and results record."""

    name: str
    image_size: int
    num_tokens: int
    latent_dim: int
    codebook_size: int | None  # None for continuous tokenizers
    token_grid: tuple[int, int] | None  # (h, w) for grid tokenizers; None for query-ordered tokens
    encoder: str | None = None  # frozen encoder name, if any
    trainable_params: int = 0
    frozen_params: int = 0

    @property
    def is_discrete(self) -> bool:
        """True when the tokenizer emits indices into a codebook."""
        return self.codebook_size is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["token_grid"] = list(self.token_grid) if self.token_grid else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerSpec:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["token_grid"] = tuple(d["token_grid"]) if d.get("token_grid") else None
        return cls(**d)


@dataclass(frozen=True)
class TokenLayout:
    """How a tokenizer's ``L`` tokens are arranged, for the GPT's positions and for figures.

    ``kind="grid"``: raster order over a ``grid`` of image patches. ``kind="query"``: learned query tokens with no
    fixed image location, laid out on ``grid`` (``grid[0] * grid[1] == L``) for 2-D position encodings.
    """

    kind: str  # "grid" | "query"
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        if self.kind not in ("grid", "query"):
            raise ValueError(f"token layout kind must be 'grid' or 'query', got {self.kind!r}")

    @property
    def num_tokens(self) -> int:
        """Tokens per image."""
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class Encoded:
    """Output of :meth:`Tokenizer.encode`."""

    indices: torch.Tensor | None  # int64 [B, L]; None for continuous tokenizers
    latents: torch.Tensor  # float [B, L, D]: quantized codes (discrete) or continuous latents
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. "pre_quant" float [B, L, D]


@dataclass(frozen=True)
class Decoded:
    """Output of :meth:`Tokenizer.decode` / :meth:`Tokenizer.decode_indices`."""

    image: torch.Tensor  # float [B, 3, H, W], nominally [-1, 1] (not clamped)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenizerOutput:
    """Output of the training path :meth:`Tokenizer.forward`.

    ``losses`` are unweighted scalar terms by name (e.g. ``codebook``, ``commit``, ``semantic``);
    the trainer multiplies them by configured weights. The pixel/perceptual/GAN losses are the
    trainer's, computed from ``recon``.
    """

    recon: torch.Tensor  # float [B, 3, H, W]
    indices: torch.Tensor | None  # int64 [B, L]
    losses: dict[str, torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


class Tokenizer(nn.Module, abc.ABC):
    """Base class of every image tokenizer.

    Subclasses implement :meth:`encode`, :meth:`decode`, :meth:`codebook`, :meth:`forward` and
    :meth:`describe`. Frozen sub-modules (a pretrained encoder) are named in ``frozen_modules``:
    they stay in eval mode, receive no gradient and are excluded from checkpoints.

    Optional parts of the contract, with defaults that suit a plain tokenizer trained from pixels:

    * :attr:`frozen_encoder`: the frozen vision encoder whose features training reads (the harness caches them);
    * :meth:`token_layout`: grid or query tokens, and the grid the GPT lays them out on;
    * :meth:`extra_metrics`: the tokenizer's own evaluation numbers (VFMTok's semantic loss);
    * :meth:`adaptive_weight_layer`: the decoder weight the adaptive GAN weight differentiates through.

    The harness uses only this contract, so a new family is one module that subclasses :class:`Tokenizer` and
    registers its entry points (``vfmtok.register_tokenizer``).
    """

    #: attribute names of frozen sub-modules (kept in eval mode, not trained, not saved)
    frozen_modules: tuple[str, ...] = ()
    #: whether ``encode`` takes images of any size (resized inside, as the official VFMTok does)
    accepts_any_size: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.registry_name: str = type(self).__name__.lower()
        self.init_kwargs: dict[str, Any] = {}

    # ----------------------------------------------------------------- to implement
    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Architecture facts for the spec: image_size, num_tokens, latent_dim, codebook_size, token_grid, encoder."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> Encoded:
        """float [B,3,H,W] in [-1,1] -> :class:`Encoded`."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> Decoded:
        """float [B,L,D] -> :class:`Decoded`."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        """Training path: reconstruct ``x`` and return the tokenizer's own loss terms by name."""

    def codebook(self) -> torch.Tensor:
        """float [K, D]: the codes as the decoder sees them (after l2-normalisation where used)."""
        raise NotImplementedError(f"{self.registry_name} is continuous: it has no codebook")

    @property
    def frozen_encoder(self) -> FrozenEncoder | None:
        """The frozen vision encoder this tokenizer reads features from, or None."""
        return None

    def token_layout(self) -> TokenLayout:
        """How the tokens are arranged; grid tokenizers give their ``token_grid`` in raster order."""
        grid = self.describe()["token_grid"]
        if grid is None:
            raise NotImplementedError(f"{self.registry_name} has no token grid: override token_layout()")
        return TokenLayout("grid", tuple(grid))

    def extra_metrics(self, x: torch.Tensor) -> dict[str, float]:
        """The tokenizer's own evaluation numbers on float images ``x`` [B,3,H,W] in [-1, 1], by metric key."""
        return {}

    def adaptive_weight_layer(self) -> torch.Tensor | None:
        """The decoder's last weight, for the adaptive GAN loss weight (taming); None when there is none."""
        return None

    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """int64 [B, L] -> float [B, L, D] codebook lookup."""
        self._check_indices(indices)
        return self.codebook()[indices]

    # ----------------------------------------------------------------- shared behaviour
    @property
    def spec(self) -> TokenizerSpec:
        """The frozen description of this tokenizer."""
        trainable = sum(p.numel() for _, p in self.trainable_named_parameters())
        total = sum(p.numel() for p in self.parameters())
        return TokenizerSpec(name=self.registry_name, trainable_params=trainable, frozen_params=total - trainable,
                             **self.describe())

    def decode_indices(self, indices: torch.Tensor) -> Decoded:
        """int64 [B, L] -> :class:`Decoded`; equals ``decode(encode(x).latents)`` in eval mode."""
        return self.decode(self.indices_to_latents(indices))

    def _check_indices(self, indices: torch.Tensor) -> None:
        spec = self.describe()
        if spec["codebook_size"] is None:
            raise TypeError(f"{self.registry_name} is continuous: it has no token indices")
        if indices.dtype != torch.int64 or indices.dim() != 2 or indices.shape[1] != spec["num_tokens"]:
            raise ValueError(f"expected int64 indices of shape [B, {spec['num_tokens']}], "
                             f"got {indices.dtype} {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= spec["codebook_size"]):
            raise ValueError(f"token indices must lie in [0, {spec['codebook_size']}), "
                             f"got [{int(indices.min())}, {int(indices.max())}]")

    def _frozen(self) -> list[nn.Module]:
        return [getattr(self, n) for n in self.frozen_modules if getattr(self, n, None) is not None]

    def train(self, mode: bool = True) -> Tokenizer:
        """Set train mode; frozen sub-modules always stay in eval mode."""
        super().train(mode)
        for m in self._frozen():
            m.eval()
        return self

    def freeze_frozen_modules(self) -> None:
        """Mark the frozen sub-modules: no gradient, eval mode. Call at the end of ``__init__``."""
        for m in self._frozen():
            m.requires_grad_(False)
            m.eval()

    def _is_frozen_key(self, key: str) -> bool:
        return any(key == n or key.startswith(n + ".") for n in self.frozen_modules)

    def trainable_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs the optimizer should see: everything outside the frozen modules."""
        for name, p in self.named_parameters():
            if not self._is_frozen_key(name):
                yield name, p

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state to checkpoint: the full state dict minus the frozen modules."""
        return {k: v for k, v in self.state_dict().items() if not self._is_frozen_key(k)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`trainable_state_dict`; missing or unexpected keys raise with their names."""
        load_state_dict_strict(self, state, ignore_missing=self._is_frozen_key)

    # ----------------------------------------------------------------- uint8 harness edges
    @torch.inference_mode()
    def tokenize(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 [B,3,H,W] -> int64 [B,L] (eval-mode encode).

        A numpy array is accepted as uint8 [B,3,H,W] or [B,H,W,3] (the ADM npz layout). Images must already
        be ``spec.image_size`` square: :func:`vfmtok.images.resize_uint8` applies the evaluation resize.
        """
        if self.describe()["codebook_size"] is None:
            raise TypeError(f"{self.registry_name} is continuous: it has no token indices (use reconstruct)")
        indices = self.encode(self.prepare(images)).indices
        if indices is None:
            raise TypeError(f"{self.registry_name} is continuous: it has no token indices")
        return indices

    @torch.inference_mode()
    def detokenize(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """int64 [B,L] -> uint8 [B,3,H,W] (a numpy integer array is accepted too)."""
        if isinstance(indices, np.ndarray):
            if not np.issubdtype(indices.dtype, np.integer):
                raise TypeError(f"{self.registry_name}.detokenize expects integer token indices, got {indices.dtype}")
            indices = torch.from_numpy(indices.astype(np.int64))
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"{self.registry_name}.detokenize expects an int64 tensor [B, L] or a numpy integer "
                            f"array, got {type(indices).__name__}")
        return to_uint8(self.decode_indices(indices.to(self._device())).image)

    @torch.inference_mode()
    def reconstruct(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 [B,3,H,W] -> uint8 [B,3,H,W] through encode and decode (discrete or continuous)."""
        return to_uint8(self.decode(self.encode(self.prepare(images)).latents).image)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(self, images: torch.Tensor | np.ndarray, *, require_size: bool = False) -> torch.Tensor:
        """uint8 images (tensor or numpy, [B, 3, H, W] or [B, H, W, 3]) -> float [B, 3, H, W] in [-1, 1] on the
        model's device, with a clear error for anything else. Images must have the model's size unless the
        tokenizer ``accepts_any_size`` and ``require_size`` is False (``require_size``: reconstructions will be
        compared with the input pixels)."""
        size = self.describe()["image_size"]
        want = f"uint8 images [B, 3, {size}, {size}]"
        if isinstance(images, np.ndarray):
            if images.ndim == 4 and images.shape[-1] == 3 and images.shape[1] != 3:
                images = images.transpose(0, 3, 1, 2)  # [B, H, W, 3] -> [B, 3, H, W]
            images = torch.from_numpy(np.require(images, requirements=("C", "W")))
        elif not isinstance(images, torch.Tensor):
            raise TypeError(f"{self.registry_name} expects {want} as a torch tensor or numpy array, "
                            f"got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise TypeError(f"{self.registry_name} expects {want} in 0..255, got dtype {images.dtype}; convert "
                            "floats in [0, 1] with (x * 255).round().to(torch.uint8)")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.registry_name} expects {want}, got shape {tuple(images.shape)}"
                             + ("; add a batch axis with images[None]" if images.dim() == 3 else ""))
        if (require_size or not self.accepts_any_size) and images.shape[-2:] != (size, size):
            raise ValueError(f"{self.registry_name} expects {want}, got {tuple(images.shape)}; resize with "
                             f"vfmtok.images.resize_uint8(images, {size}) (the ADM centre crop)")
        return to_model_range(images.to(self._device()))

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str) -> None:
        """Write weights (safetensors), spec and constructor kwargs to ``directory``."""
        save_pretrained(self, directory)
