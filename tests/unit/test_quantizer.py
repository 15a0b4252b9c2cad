"""The optional entropy term of the vector quantizer (off in every official recipe)."""

from __future__ import annotations

import math

import pytest
import torch

from vfmtok.quantizers.vq import VectorQuantizer


def _vq(weight: float) -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(64, 8, l2_norm=True, entropy_weight=weight, entropy_temperature=0.001).train()


def test_entropy_term_is_off_by_default() -> None:
    out = _vq(0.0)(torch.randn(2, 16, 8))
    assert set(out.losses) == {"codebook", "commit"}


def test_entropy_term_rewards_spread_and_penalises_collapse() -> None:
    vq = _vq(1.0)
    codes = vq.codes().detach()
    spread = vq(codes[:32].reshape(1, 32, 8)).losses["entropy"]  # 32 tokens on 32 different codes
    collapsed = vq(codes[:1].expand(32, -1).reshape(1, 32, 8)).losses["entropy"]  # all on one code
    assert float(spread) == pytest.approx(-math.log(32), abs=1e-3)
    assert float(collapsed) == pytest.approx(0.0, abs=1e-3)


def test_entropy_term_reaches_the_inputs() -> None:
    z = torch.randn(2, 16, 8, requires_grad=True)
    _vq(0.5)(z).losses["entropy"].backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
