"""Named sampling protocols: the project's own defaults and each paper table's official sampler settings.

A :class:`SamplingProtocol` fixes everything that decides which tokens a class-conditional GPT samples: the
filters (top-k, top-p, temperature), classifier-free guidance (scale, schedule, interval, and the rule for when
guidance is on), the precision the GPT runs in, how class labels are drawn, and which weights of a released
training file are sampled. ``sources`` names, for every setting, the official file and argument it comes from
(or "project default").

* ``project``: the project's own defaults (``vfmtok.ar.sampling.generate``): no filtering, fp32, guidance
  whenever ``cfg_scale != 1``.
* ``llamagen``: LlamaGen's FID sampler ``sample_c2i_ddp.py`` behind its paper / README table: top-k 0,
  top-p 1, temperature 1, bf16, i.i.d. labels, guidance only when ``cfg_scale > 1``, ``model`` weights; the
  per-checkpoint CFG scales of its FID commands in ``cfg_scale_by_checkpoint``.
* ``vfmtok`` / ``vfmtok_cfg_free``: VFMTok's ``test_net.py`` behind its README "with CFG" / "without CFG"
  tables: the same filters, bf16, ``ema`` weights; the per-model CFG scales of the "with CFG" table are not
  published, so its ``cfg_scale`` is the script's default and ``cfg_scale_by_checkpoint`` is empty.

LlamaGen's demo script ``sample_c2i.py`` (top-k 2000, cfg 4.0, a fixed list of 8 labels) reproduces no table
and is not a protocol here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from vfmtok.ar.sampling import CFG_SCHEDULES
from vfmtok.checkpoint import WEIGHTS_CHOICES
from vfmtok.registry import Registry

GUIDANCE_RULES = ("not_one", "above_one")
PRECISIONS = ("fp32", "bf16")
LABEL_SCHEMES = ("uniform", "balanced")
_SETTINGS = ("top_k", "top_p", "temperature", "cfg_scale", "cfg_schedule", "cfg_interval", "guidance", "precision",
             "label_scheme", "gpt_weights")


@dataclass(frozen=True)
class SamplingProtocol:
    """One sampler configuration, with the provenance of each setting.

    ``guidance``: ``"not_one"`` guides whenever ``cfg_scale != 1`` (project), ``"above_one"`` only when
    ``cfg_scale > 1`` (LlamaGen's ``generate``). ``label_scheme``: ``"uniform"`` i.i.d. ``randint`` labels,
    ``"balanced"`` equally many per class. ``cfg_interval`` as in :func:`vfmtok.ar.sampling.guidance_scale`
    (-1 or None: every token). ``cfg_scale_by_checkpoint`` maps a :data:`vfmtok.assets.RELEASED_WEIGHTS` key to
    the scale the paper table used for that checkpoint, where published.
    """

    name: str
    top_k: int
    top_p: float
    temperature: float
    cfg_scale: float
    cfg_schedule: str
    cfg_interval: int | None
    guidance: str
    precision: str
    label_scheme: str
    gpt_weights: str
    sources: dict[str, str] = field(hash=False)
    cfg_scale_by_checkpoint: dict[str, float] = field(default_factory=dict, hash=False)
    description: str = ""

    def __post_init__(self) -> None:
        for name, value, allowed in (("guidance", self.guidance, GUIDANCE_RULES),
                                     ("precision", self.precision, PRECISIONS),
                                     ("label_scheme", self.label_scheme, LABEL_SCHEMES),
                                     ("gpt_weights", self.gpt_weights, WEIGHTS_CHOICES),
                                     ("cfg_schedule", self.cfg_schedule, CFG_SCHEDULES)):
            if value not in allowed:
                raise ValueError(f"protocol {self.name!r}: {name} must be one of {allowed}, got {value!r}")
        if self.top_k < 0 or not 0.0 < self.top_p <= 1.0 or self.temperature < 0 or self.cfg_scale < 0:
            raise ValueError(f"protocol {self.name!r}: need top_k >= 0, 0 < top_p <= 1, temperature >= 0 and "
                             f"cfg_scale >= 0")
        missing = [s for s in _SETTINGS if not self.sources.get(s)]
        if missing:
            raise ValueError(f"protocol {self.name!r}: no source given for {missing}")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the GPT runs in under this protocol."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def cfg_scale_for(self, checkpoint: str | None = None) -> float:
        """The guidance scale for a released checkpoint key (its paper-table value if published, else the default)."""
        if checkpoint is not None and checkpoint in self.cfg_scale_by_checkpoint:
            return self.cfg_scale_by_checkpoint[checkpoint]
        return self.cfg_scale

    def guides(self, cfg_scale: float | None = None) -> bool:
        """Whether guidance (the null-class branch) runs at ``cfg_scale`` (default: the protocol's) under its rule."""
        scale = self.cfg_scale if cfg_scale is None else cfg_scale
        return scale > 1.0 if self.guidance == "above_one" else scale != 1.0

    def sampling_kwargs(self, checkpoint: str | None = None) -> dict[str, Any]:
        """Keyword arguments of :func:`vfmtok.ar.sampling.generate` (``checkpoint``: see :meth:`cfg_scale_for`)."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "cfg_scale": self.cfg_scale_for(checkpoint), "cfg_schedule": self.cfg_schedule,
                "cfg_interval": self.cfg_interval, "guidance": self.guidance}

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (for result records)."""
        return dataclasses.asdict(self)


PROTOCOLS: Registry[SamplingProtocol] = Registry("sampling protocol")


def register_protocol(protocol: SamplingProtocol) -> SamplingProtocol:
    """Add ``protocol`` to the registry under its name."""
    return PROTOCOLS.register(protocol.name, protocol)


def get_protocol(name: str) -> SamplingProtocol:
    """The protocol called ``name``; an unknown name raises KeyError with close matches ("did you mean")."""
    return PROTOCOLS.get(name)


def list_protocols(pattern: str = "*") -> list[str]:
    """Names of the registered protocols matching ``pattern`` (fnmatch)."""
    return PROTOCOLS.list(pattern)


# ----------------------------------------------------------------------------- the protocols
_LG = "llamagen_vqgan.md"  # the reference spec each official value is cited from
_VT = "vfmtok.md"
_PROJECT = "project default"

register_protocol(SamplingProtocol(
    name="project", top_k=0, top_p=1.0, temperature=1.0, cfg_scale=1.0, cfg_schedule="constant", cfg_interval=None,
    guidance="not_one", precision="fp32", label_scheme="uniform", gpt_weights="ema",
    sources={
        "top_k": f"{_PROJECT}: vfmtok.ar.sampling.generate(top_k=0), no top-k filter",
        "top_p": f"{_PROJECT}: generate(top_p=1.0), no nucleus filter",
        "temperature": f"{_PROJECT}: generate(temperature=1.0)",
        "cfg_scale": f"{_PROJECT}: generate(cfg_scale=1.0); the benchmark presets sweep ar.cfg_scales",
        "cfg_schedule": f"{_PROJECT}: generate(cfg_schedule='constant')",
        "cfg_interval": f"{_PROJECT}: generate(cfg_interval=None), guidance at every token",
        "guidance": f"{_PROJECT}: guidance whenever cfg_scale != 1 (scales below 1 included)",
        "precision": f"{_PROJECT}: the GPT runs in float32",
        "label_scheme": f"{_PROJECT}: vfmtok.evaluation.samples.sample_images draws labels with torch.randint",
        "gpt_weights": f"{_PROJECT}: load_gpt_checkpoint prefers 'ema' in the project's own training files",
    },
    description="The project's own sampler defaults (not an official protocol)."))

register_protocol(SamplingProtocol(
    name="llamagen", top_k=0, top_p=1.0, temperature=1.0, cfg_scale=1.5, cfg_schedule="constant", cfg_interval=-1,
    guidance="above_one", precision="bf16", label_scheme="uniform", gpt_weights="model",
    cfg_scale_by_checkpoint={"llamagen_c2i_b_384": 2.0, "llamagen_c2i_l_384": 2.0, "llamagen_c2i_xl_384": 1.75,
                             "llamagen_c2i_xxl_384": 1.75, "llamagen_c2i_3b_384": 1.65},
    sources={
        "top_k": f"LlamaGen autoregressive/sample/sample_c2i_ddp.py --top-k, default 0 = off ({_LG} §2.4)",
        "top_p": f"LlamaGen sample_c2i_ddp.py --top-p, default 1.0 ({_LG} §2.4)",
        "temperature": f"LlamaGen sample_c2i_ddp.py --temperature, default 1.0 ({_LG} §2.4)",
        "cfg_scale": f"LlamaGen sample_c2i_ddp.py --cfg-scale, default 1.5 ({_LG} §2.4); per checkpoint: the "
                     f"--cfg-scale of each FID command in GETTING_STARTED.md ({_LG} §2.4, 384 px models)",
        "cfg_schedule": f"LlamaGen autoregressive/models/generate.py: a constant scale, no schedule ({_LG} §2.4)",
        "cfg_interval": f"LlamaGen generate.py / sample_c2i_ddp.py --cfg-interval, default -1 = always on "
                        f"({_LG} §2.4 item 4)",
        "guidance": f"LlamaGen generate.py: the null-class batch only if cfg_scale > 1.0 ({_LG} §2.4 item 1)",
        "precision": f"LlamaGen sample_c2i_ddp.py --precision bf16: the whole GPT cast to bf16, the VQ decoder in "
                     f"fp32 ({_LG} §2.4 Precision)",
        "label_scheme": f"LlamaGen sample_c2i_ddp.py: labels torch.randint(0, 1000) per sample ({_LG} §3; "
                        f"metrics.md §3.4)",
        "gpt_weights": f"LlamaGen autoregressive/sample/sample_c2i.py: checkpoint['model'] (--from-fsdp: the "
                       f"whole file) ({_LG} §2.5)",
    },
    description="LlamaGen's FID sampler (sample_c2i_ddp.py) behind its README/paper ImageNet 256 table: 50,000 "
                "samples; 384 px models decoded at 384 and resized bicubic (no antialias) to 256. No per-model "
                "scale is published for the 256 px checkpoints: they get the script default 1.5."))

_VFMTOK_SOURCES = {
    "top_k": f"VFMTok test_net.py --top-k, default 0 = off ({_VT} §7.4)",
    "top_p": f"VFMTok test_net.py --top-p, default 1.0 ({_VT} §7.4)",
    "temperature": f"VFMTok test_net.py --temperature, default 1.0 ({_VT} §7.4)",
    "cfg_scale": f"VFMTok test_net.py --cfg-scale (run_test.sh passes $2), argparse default 1.5; the per-model "
                 f"scales behind the README 'with CFG' table are not published ({_VT} §7.4)",
    "cfg_schedule": f"VFMTok generate.py: a constant scale, no schedule ({_VT} §7.4)",
    "cfg_interval": f"VFMTok test_net.py cfg_interval default -1: CFG at every step ({_VT} §7.4)",
    "guidance": f"VFMTok autoregressive/models/generate.py is LlamaGen's sampler ({_VT} §9.3), which guides only "
                f"if cfg_scale > 1.0 ({_LG} §2.4 item 1) [inferred]",
    "precision": f"VFMTok test_net.py: the GPT cast to bf16 and compiled ({_VT} §7.4)",
    "label_scheme": f"VFMTok test_net.py: classes drawn with torch.randint, not class-balanced ({_VT} §7.4)",
    "gpt_weights": f"VFMTok test_net.py reads ckpt['ema'] (else 'module', 'state_dict') ({_VT} §9.1)",
}

register_protocol(SamplingProtocol(
    name="vfmtok", top_k=0, top_p=1.0, temperature=1.0, cfg_scale=1.5, cfg_schedule="constant", cfg_interval=-1,
    guidance="above_one", precision="bf16", label_scheme="uniform", gpt_weights="ema", sources=_VFMTOK_SOURCES,
    description="VFMTok's sampler (test_net.py) behind its README 'AR generation models with CFG' table: 50,000 "
                "samples decoded at 336 and resized bicubic to 256. The table's per-model scales are unpublished: "
                "the default is the script's 1.5; pass the scale explicitly to reproduce a row."))

register_protocol(SamplingProtocol(
    name="vfmtok_cfg_free", top_k=0, top_p=1.0, temperature=1.0, cfg_scale=1.0, cfg_schedule="constant",
    cfg_interval=-1, guidance="above_one", precision="bf16", label_scheme="uniform", gpt_weights="ema",
    sources={**_VFMTOK_SOURCES,
             "cfg_scale": f"VFMTok README 'AR generation without CFG': the same checkpoints at cfg_scale 1.0, the "
                          f"conditional logits alone ({_VT} §7.4, §8.3)"},
    description="VFMTok's sampler behind its README 'AR generation without CFG' table."))
