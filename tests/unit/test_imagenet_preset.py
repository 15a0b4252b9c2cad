"""The `imagenet256` preset evaluates released weights only; its generation path samples a released GPT with a
named protocol and scores it ADM-style (exercised here with tiny synthetic checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.config import load_config
from benchmarks.generation import released_gpts, run_released_generation
from benchmarks.stages import StageRunner
from tests.conftest import random_images
from vfmtok import create_tokenizer
from vfmtok.ar import create_gpt
from vfmtok.ar.protocols import get_protocol
from vfmtok.assets import RELEASED_WEIGHTS, released_by_filename
from vfmtok.evaluation import adm
from vfmtok.metrics.inception import POOL3, FeatureExtractor


def test_preset_loads_every_model_from_released_weights() -> None:
    cfg = load_config(["preset=imagenet256"])
    assert cfg.data.stream and cfg.data.eval_n == 50_000 and cfg.ar.num_samples == 50_000
    assert not cfg.suite.probe and not cfg.suite.throughput  # no stage needs ImageNet in memory
    for alias in cfg.tokenizers:
        run = cfg.catalog[alias]
        assert run.official and run.checkpoint, alias  # never random weights
        entries = released_by_filename(run.checkpoint)
        if len(entries) > 1:  # taming's files are all called last.ckpt: the release path tells them apart
            entries = [e for e in entries if run.checkpoint.endswith(e.release_path)]
        assert len(entries) == 1 and entries[0].family == run.official, f"{alias}: {run.checkpoint}"
        assert entries[0].arch == run.name, alias  # the architecture the released file was trained with
    assert cfg.catalog["vfmtok"].overrides["encoder_pretrained"] == RELEASED_WEIGHTS["dinov2_vitl14_reg4"].filename
    files = {g.checkpoint for g in cfg.ar.released}
    assert {"c2i_B_256.pt", "c2i_L_256.pt", "c2i_XL_384.pt", "GPT-B-300e.pt", "GPT-L-300e.pt",
            "GPT-XL-200e.pt"} <= files
    for g in cfg.ar.released:
        (entry,) = released_by_filename(g.checkpoint)
        assert entry.family == g.official and g.table and get_protocol(g.protocol)
        tok = cfg.catalog[g.tokenizer]
        size = tok.overrides.get("image_size", 256) if g.official == "llamagen_gpt" else None
        if size is not None:  # LlamaGen GPTs see the VQ-16 grid of the size they were trained at
            assert entry.num_tokens == (size // 16) ** 2, g.checkpoint
    assert cfg.ar.reference == "VIRTUAL_imagenet256_labeled.npz" and cfg.ar.eval_size == 256
    assert [g.protocol for g in released_gpts(cfg, "vfmtok")] == ["vfmtok"] * 3 + ["vfmtok_cfg_free"] * 3
    assert released_gpts(cfg, "vqgan") == []  # taming published no class-conditional GPT


class _Proj(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, 8)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.proj(torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)).relu(),)


def test_released_gpt_is_sampled_with_its_protocol_scored_and_cached(tmp_path, monkeypatch) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("VFMTOK_WEIGHTS", str(weights))
    torch.manual_seed(0)
    tok = create_tokenizer("test_llamagen_vq").eval()
    gpt = create_gpt("test_gpt", vocab_size=tok.spec.codebook_size, num_tokens=tok.spec.num_tokens, num_classes=10,
                     grid=tok.spec.token_grid)
    with torch.no_grad():  # non-zero output head and class embeddings, so that guidance changes the tokens
        for p in gpt.parameters():
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    state = {**gpt.state_dict(), "freqs_cis": torch.zeros(tok.spec.num_tokens + 1, 4, 2)}  # gives the length
    torch.save({"model": state, "ema": state}, weights / "tiny_c2i.pt")  # a released-format (LlamaGen) file
    np.savez(weights / "ref.npz", arr_0=random_images(6, 16, seed=3).permute(0, 2, 3, 1).numpy())
    extractor = FeatureExtractor(_Proj(), (POOL3,), {"extractor": "tiny", "weights_sha256": "t", "resize": "none"})
    monkeypatch.setattr(adm, "fid_extractor", lambda *a, **k: extractor)  # a cheap stand-in for the Inception
    cfg = load_config(["preset=imagenet256", "ar.num_samples=8", "ar.batch_size=4", "ar.eval_size=0",
                       "ar.reference=ref.npz", "ar.released=[{tokenizer: llamagen_vq, official: llamagen_gpt, "
                       "checkpoint: tiny_c2i.pt, protocol: project, cfg_scales: [1.0, 2.0], table: test}]"])
    (g,) = released_gpts(cfg, "llamagen_vq")
    plan = SimpleNamespace(cfg=cfg, runner=StageRunner(tmp_path / "work"), device=torch.device("cpu"),
                           data=SimpleNamespace(stream=True))
    rows, artifacts = run_released_generation(plan, tok, {"tokenizer": "t"}, "test_llamagen_vq", [g])
    by = {(r.metric, r.setting["cfg_scale"]): r for r in rows}
    assert set(by) == {(m, s) for m in ("gfid", "sfid", "precision", "recall", "inception_score") for s in (1.0, 2.0)}
    for scale in (1.0, 2.0):
        npz = Path(artifacts["samples_npz"][f"tiny_c2i@cfg{scale:g}"])
        images = np.load(npz)["arr_0"]
        assert images.shape == (8, 16, 16, 3) and images.dtype == np.uint8
        direct = adm.evaluate_samples(npz, weights / "ref.npz", extractor=extractor)
        assert by[("gfid", scale)].value == pytest.approx(direct["fid"], rel=1e-12) and by[("gfid", scale)].n == 8
        assert by[("precision", scale)].value == direct["precision"]
        assert by[("sfid", scale)].value is None and "mu_s" in by[("sfid", scale)].reason
        record = json.loads((npz.parent / "samples.json").read_text())
        assert record["sampling"]["cfg_scale"] == scale and record["protocol"] == "project"
        assert record["labels"]["scheme"] == get_protocol("project").label_scheme
        assert by[("gfid", scale)].setting == {"cfg_scale": scale, "gpt": "tiny_c2i.pt", "protocol": "project",
                                               "gpt_weights": "ema", "table": "test"}  # the weights loaded
    guided, unguided = (np.load(artifacts["samples_npz"][f"tiny_c2i@cfg{s:g}"])["arr_0"] for s in (2.0, 1.0))
    assert not np.array_equal(guided, unguided)  # the scale reached the sampler
    again, _ = run_released_generation(plan, tok, {"tokenizer": "t"}, "test_llamagen_vq", [g])
    assert [r.value for r in again] == [r.value for r in rows] and plan.runner.history[-1]["cached"]


def test_streamed_reconstruction_stage_matches_the_in_memory_metrics(tmp_path, monkeypatch) -> None:
    """data.stream reads ImageNet-style val folders lazily; the stage's PSNR/SSIM/usage equal the in-memory path."""
    from PIL import Image

    from benchmarks import context, pipeline
    from vfmtok.data.sources import open_images
    from vfmtok.metrics.evaluate import evaluate_reconstruction

    val = tmp_path / "data" / "imagenet" / "val"
    images = random_images(6, 20, seed=4)  # 20 px originals, centre-cropped to 16 by the reader
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        (val / f"n{i % 2:08d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(val / f"n{i % 2:08d}" / f"{i}.png")
    monkeypatch.setenv("VFMTOK_DATA", str(tmp_path / "data"))
    cfg = load_config(["preset=imagenet256", "data.image_size=16", "data.eval_n=5", "suite.fid=false",
                       "device=cpu"])
    data = context.prepare_data(cfg)
    assert data.stream and data.train is None and len(data.eval) == 6 and data.describe()["sizes"] == {"eval": 6}
    plan = pipeline.Pipeline(cfg, StageRunner(tmp_path / "work"), data)
    torch.manual_seed(0)
    tok = create_tokenizer("test_llamagen_vq").eval()
    (tmp_path / "stage").mkdir()
    result = plan._eval_recon_stream(tok, tmp_path / "stage")
    rows = {r["metric"]: r for r in result["rows"]}
    reals = torch.stack([open_images(val, size=16)[i][0] for i in range(5)])
    expected = evaluate_reconstruction(tok, reals, batch_size=4, fid=False)
    assert rows["psnr"]["n"] == 5 and rows["psnr"]["value"] == pytest.approx(expected["psnr"], rel=1e-9)
    assert rows["ssim"]["value"] == pytest.approx(expected["ssim"], rel=1e-9)
    assert rows["codebook_usage"]["value"] == pytest.approx(100.0 * expected["codebook_usage"], rel=1e-9)
    assert rows["rfid"]["value"] is None and rows["rfid"]["reason"]
    assert np.load(tmp_path / "stage" / "recon.npz")["arr_0"].shape == (5, 16, 16, 3)
    with pytest.raises(ValueError, match="suite.probe=false"):
        plan.eval_images(tok)
