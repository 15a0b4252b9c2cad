"""Validation at the edge: configs reject out-of-range values naming the key; no silent random weights; numpy input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from benchmarks.config import load_config
from vfmtok import create_tokenizer
from vfmtok.checkpoint import CheckpointKeyError
from vfmtok.errors import ConfigError
from vfmtok.factory import loading_weights, released_family
from vfmtok.train import TokenizerTrainConfig
from vfmtok.train.ar_trainer import ARTrainConfig


@pytest.mark.parametrize("override, key", [
    ("catalog.vqgan.steps=-5", "catalog.vqgan.steps"), ("catalog.vqgan.steps=0", "catalog.vqgan.steps"),
    ("catalog.llamagen_vq.batch_size=0", "catalog.llamagen_vq.batch_size"),
    ("catalog.vfmtok.batch_size=-4", "catalog.vfmtok.batch_size"),
    ("catalog.vfmtok.batch_size=100000", "catalog.vfmtok.batch_size"), ("catalog.vqgan.lr=0", "catalog.vqgan.lr"),
    ("catalog.vqgan.warmup_steps=-1", "catalog.vqgan.warmup_steps"), ("ar.steps=0", "ar.steps"),
    ("ar.batch_size=0", "ar.batch_size"), ("ar.lr=0", "ar.lr"), ("ar.num_samples=-1", "ar.num_samples"),
    ("ar.cfg_scales=[]", "ar.cfg_scales"), ("ar.cfg_scales=[1.0,-2.0]", "ar.cfg_scales"),
    ("ar.temperature=0", "ar.temperature"), ("ar.top_p=1.5", "ar.top_p"), ("data.image_size=0", "data.image_size"),
    ("data.train_n=0", "data.train_n"), ("data.eval_n=-3", "data.eval_n"), ("nproc=0", "nproc"),
    ("launcher=slurm", "launcher"), ("tokenizers=[]", "tokenizers"), ("suite.probe_epochs=0", "suite.probe_epochs"),
])
def test_bench_config_rejects_out_of_range_values_naming_the_key(override, key) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(["preset=smoke", override])
    assert str(err.value).startswith(key), err.value


def test_zero_steps_need_released_weights() -> None:
    with pytest.raises(ConfigError, match="official=FAMILY and checkpoint=FILE"):
        load_config(["preset=smoke", "catalog.vqgan.steps=0"])
    with pytest.raises(ConfigError, match="needs catalog.vqgan.checkpoint"):
        load_config(["preset=smoke", "catalog.vqgan.steps=0", "catalog.vqgan.official=vqgan"])
    cfg = load_config(["preset=smoke", "catalog.vqgan.steps=0", "catalog.vqgan.official=vqgan",
                       "catalog.vqgan.checkpoint=vqgan.ckpt"])
    assert cfg.catalog["vqgan"].steps == 0
    # a run without generation does not train a GPT, so its budget is not checked
    assert load_config(["preset=smoke", "suite.generation=false", "ar.steps=0"]).ar.steps == 0


@pytest.mark.parametrize("cls, kwargs, key", [
    (TokenizerTrainConfig, {"steps": -5}, "steps"), (TokenizerTrainConfig, {"steps": 0}, "steps"),
    (TokenizerTrainConfig, {"batch_size": 0}, "batch_size"), (TokenizerTrainConfig, {"lr": 0.0}, "lr"),
    (TokenizerTrainConfig, {"pixel_loss": "l3"}, "pixel_loss"), (TokenizerTrainConfig, {"ema_decay": 1.0}, "ema_decay"),
    (TokenizerTrainConfig, {"checkpoint_every": 0}, "checkpoint_every"),
    (ARTrainConfig, {"steps": -1}, "steps"), (ARTrainConfig, {"batch_size": -4}, "batch_size"),
    (ARTrainConfig, {"lr": -1e-4}, "lr"), (ARTrainConfig, {"schedule": "linear"}, "schedule"),
    (ARTrainConfig, {"keep_checkpoints": 0}, "keep_checkpoints"),
])
def test_trainer_configs_validate_themselves(cls, kwargs, key) -> None:
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{key} must be"):
        cls(**kwargs)
    cls()  # the defaults are valid


SMALL = {"image_size": 32, "ch": 32, "z_channels": 32, "num_res_blocks": 1, "embed_dim": 8}  # a fast f16 VQGAN


def test_random_weights_warning_once_unless_pretrained_false() -> None:
    assert released_family("llamagen_vq_f16_k16384") == "llamagen_vq"
    assert released_family("vfmtok_dinov2_vitl14reg_l256_k16384") == "vfmtok"
    assert released_family("test_vqgan") is None and released_family("vqgan_f4_k1024_cifar") is None
    name = "vqgan_f16_k1024"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_tokenizer(name, **SMALL)
        create_tokenizer(name, **SMALL)  # once per name and process
        create_tokenizer("test_vqgan")
    texts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len([t for t in texts if "random weights" in t]) <= 1  # at most once (another test may have warned)
    from vfmtok import factory

    factory._warned.discard(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_tokenizer(name, **SMALL)
        text = [str(w.message) for w in caught if "random weights" in str(w.message)]
    assert len(text) == 1 and "vfmtok.load_official('vqgan', path)" in text[0] and "pretrained=False" in text[0]
    factory._warned.discard(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = create_tokenizer(name, pretrained=False, **SMALL)
        with loading_weights():
            create_tokenizer(name, **SMALL)
    assert not [w for w in caught if "random weights" in str(w.message)]
    assert "pretrained" not in model.init_kwargs  # consumed, not passed to the constructor
    with pytest.raises(ValueError, match="load_official"):
        create_tokenizer(name, pretrained=True)


def test_tokenize_accepts_numpy_and_names_the_fix() -> None:
    torch.manual_seed(0)
    tok = create_tokenizer("test_vqgan").eval()
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    expected = tok.tokenize(images)
    assert torch.equal(tok.tokenize(images.numpy()), expected)  # NCHW numpy
    nhwc = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
    nhwc.setflags(write=False)  # read-only arrays (memory maps) work too
    assert torch.equal(tok.tokenize(nhwc), expected)  # NHWC, the ADM layout
    assert torch.equal(tok.detokenize(expected.numpy().astype(np.int32)), tok.detokenize(expected))
    with pytest.raises(TypeError, match=r"dtype torch.float32.*\(x \* 255\)"):
        tok.tokenize(images.float() / 255)
    with pytest.raises(ValueError, match=r"resize_uint8\(images, 16\)"):
        tok.tokenize(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"images\[None\]"):
        tok.tokenize(images[0])
    with pytest.raises(TypeError, match="torch tensor or numpy array, got list"):
        tok.tokenize([images])
    with pytest.raises(TypeError, match="integer token indices"):
        tok.detokenize(np.zeros((1, 16), np.float32))


def test_from_pretrained_names_the_damaged_file(tmp_path) -> None:
    from vfmtok import from_pretrained

    torch.manual_seed(0)
    create_tokenizer("test_vqgan").save_pretrained(str(tmp_path / "tok"))
    assert from_pretrained(tmp_path / "tok").spec.name == "test_vqgan"
    weights, config = tmp_path / "tok" / "model.safetensors", tmp_path / "tok" / "config.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()
    weights.write_bytes(good_weights[: len(good_weights) // 2])
    with pytest.raises(ValueError, match=rf"{weights}.* damaged"):
        from_pretrained(tmp_path / "tok")
    weights.write_bytes(good_weights)
    config.write_text(good_config[:20])
    with pytest.raises(ValueError, match=rf"{config} is damaged"):
        from_pretrained(tmp_path / "tok")
    config.write_text(json.dumps({**json.loads(good_config), "name": "test_llamagen_vq"}))
    with pytest.raises(ValueError, match=rf"{config}: the saved spec differs .*'latent_dim': \(8, 4\)"):
        from_pretrained(tmp_path / "tok")  # another architecture under the saved name: the spec check names it
    config.write_text(json.dumps({k: v for k, v in json.loads(good_config).items() if k != "spec"}
                                 | {"name": "test_llamagen_vq"}))
    with pytest.raises(CheckpointKeyError, match=str(weights)):
        from_pretrained(tmp_path / "tok")  # no saved spec: the weights of another architecture name the file
