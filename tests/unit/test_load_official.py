"""``load_official`` over every family: which weights each default loads, what is recorded, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from baselines.vqgan import ours_to_taming
from vfmtok import create_tokenizer, load_official
from vfmtok.ar import GPT, create_gpt, infer_gpt_size, load_gpt_checkpoint
from vfmtok.assets import RELEASED_WEIGHTS, released_by_filename
from vfmtok.checkpoint import CheckpointKeyError, guess_family


def _gpt(seed: int, num_tokens: int = 16) -> GPT:
    torch.manual_seed(seed)
    model = create_gpt("test_gpt", 64, num_tokens, 10)
    with torch.no_grad():
        model.output.weight.normal_(0, 0.02)
    return model.eval()


def _same(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items() if k in own)


@pytest.fixture
def both(tmp_path: Path) -> tuple[Path, dict, dict]:
    """A training file holding different weights under "model" and "ema" (as LlamaGen's --ema and VFMTok write)."""
    model, ema = _gpt(1).state_dict(), _gpt(2).state_dict()
    assert not torch.equal(model["output.weight"], ema["output.weight"])
    path = tmp_path / "gpt.pt"
    torch.save({"model": model, "ema": ema, "optimizer": {"state": {}}, "steps": 7,
                "args": argparse.Namespace(gpt_model="GPT-B")}, path)
    return path, model, ema


@pytest.mark.parametrize("family, default", [("llamagen_gpt", "model"), ("vfmtok_gpt", "ema")])
def test_gpt_default_weights_follow_each_family_sampler(both, family: str, default: str) -> None:
    path, model_sd, ema_sd = both
    expected = {"model": model_sd, "ema": ema_sd}
    gpt = load_official(family, path, num_tokens=16)
    assert isinstance(gpt, GPT) and not gpt.training
    assert gpt.loaded_weights == default and gpt.source_path == str(path)
    assert gpt.checkpoint_record == {"family": family, "path": str(path), "weights": default, "container": default}
    assert _same(gpt, expected[default]) and not _same(gpt, expected["ema" if default == "model" else "model"])
    for choice in ("model", "ema"):
        chosen = load_official(family, path, weights=choice, num_tokens=16)
        assert chosen.loaded_weights == choice and _same(chosen, expected[choice])
    # the loaded model computes what the source computes
    tokens, labels = torch.randint(64, (2, 16)), torch.tensor([1, 9])
    torch.testing.assert_close(gpt(tokens, labels), _gpt(1 if default == "model" else 2)(tokens, labels))


def test_gpt_config_is_inferred_from_shapes(both) -> None:
    path, model_sd, _ = both
    gpt = load_official("llamagen_gpt", path, grid=(2, 8))
    cfg = gpt.config
    assert (cfg.dim, cfg.n_layer, cfg.n_head, cfg.vocab_size, cfg.num_classes) == (64, 2, 2, 64, 10)
    assert (cfg.num_tokens, cfg.grid) == (16, (2, 8)) and gpt.registry_name == "test_gpt"
    assert gpt.tok_embeddings.weight.dtype == torch.float32 and not gpt.tok_embeddings.weight.is_meta
    assert all(p.requires_grad for p in gpt.parameters())


@pytest.mark.parametrize("name", ["gpt_b", "gpt_l", "gpt_xl", "gpt_xxl", "gpt_2b", "gpt_3b"])
def test_released_sizes_are_recognised(name: str) -> None:
    with torch.device("meta"):
        state = create_gpt(name, 16384, 256, 1000).state_dict()
    size = infer_gpt_size(state)
    assert size == {"name": name, "vocab_size": 16384, "num_classes": 1000}


def test_unknown_size_needs_n_head(tmp_path: Path) -> None:
    with torch.device("meta"):
        state = create_gpt("test_gpt", 64, 16, 10, dim=96, n_layer=3, n_head=3).state_dict()
    with pytest.raises(ValueError, match="none of the known sizes.*n_head="):
        infer_gpt_size(state)
    assert infer_gpt_size(state, n_head=3) == {"name": "gpt_b", "vocab_size": 64, "num_classes": 10, "dim": 96,
                                               "n_layer": 3, "n_head": 3}


def test_fsdp_flat_file_and_sequence_length_sources(tmp_path: Path) -> None:
    sd = _gpt(3, num_tokens=256).state_dict()
    flat = tmp_path / "consolidated.pth"
    torch.save({**sd, "freqs_cis": torch.zeros(257, 16, 2)}, flat)  # 1 class row + 256 token rows
    gpt = load_official("llamagen_gpt", flat)
    assert gpt.config.num_tokens == 256 and gpt.loaded_weights == "model" and gpt.loaded_container == ""
    assert gpt.checkpoint_record["container"] == "(whole file)" and _same(gpt, sd)
    with pytest.raises(CheckpointKeyError, match=r"no 'ema' weights.*flat state dict"):
        load_official("llamagen_gpt", flat, weights="ema")
    # the released file names carry the length: c2i_B_384.pt was trained on 24 x 24 tokens
    named = tmp_path / "c2i_B_384.pt"
    torch.save({"model": sd}, named)
    assert load_official("llamagen_gpt", named).config.num_tokens == 576
    # VFMTok GPTs always model 256 region tokens
    torch.save({"ema": sd}, tmp_path / "mine.pt")
    assert load_official("vfmtok_gpt", tmp_path / "mine.pt").config.num_tokens == 256
    with pytest.raises(ValueError, match="pass num_tokens="):
        load_official("llamagen_gpt", tmp_path / "mine.pt", weights="ema")
    with pytest.raises(ValueError, match="disagrees"):
        load_official("llamagen_gpt", named, num_tokens=16, grid=(4, 8))


def test_missing_container_names_the_file_and_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "ema_only.pt"
    torch.save({"ema": _gpt(1).state_dict(), "steps": 3}, path)
    with pytest.raises(CheckpointKeyError) as err:
        load_official("llamagen_gpt", path, num_tokens=16)  # LlamaGen's sampler reads "model"
    msg = str(err.value)
    assert str(path) in msg and "['ema', 'steps']" in msg and "weights='ema'" in msg
    with pytest.raises(CheckpointKeyError, match=r"no 'model' weights.*\['ema', 'steps'\]"):
        load_official("vfmtok_gpt", path, weights="model")
    with pytest.raises(ValueError, match="weights must be one of"):
        load_official("vfmtok_gpt", path, weights="EMA")


def test_wrong_family_says_what_the_file_looks_like(tmp_path: Path) -> None:
    gpt_file = tmp_path / "gpt.pt"
    torch.save({"model": _gpt(1).state_dict()}, gpt_file)
    vq = create_tokenizer("test_llamagen_vq")
    vq_file = tmp_path / "vq.pt"
    torch.save({"model": vq.state_dict()}, vq_file)
    with pytest.raises(CheckpointKeyError, match="looks like a llamagen_gpt or vfmtok_gpt checkpoint"):
        load_official("llamagen_vq", gpt_file)
    with pytest.raises(CheckpointKeyError, match="looks like a llamagen_gpt or vfmtok_gpt checkpoint"):
        load_official("vfmtok", gpt_file)
    with pytest.raises(CheckpointKeyError, match=r"looks like a llamagen_vq checkpoint.*load_official\('llamagen_vq'"):
        load_official("llamagen_gpt", vq_file, num_tokens=16)
    with pytest.raises(CheckpointKeyError, match="looks like a llamagen_vq checkpoint"):
        load_official("vqgan", vq_file)
    released_vfmtok_name = tmp_path / "GPT-B-300e.pt"
    torch.save({"model": _gpt(1).state_dict()}, released_vfmtok_name)
    with pytest.raises(CheckpointKeyError, match="released vfmtok_gpt file"):
        load_official("llamagen_gpt", released_vfmtok_name)
    with pytest.raises(KeyError, match="did you mean 'llamagen_gpt'"):
        load_official("llamagen_gtp", gpt_file)


def test_guess_family() -> None:
    vfm = create_tokenizer("test_vfmtok").trainable_state_dict()
    taming = {ours_to_taming(k, 3): v for k, v in create_tokenizer("test_vqgan").state_dict().items()}
    assert guess_family({"ema": vfm}) == "vfmtok"
    assert guess_family({"state_dict": taming}) == "vqgan"
    assert guess_family(create_tokenizer("test_llamagen_vq").state_dict()) == "llamagen_vq"
    assert guess_family({"module": {f"module.{k}": v for k, v in _gpt(1).state_dict().items()}}) \
        == "llamagen_gpt or vfmtok_gpt"
    assert guess_family({"model": {"foo.weight": torch.zeros(1)}}) is None


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() for k, v in state.items()}


def test_llamagen_vq_default_is_model_and_ema_on_request(tmp_path: Path) -> None:
    sd = create_tokenizer("test_llamagen_vq").state_dict()
    model_sd, ema_sd = _perturbed(sd, 1), _perturbed(sd, 2)
    torch.save({"model": model_sd, "ema": ema_sd, "steps": 1}, tmp_path / "vq.pt")
    tok = load_official("llamagen_vq", tmp_path / "vq.pt", name="test_llamagen_vq")
    assert tok.loaded_weights == "model" and _same(tok, model_sd) and not _same(tok, ema_sd)
    ema = load_official("llamagen_vq", tmp_path / "vq.pt", name="test_llamagen_vq", weights="ema")
    assert ema.loaded_weights == "ema" and _same(ema, ema_sd)
    torch.save({"ema": ema_sd}, tmp_path / "ema_only.pt")
    with pytest.raises(CheckpointKeyError, match="weights='ema'"):
        load_official("llamagen_vq", tmp_path / "ema_only.pt", name="test_llamagen_vq")


def test_vfmtok_tokenizer_default_is_ema_and_model_on_request(tmp_path: Path) -> None:
    sd = create_tokenizer("test_vfmtok").trainable_state_dict()
    model_sd, ema_sd = _perturbed(sd, 1), _perturbed(sd, 2)
    torch.save({"model": model_sd, "ema": ema_sd, "args": argparse.Namespace(image_size=336)}, tmp_path / "t.pt")
    tok = load_official("vfmtok", tmp_path / "t.pt", name="test_vfmtok")
    assert tok.loaded_weights == "ema" and _same(tok, ema_sd) and not _same(tok, model_sd)
    assert tok.checkpoint_record["family"] == "vfmtok"
    model = load_official("vfmtok", tmp_path / "t.pt", name="test_vfmtok", weights="model")
    assert model.loaded_weights == "model" and _same(model, model_sd)


def test_vqgan_has_no_ema(tmp_path: Path) -> None:
    model = create_tokenizer("test_vqgan")
    levels = len(model.decoder.conv_blocks)
    sd = _perturbed(model.state_dict(), 1)
    torch.save({"state_dict": {ours_to_taming(k, levels): v for k, v in sd.items()}}, tmp_path / "last.ckpt")
    for weights in (None, "model"):
        tok = load_official("vqgan", tmp_path / "last.ckpt", name="test_vqgan", weights=weights)
        assert tok.loaded_weights == "model" and tok.loaded_container == "state_dict" and _same(tok, sd)
    with pytest.raises(CheckpointKeyError, match="no EMA"):
        load_official("vqgan", tmp_path / "last.ckpt", name="test_vqgan", weights="ema")


def test_load_gpt_checkpoint_explicit_weights(both) -> None:
    path, model_sd, ema_sd = both
    assert _same(load_gpt_checkpoint(_gpt(5), path), ema_sd)  # the project's own default prefers "ema"
    chosen = load_gpt_checkpoint(_gpt(5), path, weights="model")
    assert chosen.loaded_weights == "model" and _same(chosen, model_sd)


def test_released_weights_table() -> None:
    families = {e.family for e in RELEASED_WEIGHTS.values()}
    assert families == {"vqgan", "llamagen_vq", "vfmtok", "dinov2", "llamagen_gpt", "vfmtok_gpt"}
    assert {e.filename for e in RELEASED_WEIGHTS.values()} >= {
        "vq_ds16_c2i.pt", "vfmtok-tokenizer.pt", "dinov2_vitl14_reg4_pretrain.pth", "c2i_B_256.pt", "c2i_L_384.pt",
        "c2i_XL_384.pt", "c2i_XXL_384.pt", "c2i_3B_384.pt", "GPT-B-300e.pt", "GPT-3B-200e.pt"}
    for entry in RELEASED_WEIGHTS.values():
        assert entry.published_at.startswith("https://")
        assert entry.sha256 is None or len(entry.sha256) == 64
        if entry.family.endswith("_gpt"):
            with torch.device("meta"):
                create_gpt(entry.arch, 16384, entry.num_tokens, 1000)  # a registered size and a valid length
    assert [e.key for e in released_by_filename("/x/c2i_B_384.pt")] == ["llamagen_c2i_b_384"]
    assert len(released_by_filename("last.ckpt")) == 2


def test_readme_weights_table_lists_every_released_file() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Released weights"):readme.index("## Sampling protocols")]
    for entry in RELEASED_WEIGHTS.values():
        assert f"`{entry.filename}`" in section or f"{entry.release_path}`" in section, entry.key
        assert entry.published_at.split("/")[2] in section, entry.key
