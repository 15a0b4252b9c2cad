"""Frozen feature encoders: the common output type, base class and registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vfmtok.fileio import sha256_state_dict
from vfmtok.registry import Registry


@dataclass(frozen=True)
class FeatureOutput:
    """Multi-level features of a frozen encoder.

    ``levels[i]`` is float [B, C_i, h_i, w_i]; levels may differ in width and size. The semantic target of
    VFMTok is the last level as tokens (row-major): float [B, h*w, C].
    """

    levels: list[torch.Tensor]

    @property
    def semantic_target(self) -> torch.Tensor:
        """float [B, N, C]: the last level flattened row-major."""
        return self.levels[-1].flatten(2).transpose(1, 2)

    @property
    def batch_size(self) -> int:
        """B."""
        return self.levels[0].shape[0]


class FrozenEncoder(nn.Module):
    """A pretrained network used as a fixed feature extractor.

    Always in eval mode, never requires gradients; takes images float [B, 3, H, W] in [-1, 1] (any size: the
    encoder applies its own resize and normalisation) and returns :class:`FeatureOutput`.

    Subclasses set ``name``, ``input_size``, ``level_channels`` and ``level_sizes`` and implement
    :meth:`extract`.
    """

    name: str = "encoder"
    input_size: int = 0
    level_channels: tuple[int, ...] = ()
    level_sizes: tuple[tuple[int, int], ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._weights_id: str | None = None

    def freeze(self) -> None:
        """No gradients, eval mode. Called at the end of subclass ``__init__``."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Frozen encoders stay in eval mode whatever ``mode`` is."""
        return super().train(False)

    @property
    def semantic_dim(self) -> int:
        """Channel width of the semantic target (the last level)."""
        return self.level_channels[-1]

    @property
    def semantic_grid(self) -> tuple[int, int]:
        """(h, w) of the last level."""
        return self.level_sizes[-1]

    def weights_id(self) -> str:
        """sha256 of the state dict (:func:`vfmtok.fileio.sha256_state_dict`): the identity of the weights."""
        if self._weights_id is None:
            self._weights_id = sha256_state_dict(self.state_dict())
        return self._weights_id

    def identity(self) -> dict[str, Any]:
        """What determines the features: encoder name, weights identity and input size."""
        return {"encoder": self.name, "weights": self.weights_id(), "input_size": self.input_size}

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """float [B, 3, H, W] in [-1, 1] -> levels (float [B, C_i, h_i, w_i])."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> FeatureOutput:
        """Multi-level features of images float [B, 3, H, W] in [-1, 1] (no gradients)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects images [B, 3, H, W], got {tuple(x.shape)}")
        with torch.no_grad():
            levels = [t.float() for t in self.extract(x.float())]
        return FeatureOutput(levels=levels)


#: registry of frozen encoders: ``fn(pretrained=..., input_size=..., **kw) -> FrozenEncoder``
ENCODERS: Registry[Callable[..., FrozenEncoder]] = Registry("encoder")


def register_encoder(name: str) -> Callable[[Callable[..., FrozenEncoder]], Callable[..., FrozenEncoder]]:
    """Decorator registering an encoder builder under ``name``."""
    return ENCODERS.register(name)


def create_encoder(name: str, seed: int = 0, **kwargs: Any) -> FrozenEncoder:
    """Build the frozen encoder registered as ``name``; ``None`` kwargs mean "use the default".

    With ``pretrained=False`` the random weights come from ``seed`` (the global RNG is left untouched), so
    the same name and seed always give the same encoder: a tokenizer rebuilt from its saved config gets
    back the encoder it was trained with, and feature-cache keys stay valid.
    """
    builder = ENCODERS.get(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if kwargs.get("pretrained", False) is False:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            enc = builder(**kwargs)
    else:
        enc = builder(**kwargs)
    enc.name = name
    return enc


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching ``pattern``."""
    return ENCODERS.list(pattern)
