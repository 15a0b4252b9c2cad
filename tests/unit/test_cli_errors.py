"""Entry points turn known errors into one line and exit status 2; ``--debug`` shows the traceback; help works."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.run import main as bench_main
from vfmtok.cli import build_parser, main
from vfmtok.errors import ConfigError, one_line, run_guarded
from vfmtok.train import TokenizerTrainConfig
from vfmtok.train.config import config_from

ROOT = Path(__file__).resolve().parents[2]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # exactly one line, no traceback
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def flat_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


@pytest.mark.parametrize("flag, value, key", [
    ("--steps", "-5", "steps"), ("--steps", "0", "steps"), ("--batch-size", "0", "batch_size"),
    ("--batch-size", "-4", "batch_size"), ("--lr", "0", "lr"), ("--warmup-steps", "-1", "warmup_steps")])
def test_train_tokenizer_rejects_bad_budgets_in_one_line(tmp_path, capsys, flag, value, key) -> None:
    args = ["train-tokenizer", "--tokenizer", "test_vqgan", "--data", "synthetic", "--out", str(tmp_path / "o"),
            flag, value]
    assert main(args) == 2
    line = _error_line(capsys)
    assert line.startswith("vfmtok train-tokenizer: error: ") and f"TokenizerTrainConfig.{key} must be" in line
    assert value in line and not (tmp_path / "o").exists()  # rejected before any work


@pytest.mark.parametrize("override, expected", [
    ("catalog.vqgan.steps=-5", "catalog.vqgan.steps must be > 0"),
    ("catalog.vqgan.steps=0", "official=FAMILY and checkpoint=FILE"),
    ("catalog.vqgan.batch_size=0", "catalog.vqgan.batch_size must be in [1,"),
    ("catalog.vqgan.lr=-1e-3", "catalog.vqgan.lr must be > 0"),
    ("ar.num_samples=0", "ar.num_samples must be > 0"),
    ("ar.cfg_scales=[0.0]", "ar.cfg_scales must be"),
    ("data.image_size=0", "data.image_size must be > 0"),
    ("data.train_n=many", "config key 'data.train_n': Value 'many'"),
    ("data.train_nn=5", "unknown config key 'data.train_nn'"),
    ("preset=nosuch", "unknown preset 'nosuch'; available: cifar10"),
    ("tokenizers=[nosuch]", "unknown tokenizer(s) ['nosuch']"),
])
def test_bench_errors_are_one_line_naming_the_key(capsys, override, expected) -> None:
    overrides = ["preset=smoke", override] if not override.startswith("preset=") else [override]
    assert bench_main([*overrides, "--show"]) == 2
    line = _error_line(capsys)
    assert line.startswith("vfmtok bench: error: ") and expected in line, line


def test_hydra_type_error_names_the_expected_type(capsys) -> None:
    assert bench_main(["preset=smoke", "catalog.vqgan.steps=abc", "--show"]) == 2
    assert "'catalog.vqgan.steps'" in (line := _error_line(capsys)) and "(expected int)" in line


def test_debug_flag_and_environment_show_the_traceback(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="ar.num_samples"):
        bench_main(["preset=smoke", "ar.num_samples=0", "--show", "--debug"])
    monkeypatch.setenv("VFMTOK_DEBUG", "1")
    with pytest.raises(ValueError, match="steps"):
        main(["train-tokenizer", "--tokenizer", "test_vqgan", "--steps", "-5", "--out", "unused"])


def test_unknown_errors_keep_their_traceback() -> None:
    def bug() -> int:
        raise ZeroDivisionError("a bug, not the user's")

    with pytest.raises(ZeroDivisionError):
        run_guarded(bug, "x")


def test_unreachable_weights_are_a_user_error(capsys, monkeypatch) -> None:
    from vfmtok.encoders import create_encoder, timm_vit

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(timm_vit, "_hub_reachable", lambda *a, **k: False)
    assert run_guarded(lambda: create_encoder("test_vit_tiny", pretrained=True), "vfmtok x") == 2
    assert "HF_HUB_OFFLINE=1" in _error_line(capsys)


def test_one_line_joins_multi_line_messages_and_unquotes_key_errors() -> None:
    assert one_line(KeyError("unknown tokenizer 'x'")) == "unknown tokenizer 'x'"
    assert one_line(ValueError("first\n  second\n")) == "first; second"


def test_bench_help_lists_presets_tokenizers_and_defaults(capsys) -> None:
    assert bench_main(["--help"]) == 0  # what `nox -s bench -- --help` runs
    text = capsys.readouterr().out
    for needle in ("preset=NAME", "smoke ", "quick ", "imagenet256", "vqgan_f4_k1024_cifar ", "test_vfmtok ",
                   "catalog.ALIAS.steps=", "ar.num_samples=", "data.eval_n="):
        assert needle in text, needle
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "presets (" in text and "llamagen_vq_f16_k16384" in text and "--show" in text


def test_train_tokenizer_options_and_defaults_come_from_the_config(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train-tokenizer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = TokenizerTrainConfig()
    assert f"--steps STEPS optimizer steps (> 0) (default: {defaults.steps})" in text
    assert f"(default: {defaults.lr})" in text and "--schedule {constant,cosine}" in text and "--no-flip" in text
    args = build_parser().parse_args(["train-tokenizer", "--tokenizer", "t", "--out", "o", "--betas", "0.5", "0.9",
                                      "--flip", "--no-ema-warmup", "--pixel-loss", "l1"])
    assert config_from(TokenizerTrainConfig, args) == dataclasses.replace(
        defaults, betas=(0.5, 0.9), flip=True, ema_warmup=False, pixel_loss="l1", device=args.device)


def test_list_prints_one_line_descriptions(capsys) -> None:
    assert main(["list", "test_*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(len(line.split(None, 1)) == 2 for line in lines)
    assert main(["list", "nothing_matches_*"]) == 2
    assert "no tokenizer matches" in _error_line(capsys)


def test_train_tokenizer_reads_a_flat_folder_as_folder_or_path(tmp_path, capsys, flat_folder) -> None:
    for data in (["--data", "folder", "--path", str(flat_folder)], ["--data", str(flat_folder)]):
        out = tmp_path / f"run{len(data)}"
        assert main(["train-tokenizer", "--tokenizer", "test_vqgan", *data, "--steps", "1", "--batch-size", "2",
                     "--out", str(out), "--device", "cpu"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 1
    assert main(["train-tokenizer", "--tokenizer", "test_vqgan", "--data", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "neither a data set name" in _error_line(capsys)


def test_tokenize_and_detokenize_round_trip(tmp_path, capsys, flat_folder) -> None:
    tokens = tmp_path / "tokens.npy"
    assert main(["tokenize", "--tokenizer", "test_vqgan", "--data", str(flat_folder), "--out", str(tokens),
                 "--batch-size", "3", "--device", "cpu"]) == 0
    capsys.readouterr()
    arr = np.load(tokens)
    assert arr.shape == (4, 16) and arr.dtype == np.int64
    assert oct(tokens.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    assert main(["detokenize", "--tokenizer", "test_vqgan", str(tokens), "--out", str(tmp_path / "png"),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(4)]
    # the same tokenizer (test_* names are seeded) re-encodes its own decodes to the same tokens or close
    from vfmtok.evaluation.resolve import resolve_tokenizer

    tok = resolve_tokenizer("test_vqgan")
    images = np.stack([np.asarray(Image.open(p)) for p in pngs])  # [N, H, W, 3]
    assert images.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(tok.detokenize(arr).permute(0, 2, 3, 1).numpy(), images)
    np.save(tmp_path / "bad.npy", arr + 1000)
    assert main(["detokenize", "--tokenizer", "test_vqgan", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "b"),
                 "--device", "cpu"]) == 2
    assert "tokens must lie in [0, 64)" in _error_line(capsys)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_real_entry_point_exits_2_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "preset=smoke", "catalog.vqgan.steps=-5", "--show"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "VFMTOK_DEBUG"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "catalog.vqgan.steps must be > 0" in lines[0], proc.stderr
