"""Autoregressive sampling for the class-conditional GPT: KV cache, classifier-free guidance, top-k / top-p.

Guidance batches ``[cond; uncond]`` (the null class is ``num_classes``) through one forward pass and combines the
logits as ``uncond + s * (cond - uncond)``. Then come temperature, top-k, top-p and ``torch.multinomial``.

Speed: one KV cache per call, written in place; one forward per token for both branches; only the new position
goes through the output head; on CPU the Linear weights are packed for oneDNN for the duration of the call (see
:meth:`vfmtok.ar.gpt.GPT.setup_cache`); once a ``cfg_interval`` ends, only the conditional half is fed. On GPU,
``precision="bf16"`` runs under bf16 autocast (as the official recipes sample) and ``compile=True`` compiles the
decode step with ``torch.compile``.
"""

from __future__ import annotations

import torch

from vfmtok.ar.gpt import GPT

CFG_SCHEDULES = ("constant", "linear")
#: when guidance runs: "not_one" whenever cfg_scale != 1 (the project default), "above_one" only when cfg_scale > 1
#: (LlamaGen's rule: a scale <= 1 samples the conditional branch alone)
GUIDANCE_RULES = ("not_one", "above_one")
PRECISIONS = ("fp32", "bf16")


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """float [B, K] -> float [B, K]: divide by max(temperature, 1e-5), then mask (-inf) outside top-k / top-p.

    ``top_k`` 0 and ``top_p`` 1 disable the filters. Top-p keeps the smallest set of most likely tokens whose
    cumulative probability exceeds ``top_p``, and always the most likely one.
    """
    logits = logits.float() / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = torch.zeros_like(cum, dtype=torch.bool)
        remove[:, 1:] = cum[:, :-1] > top_p  # drop a token once the tokens before it already exceed top_p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def sample_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample int64 [B] from logits float [B, K] after :func:`filter_logits`."""
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def guidance_scale(t: int, num_tokens: int, cfg_scale: float, schedule: str = "constant",
                   cfg_interval: int | None = None) -> float:
    """The guidance scale used for token ``t`` (0-based).

    ``linear`` ramps 1 -> cfg_scale as 1 + (s - 1) * t / num_tokens (not part of LlamaGen). ``cfg_interval`` follows
    LlamaGen: guidance for tokens 0 .. cfg_interval + 1, none (scale 1) after; None or -1 means every token.
    """
    if cfg_interval is not None and cfg_interval >= 0 and t > cfg_interval + 1:
        return 1.0
    if schedule == "linear":
        return 1.0 + (cfg_scale - 1.0) * t / num_tokens
    return cfg_scale


def guidance_applies(cfg_scale: float, guidance: str = "not_one") -> bool:
    """Whether :func:`generate` runs the unconditional branch for ``cfg_scale`` under the rule ``guidance``."""
    if guidance not in GUIDANCE_RULES:
        raise ValueError(f"guidance must be one of {GUIDANCE_RULES}, got {guidance!r}")
    return cfg_scale > 1.0 if guidance == "above_one" else cfg_scale != 1.0


def _interval_over(t: int, cfg_interval: int | None) -> bool:
    """Whether token ``t`` and every later one are past the guidance interval (scale 1, see :func:`guidance_scale`)."""
    return cfg_interval is not None and cfg_interval >= 0 and t > cfg_interval + 1


def _validate(labels: torch.Tensor, num_classes: int, cfg_schedule: str, temperature: float, top_k: int,
              top_p: float) -> None:
    if labels.dtype != torch.int64 or labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty int64 [B] tensor, got {labels.dtype} {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) > num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}], got [{int(labels.min())}, {int(labels.max())}]")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {cfg_schedule!r}")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")


def _validate_runtime(precision: str, compile: bool, use_cache: bool) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be a bool, got {compile!r}")
    if compile and not use_cache:
        raise ValueError("compile=True compiles the cached decode step: it needs use_cache=True")


@torch.inference_mode()
def generate(model: GPT, labels: torch.Tensor, *, cfg_scale: float = 1.0, cfg_schedule: str = "constant",
             cfg_interval: int | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None, use_cache: bool = True, guidance: str = "not_one",
             precision: str = "fp32", compile: bool = False) -> torch.Tensor:
    """Sample token sequences int64 [B, L] for class ``labels`` int64 [B] (on the model's device).

    ``guidance`` picks when the unconditional branch runs (see :data:`GUIDANCE_RULES`); without it the conditional
    branch runs alone. ``use_cache=False`` recomputes the whole prefix at every step (slow; a reference for the
    cached path). ``precision`` "bf16" runs the model under bf16 autocast with a bf16 KV cache (logits stay
    float32); ``compile`` (opt-in) wraps the cached decode step in ``torch.compile``. ``generator`` must live on the
    model's device. The model runs in eval mode; its train/eval mode is restored afterwards.
    """
    cfg = model.config
    _validate(labels, cfg.num_classes, cfg_schedule, temperature, top_k, top_p)
    _validate_runtime(precision, compile, use_cache)
    guided = guidance_applies(cfg_scale, guidance)
    device = model.tok_embeddings.weight.device
    labels = labels.to(device)
    b, length = labels.shape[0], cfg.num_tokens
    cond = torch.cat([labels, torch.full_like(labels, cfg.num_classes)]) if guided else labels  # [2B] or [B]
    out = torch.zeros(b, length, dtype=torch.int64, device=device)
    bf16 = precision == "bf16"
    was_training = model.training
    model.eval()
    if use_cache:
        model.setup_cache(cond.shape[0], dtype=torch.bfloat16 if bf16 else None,
                          pack_weights=False if bf16 or compile else None)
    decode = torch.compile(model.step, dynamic=True) if compile else model.step
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            last = None
            rows = cond.shape[0]  # sequences fed to the model: [cond; uncond] while guidance can still apply
            for t in range(length):
                if guided and rows > b and _interval_over(t, cfg_interval):
                    rows = b  # past the cfg interval the scale stays 1: feed the conditional half alone
                if not use_cache:
                    feed = torch.cat([out[:, :t], out.new_zeros(b, 1)], dim=1)  # the dummy last token is not fed
                    logits = model(feed.repeat(2, 1) if guided else feed, cond)[:, -1]
                elif t == 0:
                    logits = model.step(None, cond, 0)[:, -1]  # [rows, K]: one position, the class token
                else:
                    logits = decode(last[:rows], None, t)[:, -1]  # [rows, K]
                if guided and logits.shape[0] > b:
                    c, u = logits.chunk(2)
                    scale = guidance_scale(t, length, cfg_scale, cfg_schedule, cfg_interval)
                    logits = u + scale * (c - u) if scale != 1.0 else c
                token = sample_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
                out[:, t] = token
                last = token[:, None].repeat(2, 1) if guided else token[:, None]  # [2B or B, 1]
    finally:
        if use_cache:
            model.clear_cache()
        model.train(was_training)
    return out
