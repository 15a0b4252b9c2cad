"""The ``vfmtok`` command and the hydra configuration of the benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from benchmarks.config import load_config
from vfmtok import from_pretrained
from vfmtok.cli import main


def test_presets_compose_into_typed_configs() -> None:
    for preset in ("smoke", "quick", "cifar10", "imagenet256"):
        cfg = load_config([f"preset={preset}"])
        assert cfg.preset == preset and set(cfg.tokenizers) <= set(cfg.catalog)
    cfg = load_config(["preset=smoke", "catalog.vqgan.steps=7", "data.train_n=64"])
    assert cfg.catalog["vqgan"].steps == 7 and cfg.data.train_n == 64


@pytest.mark.parametrize("override", ["data.train_nn=5", "suite.recons=false", "catalog.vqgan.stpes=3"])
def test_misspelt_key_fails_at_compose_time(override) -> None:
    key = override.split("=")[0].rsplit(".", 1)[-1]
    with pytest.raises(ConfigCompositionException) as err:
        load_config(["preset=smoke", override])
    assert key in f"{err.value} {err.value.__cause__}"


def test_wrong_type_and_unknown_tokenizer_are_named() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        load_config(["preset=smoke", "data.train_n=many"])
    assert "train_n" in f"{err.value} {err.value.__cause__}"
    with pytest.raises(ValueError, match="unknown tokenizer.*nosuch"):
        load_config(["preset=smoke", "tokenizers=[nosuch]"])


def test_catalog_entries_can_be_added_from_the_command_line() -> None:
    from vfmtok.errors import ConfigError

    cfg = load_config(["preset=smoke", "tokenizers=[toy,vqgan]", "+catalog.toy={name: test_vqgan, steps: 7}",
                       "+catalog.toy.lr=0.01"])
    toy = cfg.catalog["toy"]
    assert (toy.name, toy.steps, toy.lr, toy.batch_size) == ("test_vqgan", 7, 0.01, 32)
    assert cfg.catalog["vqgan"].name == "test_vqgan" and cfg.tokenizers == ["toy", "vqgan"]
    with pytest.raises(ConfigError, match="unexpected keyword argument 'stepz'"):
        load_config(["preset=smoke", "+catalog.toy={name: test_vqgan, stepz: 7}"])
    with pytest.raises(ConfigError, match="already has a tokenizer 'vqgan'"):
        load_config(["preset=smoke", "+catalog.vqgan.steps=3"])
    with pytest.raises(ConfigError, match=r"catalog.toy.lr must be > 0, got -1.0"):
        load_config(["preset=smoke", "tokenizers=[toy]", "+catalog.toy={name: test_vqgan, lr: -1.0}"])


def test_trainer_settings_come_from_the_trainer_and_run_wide_ones_are_refused() -> None:
    from vfmtok.errors import ConfigError

    cfg = load_config(["preset=smoke", "catalog.vqgan.schedule=cosine", "ar.grad_accum=2"])
    assert cfg.catalog["vqgan"].schedule == "cosine" and cfg.ar.grad_accum == 2
    with pytest.raises(ConfigError, match=r"catalog.vqgan.schedule must be 'constant' or 'cosine'"):
        load_config(["preset=smoke", "catalog.vqgan.schedule=linear"])
    with pytest.raises(ConfigError, match=r"catalog.vqgan.seed=3: this setting is the run's"):
        load_config(["preset=smoke", "catalog.vqgan.seed=3"])


def test_train_tokenizer_command_trains_and_resumes(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", arr_0=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    args = ["train-tokenizer", "--tokenizer", "test_vqgan", "--data", "npz", "--path", str(tmp_path / "data.npz"),
            "--steps", "3", "--batch-size", "4", "--checkpoint-every", "2", "--warmup-steps", "2",
            "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 3 and from_pretrained(out["tokenizer_dir"]).spec.name == "test_vqgan"
    args[args.index("--steps") + 1] = "5"
    assert main(args) == 0  # more steps: resumes from the step-3 checkpoint
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 5


def test_bench_show_prints_the_config_and_its_label(capsys) -> None:
    assert main(["bench", "--show", "preset=smoke", "catalog.vqgan.steps=5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# label: smoke+catalog.vqgan.steps=5\n") and "steps: 5" in out
    assert main(["bench", "--show", "preset=smoke", "device=cpu"]) == 0
    assert capsys.readouterr().out.startswith("# label: smoke\n")
