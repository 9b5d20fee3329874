"""Autoregressive generation with a KV cache, free loop count and optional ACT early exit."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from megamythos.model import ModelKVCache, MythosLM


@dataclass
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1 disable those filters."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n_loops: int | None = None
    act_exit: bool = False
    absorb: bool = True
    eos_id: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 0")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")


@dataclass
class GenerationStats:
    loops_per_token: list[float] = field(default_factory=list)

    @property
    def mean_loops(self) -> float:
        return sum(self.loops_per_token) / max(len(self.loops_per_token), 1)


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B] with temperature, top-k and nucleus (top-p) filtering."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > cfg.top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_stream(model: MythosLM, prompt_ids: torch.Tensor, cfg: SamplingConfig,
                    generator: torch.Generator | None = None,
                    stats: GenerationStats | None = None) -> Iterator[torch.Tensor]:
    """Yield next-token ids [B] one step at a time for prompt_ids [B, S].

    The prompt is prefilled in one forward; each new token then runs one cached forward. With MLA the cache
    holds the kv latent and the shared RoPE key only, and ``absorb`` decodes in latent space.
    """
    was_training = model.training
    model.eval()
    try:
        n_loops = cfg.n_loops or model.config.mean_loops
        cache = ModelKVCache(model.config, n_loops)
        out = model(prompt_ids, cache=cache, absorb=cfg.absorb, act_exit=cfg.act_exit)
        for _ in range(cfg.max_new_tokens):
            if stats is not None:
                stats.loops_per_token.append(float(out.stats["n_loops"]))
            token = sample_next(out.logits[:, -1], cfg, generator)
            yield token
            if cfg.eos_id is not None and bool((token == cfg.eos_id).all()):
                return
            out = model(token[:, None], cache=cache, absorb=cfg.absorb, act_exit=cfg.act_exit)
    finally:
        model.train(was_training)


def generate(model: MythosLM, prompt_ids: torch.Tensor, cfg: SamplingConfig,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, GenerationStats]:
    """prompt_ids [B, S] -> (prompt followed by the generated ids [B, S + n], stats)."""
    stats = GenerationStats()
    new = list(generate_stream(model, prompt_ids, cfg, generator, stats))
    if not new:
        return prompt_ids, stats
    return torch.cat((prompt_ids, torch.stack(new, dim=1)), dim=1), stats
