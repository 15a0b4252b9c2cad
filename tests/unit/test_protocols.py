"""Sampling protocols: each official setting equals the argument default the reference specs list for it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from vfmtok.ar import SamplingProtocol, create_gpt, generate, get_protocol, list_protocols
from vfmtok.ar.protocols import PROTOCOLS

SPECS = Path(__file__).resolve().parents[3] / "shared" / "specs"


def _spec(name: str) -> str:
    path = SPECS / name
    if not path.is_file():
        pytest.skip(f"reference spec {name} not found beside the repository (expected under {SPECS})")
    return path.read_text()


def _section(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i:text.index(end, i)]


def _number(cell: str) -> float:
    return float(re.search(r"-?\d+(\.\d+)?", cell.replace("−", "-")).group(0))


def test_registry_and_lookup() -> None:
    assert {"project", "llamagen", "vfmtok", "vfmtok_cfg_free"} <= set(list_protocols())
    assert isinstance(get_protocol("llamagen"), SamplingProtocol)
    with pytest.raises(KeyError, match="did you mean 'llamagen'"):
        get_protocol("llamagem")
    for name in list_protocols():
        p = get_protocol(name)
        assert all(p.sources[f] for f in ("top_k", "top_p", "temperature", "cfg_scale", "cfg_schedule",
                                          "cfg_interval", "guidance", "precision", "label_scheme", "gpt_weights"))
        with pytest.raises(AttributeError):
            p.top_k = 5  # frozen


def test_project_protocol_is_todays_defaults() -> None:
    p = get_protocol("project")
    params = inspect.signature(generate).parameters
    kwargs = p.sampling_kwargs()
    for key in ("temperature", "top_k", "top_p", "cfg_scale", "cfg_schedule", "cfg_interval"):
        assert kwargs[key] == params[key].default, key
    assert (p.guidance, p.precision, p.label_scheme, p.dtype) == ("not_one", "fp32", "uniform", torch.float32)
    assert all(v.startswith("project default") for v in p.sources.values())
    assert p.guides(0.5) and p.guides(2.0) and not p.guides(1.0)


def test_llamagen_protocol_matches_sample_c2i_ddp_defaults() -> None:
    spec = _spec("llamagen_vqgan.md")
    sampling = _section(spec, "### 2.4 Sampling / inference", "### 2.5")
    row = next(line for line in sampling.splitlines() if line.startswith("| sample_c2i_ddp.py (FID)"))
    cfg, top_k, top_p, temperature, precision = [c.strip() for c in row.strip("|").split("|")[1:6]]
    p = get_protocol("llamagen")
    assert p.cfg_scale == _number(cfg)
    assert p.top_k == _number(top_k) and p.top_p == _number(top_p) and p.temperature == _number(temperature)
    assert precision.startswith(p.precision) and p.dtype == torch.bfloat16
    assert p.cfg_interval == _number(re.search(r"`cfg_interval`\*\* \(default (\S+)", sampling).group(1))
    assert "if cfg_scale > 1, the conditioning becomes" in sampling and p.guidance == "above_one"
    assert not p.guides(0.5) and not p.guides(1.0) and p.guides(1.01)
    assert "not present anywhere in LlamaGen" in sampling and p.cfg_schedule == "constant"
    # per-checkpoint scales: GETTING_STARTED's FID commands (all 384 px)
    per_model = _section(sampling, "**Per-model FID commands**", "The paper says")
    table = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\w+) \| ([\d.]+)", per_model, re.M)}
    assert table == {"B": 2.0, "L": 2.0, "XL": 1.75, "XXL": 1.75, "3B": 1.65}
    assert p.cfg_scale_by_checkpoint == {f"llamagen_c2i_{k.lower()}_384": v for k, v in table.items()}
    assert p.sampling_kwargs("llamagen_c2i_xl_384")["cfg_scale"] == 1.75
    assert p.sampling_kwargs("llamagen_c2i_b_256")["cfg_scale"] == p.cfg_scale  # none published for 256 px
    # labels and weights
    assert "drawn **uniformly at random** per sample (`torch.randint(0, 1000)`)" in spec and p.label_scheme == "uniform"
    assert 'weights are under **`"model"`**' in spec and p.gpt_weights == "model"
    assert all("llamagen_vqgan.md" in s or "metrics.md" in s for s in p.sources.values())


def test_vfmtok_protocols_match_test_net_defaults() -> None:
    spec = _spec("vfmtok.md")
    sampling = _section(spec, "### 7.4 Sampling", "## 8.")
    defaults = re.search(r"Defaults: top-k (\S+) \(off\), top-p (\S+) \(off\), temperature (\S+), `cfg_interval` (\S+)",
                         sampling)
    scale = re.search(r"argparse default ([\d.]+)", sampling)
    for name, cfg_scale in (("vfmtok", float(scale.group(1))), ("vfmtok_cfg_free", 1.0)):
        p = get_protocol(name)
        assert (p.top_k, p.top_p, p.temperature, p.cfg_interval) == tuple(_number(g) for g in defaults.groups())
        assert p.cfg_scale == cfg_scale and p.cfg_scale_by_checkpoint == {}  # per-model scales unpublished
        assert "cast to bf16" in sampling and p.precision == "bf16"
        assert "`torch.randint` (not class-balanced)" in sampling and p.label_scheme == "uniform"
        assert "accepts `ema`, `module` or `state_dict` (not `model`)" in spec and p.gpt_weights == "ema"
        assert p.guidance == "above_one" and "[inferred]" in p.sources["guidance"]
    assert "**The per-model CFG scales behind the README numbers are not in the repo.**" in sampling
    assert "`cfg_scale` = 1.0" in sampling  # "without CFG"


def test_invalid_protocols_are_rejected() -> None:
    base = get_protocol("llamagen")
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
    with pytest.raises(ValueError, match="guidance must be one of"):
        SamplingProtocol(**{**fields, "guidance": "always"})
    with pytest.raises(ValueError, match="precision"):
        SamplingProtocol(**{**fields, "precision": "fp16"})
    with pytest.raises(ValueError, match="no source given"):
        SamplingProtocol(**{**fields, "sources": {**base.sources, "top_k": ""}})
    with pytest.raises(KeyError, match="already registered"):
        PROTOCOLS.register("llamagen", base)


def test_protocol_kwargs_drive_generate() -> None:
    if "guidance" not in inspect.signature(generate).parameters:
        pytest.skip("vfmtok.ar.sampling.generate has no guidance= keyword yet")
    torch.manual_seed(0)
    model = create_gpt("test_gpt", 64, 4, 10)  # 4 tokens (2 x 2): sampling cost is per step
    with torch.no_grad():
        model.output.weight.normal_(0, 0.5)
    labels = torch.arange(8)

    def run(protocol: str, cfg_scale: float) -> torch.Tensor:
        kwargs = {**get_protocol(protocol).sampling_kwargs(), "cfg_scale": cfg_scale}
        return generate(model, labels, generator=torch.Generator().manual_seed(5), **kwargs)

    llamagen_half, llamagen_one, project_half, project_one = (
        run("llamagen", 0.5), run("llamagen", 1.0), run("project", 0.5), run("project", 1.0))
    # LlamaGen's rule: a scale below 1 means no guidance at all; the project's rule guides with it
    assert torch.equal(llamagen_half, llamagen_one)
    assert (project_half != project_one).sum() >= 4
    assert torch.equal(project_one, llamagen_one)


def test_guides_agrees_with_the_sampler_rule() -> None:
    from vfmtok.ar import sampling

    if not hasattr(sampling, "guidance_applies"):
        pytest.skip("vfmtok.ar.sampling has no guidance_applies yet")
    for name in list_protocols():
        p = get_protocol(name)
        for scale in (0.0, 0.5, 1.0, 1.5, 4.0):
            assert p.guides(scale) == sampling.guidance_applies(scale, p.guidance), (name, scale)
