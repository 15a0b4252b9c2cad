"""Released-weights preflight: a preset that loads released files stops before any work, listing every missing one."""

from __future__ import annotations

import pytest
import torch

from benchmarks.config import load_config
from benchmarks.run import run_benchmark
from benchmarks.weights import MissingWeightsError, check_weights, missing_weights, required_files, resolve_file
from vfmtok.errors import ConfigError

PRESENT = ["vq_ds16_c2i.pt", "c2i_B_256.pt", "GPT-L-300e.pt"]


def _tiny_checkpoint(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(2)}}, path)


@pytest.fixture
def weights(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    for name in PRESENT:
        _tiny_checkpoint(folder / name)
    monkeypatch.setenv("VFMTOK_WEIGHTS", str(folder))
    monkeypatch.setenv("VFMTOK_DATA", str(tmp_path / "data"))
    return folder


def test_every_missing_file_is_listed_once_with_where_it_is_published(weights) -> None:
    cfg = load_config(["preset=imagenet256"])
    needed = {resolve_file(name, envs=envs) for _, name, envs in required_files(cfg)}
    absent = sorted(str(p) for p in needed if not p.is_file())
    lines = missing_weights(cfg)
    assert len(lines) == len(absent) == len(needed) - len(PRESENT)  # one line per missing file, none per present one
    assert sorted(line.split(",")[0].split(" (")[0] for line in lines) == absent
    by_name = {line.split(",")[0].rsplit("/", 1)[-1]: line for line in lines}
    assert "huggingface.co/yexiguafu/VFMTok (DINOv2/GPT-B/GPT-B-300e.pt)" in by_name["GPT-B-300e.pt"]
    assert "ar.released[3].checkpoint, ar.released[6].checkpoint" in by_name["GPT-B-300e.pt"]  # one file, two uses
    assert "vqgan_imagenet_f16_16384/ckpts/last.ckpt" in by_name["last.ckpt"]
    assert "vqgan_imagenet_f16_1024" not in by_name["last.ckpt"]  # the exact release path, not any last.ckpt
    assert "VIRTUAL_imagenet256_labeled.npz" in by_name and "openaipublic" in by_name["VIRTUAL_imagenet256_labeled.npz"]
    assert "dinov2_vitl14_reg4_pretrain.pth" in by_name
    with pytest.raises(MissingWeightsError) as err:
        check_weights(cfg)
    assert all(line in str(err.value) for line in lines) and "nothing was run" in str(err.value)


def test_run_stops_before_any_work(weights, tmp_path) -> None:
    results, work = tmp_path / "results", tmp_path / "work"
    with pytest.raises(MissingWeightsError, match="needs 8 file"):
        run_benchmark(["preset=imagenet256", "device=cpu", f"results_dir={results}", f"work_dir={work}"])
    assert not results.exists() and not work.exists()  # no folder made, nothing computed


def test_all_files_present_passes_and_absolute_paths_and_data_root_resolve(weights, tmp_path, monkeypatch) -> None:
    cfg = load_config(["preset=imagenet256"])
    for _, name, envs in required_files(cfg):
        if name != "VIRTUAL_imagenet256_labeled.npz":
            _tiny_checkpoint(resolve_file(name, envs=envs))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "VIRTUAL_imagenet256_labeled.npz").write_bytes(b"x")  # the reference may sit in VFMTOK_DATA
    assert missing_weights(cfg) == []
    check_weights(cfg)
    elsewhere = tmp_path / "elsewhere.pt"
    cfg = load_config(["preset=imagenet256", f"catalog.vqgan.checkpoint={elsewhere}"])
    assert missing_weights(cfg) == [f"{elsewhere}, for catalog.vqgan.checkpoint; published at not a file of the "
                                    "released-weights table (see README 'Released weights')"]
    monkeypatch.delenv("VFMTOK_WEIGHTS")
    cfg = load_config(["preset=imagenet256"])
    assert all("VFMTOK_WEIGHTS not set" in line or "elsewhere" in line or "VIRTUAL" in line
               for line in missing_weights(cfg))


def test_presets_without_released_weights_need_nothing(weights) -> None:
    assert missing_weights(load_config(["preset=smoke"])) == []
    cfg = load_config(["preset=imagenet256", "suite.generation=false", "tokenizers=[llamagen_vq]"])
    assert missing_weights(cfg) == []  # its only file, vq_ds16_c2i.pt, is present


def test_bad_released_gpt_entries_are_config_errors(weights) -> None:
    with pytest.raises(ConfigError, match=r"ar.released\[0\].tokenizer must be a catalog key"):
        check_weights(load_config(["preset=imagenet256", "ar.released.0.tokenizer=nope"]))
    with pytest.raises(ConfigError, match=r"ar.released\[1\].protocol must be one of"):
        check_weights(load_config(["preset=imagenet256", "ar.released.1.protocol=nope"]))
    with pytest.raises(ConfigError, match=r"ar.released\[2\].official must be one of"):
        check_weights(load_config(["preset=imagenet256", "ar.released.2.official=llamagen_vq"]))
