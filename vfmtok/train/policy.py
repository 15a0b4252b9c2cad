"""How a trainer uses the device: autocast precision, TF32, memory format and ``torch.compile``.

The defaults follow the official recipes on GPU and keep CPU runs exact:

* ``precision="auto"``: bf16 autocast on CUDA, float32 elsewhere (CPU runs stay bit-reproducible);
* TF32 matmuls and convolutions on CUDA unless ``precision="fp32"`` asks for full float32 (the FID network
  turns TF32 off for itself, :func:`vfmtok.metrics.inception.exact_math`);
* ``memory_format="auto"``: channels-last on CUDA for models with 2D convolutions (conv tokenizers and their
  discriminator), contiguous elsewhere;
* ``compile=True`` (opt-in): ``torch.compile`` of the training forward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


@dataclass(frozen=True)
class DevicePolicy:
    """The resolved choices for one device."""

    device: torch.device
    bf16: bool
    tf32: bool
    channels_last: bool
    compile: bool

    @classmethod
    def resolve(cls, device: torch.device | str, precision: str = "auto", memory_format: str = "auto",
                compile: bool = False) -> DevicePolicy:
        """The policy for ``device`` from a trainer's settings (see the module docstring)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
        device = torch.device(device)
        cuda = device.type == "cuda"
        return cls(device=device, bf16=precision == "bf16" or (precision == "auto" and cuda),
                   tf32=cuda and precision != "fp32",
                   channels_last=memory_format == "channels_last" or (memory_format == "auto" and cuda),
                   compile=compile)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the policy's device when ``bf16``, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def apply_math(self) -> None:
        """Allow TF32 in CUDA matmuls and convolutions when the policy says so (a process-wide setting)."""
        if self.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` in channels-last when the policy asks for it and the model has 2D convolutions."""
        if self.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model.to(memory_format=torch.channels_last)
        return model

    def prepare_images(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch [B, C, H, W] in the policy's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def wrap_forward(self, module: nn.Module) -> nn.Module:
        """``torch.compile(module)`` when compiling, else ``module``."""
        return torch.compile(module) if self.compile else module  # type: ignore[return-value]

    def adam_options(self) -> dict[str, bool]:
        """Fused Adam/AdamW kernels on CUDA."""
        return {"fused": True} if self.device.type == "cuda" else {}
