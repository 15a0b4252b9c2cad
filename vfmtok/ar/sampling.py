"""Autoregressive sampling for the class-conditional GPT: KV cache, classifier-free guidance, top-k / top-p.

Guidance batches ``[cond; uncond]`` (the null class is ``num_classes``) through one forward pass and combines the
logits as ``uncond + s * (cond - uncond)``. Then come temperature, top-k, top-p and ``torch.multinomial``.
"""

from __future__ import annotations

import torch

from vfmtok.ar.gpt import GPT

CFG_SCHEDULES = ("constant", "linear")


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


@torch.inference_mode()
def generate(model: GPT, labels: torch.Tensor, *, cfg_scale: float = 1.0, cfg_schedule: str = "constant",
             cfg_interval: int | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """Sample token sequences int64 [B, L] for class ``labels`` int64 [B] (on the model's device).

    ``cfg_scale == 1`` runs the conditional branch alone. ``use_cache=False`` recomputes the whole prefix at every
    step (slow; a reference for the cached path). ``generator`` must live on the model's device. The model runs
    in eval mode; its train/eval mode is restored afterwards.
    """
    cfg = model.config
    _validate(labels, cfg.num_classes, cfg_schedule, temperature, top_k, top_p)
    device = model.tok_embeddings.weight.device
    labels = labels.to(device)
    b, length = labels.shape[0], cfg.num_tokens
    guided = cfg_scale != 1.0
    cond = torch.cat([labels, torch.full_like(labels, cfg.num_classes)]) if guided else labels  # [2B] or [B]
    out = torch.zeros(b, length, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    if use_cache:
        model.setup_cache(cond.shape[0])
    try:
        last = None
        for t in range(length):
            if use_cache:
                logits = model.step(last, cond if t == 0 else None, t)[:, -1]  # [2B or B, K]
            else:
                feed = torch.cat([out[:, :t], out.new_zeros(b, 1)], dim=1)  # the dummy last token is not fed
                logits = model(feed.repeat(2, 1) if guided else feed, cond)[:, -1]
            if guided:
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
