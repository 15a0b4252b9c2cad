"""`vfmtok eval-recon` and `vfmtok sample`: files, metrics against the in-memory evaluators, resume, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.test_stream import make_jpeg_folder
from vfmtok import create_tokenizer
from vfmtok.ar import create_gpt
from vfmtok.cli import main
from vfmtok.data import open_images, read_image_folder
from vfmtok.evaluation.recon import evaluate_reconstruction_stream
from vfmtok.evaluation.resolve import resolve_gpt, resolve_tokenizer
from vfmtok.evaluation.samples import draw_labels, sample_images, sample_to_npz
from vfmtok.evaluation.shards import RunningMoments
from vfmtok.metrics.evaluate import evaluate_reconstruction
from vfmtok.metrics.fidelity import GaussianStats, frechet_distance
from vfmtok.metrics.inception import FeatureExtractor

TOK = "test_llamagen_vq"  # 16 px: the 256 px JPEGs are centre-cropped down to it in the loader


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs") / "tree", data_root, n=60)


class _TinyFeatures(torch.nn.Module):
    """A fixed random feature map standing in for the Inception (same interface, milliseconds per batch)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 32, 4, stride=4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.tanh(self.conv(x.float() / 127.5 - 1)).mean((2, 3)),)


def _extractor() -> FeatureExtractor:
    return FeatureExtractor(_TinyFeatures(), ("2048",), {"extractor": "tiny-test-features"})


def _fails(capsys: pytest.CaptureFixture, match: str, argv: list[str]) -> None:
    """``vfmtok ARGV`` exits with status 2 and one error line matching ``match`` (no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err, err


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# ---------------------------------------------------------------- eval-recon
def test_eval_recon_matches_the_in_memory_evaluator(folder: Path, tmp_path: Path) -> None:
    tok = resolve_tokenizer(TOK)
    data = open_images(folder, size=16)
    out = evaluate_reconstruction_stream(
        tok, data, num=40, batch_size=8, shard_size=16, out_dir=tmp_path / "s", extractor=_extractor()
    )
    ref = evaluate_reconstruction(
        tok, read_image_folder(folder, size=16).head(40), batch_size=8, out_dir=tmp_path / "ref", extractor=_extractor()
    )
    assert out["n"] == ref["n"] == 40 and out["complete"]
    for key in ("psnr", "ssim", "codebook_usage", "codebook_perplexity", "tokens", "n_identical"):
        assert out[key] == pytest.approx(ref[key], rel=1e-12, abs=0), key
    assert abs(out["rfid"] - ref["rfid"]) < 1e-6  # shard-wise float64 moments vs all features at once
    assert np.array_equal(_npz(tmp_path / "s" / "recon.npz")["arr_0"], _npz(tmp_path / "ref" / "recon.npz")["arr_0"])
    record = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert record["tokenizer"]["weights_sha256"] == tok.provenance["weights_sha256"]
    assert record["data"]["fingerprint"] == data.fingerprint() and record["data"]["n"] == 40
    assert record["code"]["version"] and record["settings"]["batch_size"] == 8


def test_running_moments_equal_numpy_cov() -> None:
    g = np.random.default_rng(0)
    feats = (g.standard_normal((301, 64)) * 3 + 50).astype(np.float32)  # a large mean: cancellation-prone
    m = RunningMoments()
    for part in np.array_split(feats, [7, 100, 101, 250]):
        m.add(part)
    ref = GaussianStats.of(torch.from_numpy(feats))
    assert np.allclose(m.mean, ref.mu, rtol=0, atol=1e-10) and np.allclose(m.covariance(), ref.sigma, atol=1e-9)
    other = GaussianStats.of(torch.from_numpy(feats[::-1].copy() * 1.1))
    assert (
        abs(frechet_distance(GaussianStats(m.mean, m.covariance(), m.n), other) - frechet_distance(ref, other)) < 1e-6
    )


def test_eval_recon_cli_resumes_after_a_crash(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = [
        "eval-recon",
        "--tokenizer",
        TOK,
        "--data",
        str(folder),
        "--num",
        "20",
        "--batch-size",
        "4",
        "--shard-size",
        "8",
        "--no-fid",
        "--device",
        "cpu",
    ]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0

    import vfmtok.interface as interface

    calls = {"n": 0}
    original = interface.Tokenizer.prepare

    def crash_on_fifth_batch(self, images, **kwargs):  # the process "dies" in the middle of shard 2
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, images, **kwargs)

    monkeypatch.setattr(interface.Tokenizer, "prepare", crash_on_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(tmp_path / "killed")])
    shards = sorted((tmp_path / "killed" / "shards").glob("*.npz"))
    assert [p.name for p in shards] == ["00000.npz", "00001.npz"]  # complete shards only, nothing half-written
    assert not (tmp_path / "killed" / "recon.npz").exists()
    stamp = shards[0].stat().st_mtime_ns
    monkeypatch.setattr(interface.Tokenizer, "prepare", original)
    main([*args, "--max-shards", "1", "--out", str(tmp_path / "killed")])  # one more shard, then stop
    assert len(list((tmp_path / "killed" / "shards").glob("*.npz"))) == 3
    main([*args, "--out", str(tmp_path / "killed")])
    assert shards[0].stat().st_mtime_ns == stamp  # done shards are not recomputed
    a, b = (tmp_path / "straight" / "recon.npz").read_bytes(), (tmp_path / "killed" / "recon.npz").read_bytes()
    assert a == b
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "killed"))
    assert (m1["psnr"], m1["ssim"], m1["codebook_perplexity"]) == (m2["psnr"], m2["ssim"], m2["codebook_perplexity"])


def test_eval_recon_tokenizer_forms(folder: Path, tmp_path: Path) -> None:
    tok = create_tokenizer(TOK)
    tok.save_pretrained(str(tmp_path / "saved"))
    torch.save({"model": tok.state_dict()}, tmp_path / "released.pt")
    for tag, form in (
        ("saved", ["--tokenizer", str(tmp_path / "saved")]),
        ("official", ["--tokenizer", TOK, "--official", "llamagen_vq", "--checkpoint", str(tmp_path / "released.pt")]),
    ):
        out = tmp_path / f"out-{tag}"
        main(
            [
                "eval-recon",
                *form,
                "--data",
                str(folder),
                "--num",
                "8",
                "--batch-size",
                "8",
                "--no-fid",
                "--out",
                str(out),
            ]
        )
        record = json.loads((out / "metrics.json").read_text())
        assert record["n"] == 8 and len(record["tokenizer"]["weights_sha256"]) == 64
        assert _npz(out / "recon.npz")["arr_0"].shape == (8, 16, 16, 3)


def test_eval_recon_bad_input_is_clear_and_loses_nothing(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["eval-recon", "--tokenizer", TOK, "--batch-size", "4", "--no-fid"]
    _fails(
        capsys,
        r"--num 61 is larger than the data: .* holds 60 images",
        [*base, "--data", str(folder), "--num", "61", "--out", str(tmp_path / "a")],
    )
    assert not (tmp_path / "a").exists()
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((4, 16, 16, 3), np.float32))
    _fails(
        capsys, r"arr_0 must be uint8 images", [*base, "--data", str(tmp_path / "f.npz"), "--out", str(tmp_path / "b")]
    )
    _fails(
        capsys,
        r"--size 32 differs from the tokenizer's image size 16",
        [*base, "--data", str(folder), "--size", "32", "--out", str(tmp_path / "c")],
    )
    torch.save({"model": create_tokenizer("test_vqgan").state_dict()}, tmp_path / "vqgan.pt")
    _fails(
        capsys,
        r"vqgan\.pt",
        [
            *base,
            "--official",
            "llamagen_vq",
            "--checkpoint",
            str(tmp_path / "vqgan.pt"),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "d"),
        ],
    )
    _fails(
        capsys,
        r"random weights",
        ["eval-recon", "--tokenizer", "llamagen_vq_f16_k16384", "--data", str(folder), "--out", str(tmp_path / "e")],
    )
    main([*base, "--data", str(folder), "--num", "8", "--out", str(tmp_path / "done")])
    before = (tmp_path / "done" / "recon.npz").read_bytes()
    _fails(
        capsys,
        r"holds shards of another run \(differing: n\)",
        [*base, "--data", str(folder), "--num", "12", "--out", str(tmp_path / "done")],
    )
    assert (tmp_path / "done" / "recon.npz").read_bytes() == before


# ---------------------------------------------------------------- sample
def _gpt(tok, seed: int = 0):
    torch.manual_seed(seed)
    return create_gpt("test_gpt", vocab_size=tok.spec.codebook_size, num_tokens=tok.spec.num_tokens, num_classes=4)


def test_sample_to_npz_equals_sample_images(tmp_path: Path) -> None:
    tok = resolve_tokenizer(TOK)
    gpt = _gpt(tok)
    kw = {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 8}
    images, labels = sample_images(gpt, tok, num_samples=11, num_classes=4, seed=3, batch_size=4, **kw)
    rec = sample_to_npz(
        gpt, tok, num=11, seed=3, batch_size=4, shard_size=4, out_dir=tmp_path, num_classes=4, labels="uniform", **kw
    )
    arrays = _npz(tmp_path / "samples.npz")
    assert np.array_equal(arrays["arr_0"], images.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(arrays["arr_1"], labels.numpy())
    assert rec["labels"]["scheme"] == "uniform" and "torch.randint" in rec["labels"]["rule"]
    assert rec["labels"]["counts"] == torch.bincount(labels, minlength=4).tolist()


def test_sample_in_bf16(tmp_path: Path) -> None:
    tok = resolve_tokenizer(TOK)
    rec = sample_to_npz(_gpt(tok), tok, num=4, seed=0, batch_size=2, out_dir=tmp_path, precision="bf16", cfg_scale=2.0)
    arrays = _npz(tmp_path / "samples.npz")
    assert rec["precision"] == "bf16" and arrays["arr_0"].shape == (4, 16, 16, 3) and arrays["arr_1"].max() < 4


def test_label_schemes() -> None:
    balanced = draw_labels(50_000, 1000, seed=0, scheme="balanced")
    assert torch.bincount(balanced).tolist() == [50] * 1000 and not torch.equal(balanced[:1000], torch.arange(1000))
    assert torch.bincount(draw_labels(10, 4, 0, "balanced"), minlength=4).tolist() == [3, 3, 2, 2]
    uniform = draw_labels(1000, 10, seed=1)
    assert torch.equal(uniform, torch.randint(10, (1000,), generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="labels must be one of"):
        draw_labels(4, 4, 0, "stratified")


def test_sample_cli_gpt_forms_resume_and_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    tok = resolve_tokenizer(TOK)
    gpt = _gpt(tok)
    torch.save(
        {"model": gpt.state_dict(), "gpt_config": {**gpt.config.__dict__}, "registry_name": "test"}, tmp_path / "gpt.pt"
    )
    torch.save({"model": gpt.state_dict()}, tmp_path / "official.pt")  # LlamaGen's layout: weights under "model"
    ours = resolve_gpt(str(tmp_path / "gpt.pt"))
    assert ours.provenance["form"] == "trained" and len(ours.provenance["weights_sha256"]) == 64
    base = [
        "sample",
        "--tokenizer",
        TOK,
        "--num",
        "10",
        "--batch-size",
        "2",
        "--shard-size",
        "4",
        "--seed",
        "7",
        "--cfg-scale",
        "1.5",
        "--num-classes",
        "4",
        "--labels",
        "balanced",
    ]
    main([*base, "--gpt", str(tmp_path / "gpt.pt"), "--out", str(tmp_path / "ours")])
    record = json.loads((tmp_path / "ours" / "samples.json").read_text())
    assert record["labels"]["counts"] == [3, 3, 2, 2] and record["sampling"]["cfg_scale"] == 1.5
    assert record["gpt"]["form"] == "trained" and record["tokenizer"]["name"] == TOK
    arrays = _npz(tmp_path / "ours" / "samples.npz")
    assert arrays["arr_0"].shape == (10, 16, 16, 3) and arrays["arr_0"].dtype == np.uint8

    import vfmtok.evaluation.samples as sampling

    calls = {"n": 0}
    original = sampling.generate

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(sampling, "generate", crash)
    with pytest.raises(KeyboardInterrupt):
        main([*base, "--gpt", str(tmp_path / "gpt.pt"), "--out", str(tmp_path / "resumed")])
    assert len(list((tmp_path / "resumed" / "shards").glob("*.npz"))) == 1
    monkeypatch.setattr(sampling, "generate", original)
    main([*base, "--gpt", str(tmp_path / "gpt.pt"), "--out", str(tmp_path / "resumed")])
    assert (tmp_path / "resumed" / "samples.npz").read_bytes() == (tmp_path / "ours" / "samples.npz").read_bytes()

    main(
        [
            *base,
            "--gpt-official",
            "llamagen_gpt",
            "--gpt-checkpoint",
            str(tmp_path / "official.pt"),
            "--out",
            str(tmp_path / "released"),
        ]
    )
    assert (tmp_path / "released" / "samples.npz").read_bytes() == (tmp_path / "ours" / "samples.npz").read_bytes()
    released = json.loads((tmp_path / "released" / "samples.json").read_text())["gpt"]
    assert released["form"] == "official" and released["family"] == "llamagen_gpt"

    _fails(
        capsys,
        r"does not fit tokenizer",
        [
            "sample",
            "--gpt",
            str(tmp_path / "gpt.pt"),
            "--tokenizer",
            TOK,
                "--tokenizer-size",
                "32",
            "--num",
            "2",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    _fails(capsys, r"name one GPT", ["sample", "--tokenizer", TOK, "--num", "2", "--out", str(tmp_path / "y")])
    _fails(
        capsys,
        "gpt_config",
        [
            "sample",
            "--gpt",
            str(tmp_path / "official.pt"),
            "--tokenizer",
            TOK,
            "--num",
            "2",
            "--out",
            str(tmp_path / "z"),
        ],
    )
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))


# ---------------------------------------------------------------- full size (slow)
@pytest.mark.slow
def test_full_size_vq16_and_gpt_b_checkpoints_in_official_layouts(folder: Path, tmp_path: Path) -> None:
    """Synthetic checkpoints laid out like the released ``vq_ds16_c2i.pt`` and ``c2i_B_256.pt`` (random weights)."""
    torch.manual_seed(0)
    vq = create_tokenizer("llamagen_vq_f16_k16384", pretrained=False)
    torch.save({"model": vq.state_dict()}, tmp_path / "vq_ds16_c2i.pt")
    gpt = create_gpt("gpt_b", vocab_size=16384, num_tokens=256, num_classes=1000)
    torch.save({"model": gpt.state_dict(), "steps": 0}, tmp_path / "c2i_B_256.pt")
    del gpt
    tok = ["--tokenizer", "llamagen_vq_f16_k16384", "--official", "llamagen_vq", "--checkpoint",
           str(tmp_path / "vq_ds16_c2i.pt")]
    assert main(["eval-recon", *tok, "--data", str(folder), "--num", "2", "--batch-size", "2", "--no-fid",
                 "--out", str(tmp_path / "recon")]) == 0
    record = json.loads((tmp_path / "recon" / "metrics.json").read_text())
    assert record["n"] == 2 and record["tokenizer"]["form"] == "official"
    assert _npz(tmp_path / "recon" / "recon.npz")["arr_0"].shape == (2, 256, 256, 3)
    assert main(["sample", "--gpt-official", "llamagen_gpt", "--gpt-checkpoint", str(tmp_path / "c2i_B_256.pt"), *tok,
                 "--protocol", "llamagen", "--precision", "fp32", "--cfg-scale", "2.0", "--num", "2",
                 "--batch-size", "2", "--out", str(tmp_path / "samples")]) == 0
    samples = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert samples["precision"] == "fp32" and samples["sampling"]["cfg_scale"] == 2.0  # the flag beats the protocol
    assert samples["protocol"]["name"] == "llamagen" and samples["gpt"]["family"] == "llamagen_gpt"
    assert _npz(tmp_path / "samples" / "samples.npz")["arr_0"].shape == (2, 256, 256, 3)
