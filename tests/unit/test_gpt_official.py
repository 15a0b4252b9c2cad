"""The GPT matches the released LlamaGen / VFMTok checkpoints: key names, shapes, sizes, RoPE, loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vfmtok.ar import AR_MODELS, GPT, create_gpt, load_gpt_checkpoint
from vfmtok.ar.gpt import RMSNorm, apply_rope, rope_table_2d
from vfmtok.checkpoint import CheckpointKeyError


def _meta_gpt(name: str, num_tokens: int = 256) -> GPT:
    with torch.device("meta"):
        return create_gpt(name, vocab_size=16384, num_tokens=num_tokens, num_classes=1000)


def _official_shapes(layers: int, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """The key table of the released c2i checkpoints (vocab 16384, 1000 classes + 1 null row)."""
    shapes = {"cls_embedding.embedding_table.weight": (1001, dim), "tok_embeddings.weight": (16384, dim),
              "norm.weight": (dim,), "output.weight": (16384, dim)}
    for i in range(layers):
        p = f"layers.{i}."
        shapes.update({p + "attention.wqkv.weight": (3 * dim, dim), p + "attention.wo.weight": (dim, dim),
                       p + "feed_forward.w1.weight": (hidden, dim), p + "feed_forward.w3.weight": (hidden, dim),
                       p + "feed_forward.w2.weight": (dim, hidden), p + "attention_norm.weight": (dim,),
                       p + "ffn_norm.weight": (dim,)})
    return shapes


@pytest.mark.parametrize("name, layers, dim, hidden, params", [
    ("gpt_b", 12, 768, 2048, 110_888_448),
    ("gpt_xl", 36, 1280, 3584, 774_699_520),
])
def test_official_keys_shapes_and_param_counts(name: str, layers: int, dim: int, hidden: int, params: int) -> None:
    model = _meta_gpt(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _official_shapes(layers, dim, hidden)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name, params, head_dim, hidden", [
    ("gpt_l", 342_910_976, 64, 2816),
    ("gpt_xxl", 1_410_972_672, 64, 4096),
    ("gpt_3b", 3_096_659_200, 100, 8704),
    ("gpt_2b", None, 60, 5120),
])
def test_other_sizes(name: str, params: int | None, head_dim: int, hidden: int) -> None:
    model = _meta_gpt(name, num_tokens=576)
    assert model.config.head_dim == head_dim and model.config.ffn_hidden == hidden
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params
    assert model._rope.shape == (577, head_dim // 2, 2)


def test_registry_lists_all_sizes() -> None:
    assert {"gpt_b", "gpt_l", "gpt_xl", "gpt_xxl", "gpt_2b", "gpt_3b", "gpt_mini", "gpt_micro",
            "test_gpt"} <= set(AR_MODELS.list())
    with pytest.raises(KeyError, match="did you mean"):
        create_gpt("gpt_bb", 64, 16, 10)
    with pytest.raises(ValueError, match="unknown GPT config"):
        create_gpt("test_gpt", 64, 16, 10, depth=3)
    with pytest.raises(ValueError, match="not a square"):
        create_gpt("test_gpt", 64, 12, 10)
    with pytest.raises(ValueError, match="does not hold"):
        create_gpt("test_gpt", 64, 16, 10, grid=(3, 4))


def test_rope_table_layout() -> None:
    grid, d = (3, 5), 16
    table = rope_table_2d(grid, d)
    assert table.shape == (1 + 15, d // 2, 2) and table.dtype == torch.float32
    assert torch.equal(table[0], torch.zeros(d // 2, 2))  # class token: cos = sin = 0
    freqs = [10000 ** (-2 * j / (d / 2)) for j in range(d // 4)]
    for n in (0, 7, 14):
        r, c = divmod(n, grid[1])
        angles = torch.tensor([r * f for f in freqs] + [c * f for f in freqs], dtype=torch.float32)
        torch.testing.assert_close(table[1 + n, :, 0], angles.cos())
        torch.testing.assert_close(table[1 + n, :, 1], angles.sin())


def test_rope_rotates_adjacent_pairs_and_zeroes_the_class_token() -> None:
    table = rope_table_2d((2, 2), 8)
    x = torch.randn(1, 5, 1, 8)
    out = apply_rope(x, table)
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))  # q and k of the class position vanish
    cos, sin = table[3, 1, 0], table[3, 1, 1]  # position 3 = cell (1, 0); pair k = 1 is channels (2, 3)
    torch.testing.assert_close(out[0, 3, 0, 2], x[0, 3, 0, 2] * cos - x[0, 3, 0, 3] * sin)
    torch.testing.assert_close(out[0, 3, 0, 3], x[0, 3, 0, 3] * cos + x[0, 3, 0, 2] * sin)
    torch.testing.assert_close(out[:, 1:].norm(dim=-1), x[:, 1:].norm(dim=-1))  # rotations keep the norm
    assert apply_rope(x.bfloat16(), table).dtype == torch.bfloat16


def test_rmsnorm_casts_back_before_the_weight() -> None:
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    norm = norm.bfloat16()
    x = torch.randn(2, 8).bfloat16()
    xf = x.float()
    expected = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16() * norm.weight
    assert torch.equal(norm(x), expected)


def test_init_and_no_biases() -> None:
    torch.manual_seed(0)
    model = create_gpt("gpt_micro", 512, 64, 10)
    assert not any(name.endswith("bias") for name in model.state_dict())
    assert torch.count_nonzero(model.output.weight) == 0
    assert torch.equal(model.norm.weight, torch.ones(256))
    std = model.layers[0].feed_forward.w1.weight.std().item()
    assert math.isclose(std, 0.02, rel_tol=0.05)
    assert model.cls_embedding.embedding_table.weight.shape == (11, 256)


def test_label_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = create_gpt("test_gpt", 64, 16, 10, class_dropout=1.0, token_dropout=0.0, resid_dropout=0.0,
                       ffn_dropout=0.0)
    with torch.no_grad():
        model.output.weight.normal_(0, 0.5)
    tokens, labels = torch.randint(64, (2, 16)), torch.tensor([3, 4])
    null = torch.full_like(labels, 10)
    model.train()
    torch.testing.assert_close(model(tokens, labels), model.eval()(tokens, null))
    assert not torch.allclose(model(tokens, labels), model(tokens, null))


def _tiny(seed: int) -> GPT:
    torch.manual_seed(seed)
    model = create_gpt("test_gpt", 64, 16, 10)
    with torch.no_grad():
        model.output.weight.normal_(0, 0.02)
    return model.eval()


@pytest.mark.parametrize("layout", ["llamagen", "vfmtok", "fsdp", "prefixed"])
def test_synthetic_official_checkpoints_load(tmp_path: Path, layout: str) -> None:
    source, other = _tiny(1), _tiny(2)
    sd = source.state_dict()
    payload = {
        "llamagen": {"model": sd, "optimizer": {}, "steps": 10, "args": None},  # DDP trainer file
        "vfmtok": {"ema": sd, "model": other.state_dict(), "optimizer": {}, "steps": 10},  # loaders read "ema"
        "fsdp": {**sd, "freqs_cis": torch.zeros(17, 16, 2)},  # consolidated raw state dict
        "prefixed": {"module": {f"module.{k}": v for k, v in sd.items()}},
    }[layout]
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    target = _tiny(3)
    assert load_gpt_checkpoint(target, path) is target
    for k, v in sd.items():
        assert torch.equal(target.state_dict()[k], v), k
    tokens, labels = torch.randint(64, (2, 16)), torch.tensor([1, 2])
    torch.testing.assert_close(target(tokens, labels), source(tokens, labels))


def test_container_choice(tmp_path: Path) -> None:
    a, b = _tiny(1), _tiny(2)
    path = tmp_path / "both.pt"
    torch.save({"ema": a.state_dict(), "model": b.state_dict()}, path)
    target = load_gpt_checkpoint(_tiny(3), path, containers=("model",))
    assert torch.equal(target.output.weight, b.output.weight)


def test_mismatched_checkpoints_name_the_problem(tmp_path: Path) -> None:
    sd = _tiny(1).state_dict()
    bad = dict(sd)
    bad.pop("norm.weight")
    bad["layers.0.attention.wqkv.bias"] = torch.zeros(192)
    torch.save({"model": bad}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError, match=r"(?s)missing: norm\.weight.*unexpected: layers\.0\.attention"):
        load_gpt_checkpoint(_tiny(2), tmp_path / "bad.pt")
    torch.save({"model": sd}, tmp_path / "ok.pt")
    with pytest.raises(CheckpointKeyError, match="wrong shape"):
        load_gpt_checkpoint(create_gpt("test_gpt", 128, 16, 10), tmp_path / "ok.pt")
    with pytest.raises(FileNotFoundError):
        load_gpt_checkpoint(_tiny(2), tmp_path / "absent.pt")
