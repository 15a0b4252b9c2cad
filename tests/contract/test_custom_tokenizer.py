"""The README's "Add your own tokenizer" example, run through every stage of the smoke preset.

The harness must use only the :class:`vfmtok.Tokenizer` contract: a family defined in one module outside the
package, registered by name, trains, reconstructs, probes, feeds a GPT and lands in the record like the others.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import vfmtok
from benchmarks.run import run_benchmark

README = Path(__file__).resolve().parents[2] / "README.md"


def _example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if "class PatchVQ(Tokenizer)" in b)


@pytest.fixture(scope="module")
def toy_registered() -> None:
    if "toy_patch_vq" not in vfmtok.list_tokenizers("toy_*"):
        exec(compile(_example_source(), f"{README}:PatchVQ", "exec"), {"__name__": "readme_toy_tokenizer"})


def test_the_example_tokenizer_round_trips_and_saves(toy_registered: None, tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok = vfmtok.create_tokenizer("toy_patch_vq").eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    tokens = tok.tokenize(images)
    assert tokens.shape == (3, 64) and tok.token_layout().kind == "grid" and tok.frozen_encoder is None
    tok.save_pretrained(str(tmp_path / "toy"))
    again = vfmtok.from_pretrained(tmp_path / "toy")
    assert torch.equal(again.tokenize(images), tokens) and torch.equal(again.detokenize(tokens), tok.detokenize(tokens))


def test_the_example_tokenizer_runs_every_smoke_stage(toy_registered: None, tmp_path: Path) -> None:
    record = run_benchmark(["preset=smoke", "tokenizers=[toy]",
                            "+catalog.toy={name: toy_patch_vq, steps: 10, batch_size: 16, lr: 1e-3}",
                            "ar.steps=10", "ar.eval_every=0", f"work_dir={tmp_path / 'work'}",
                            f"results_dir={tmp_path / 'results'}", "progress=false"], write_results=False)
    rows = {(r["metric"], r["setting"].get("cfg_scale"), r["setting"].get("features")): r for r in record["rows"]
            if r["tokenizer"] == "toy_patch_vq"}
    for key in [("psnr", None, None), ("rfid", None, None), ("codebook_usage", None, None),
                ("probe_top1", None, "pre_quant"), ("probe_top1", None, "codes"), ("gfid", 1.0, None),
                ("gfid", 2.0, None), ("encode_img_per_s", None, None)]:
        assert key in rows and rows[key]["value"] is not None, f"{key} missing or empty: {rows.get(key)}"
    assert record["tokenizers"]["toy_patch_vq"]["num_tokens"] == 64
