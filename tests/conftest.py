"""Shared fixtures: small model configs that run in milliseconds on CPU."""
from __future__ import annotations

import pytest
import torch

from megamythos.config import ModelConfig


def small_config(**overrides: object) -> ModelConfig:
    """A few-hundred-K-parameter config exercising every code path (MLA, MoE, ACT, LoRA)."""
    base = dict(vocab_size=97, dim=64, max_seq_len=64, n_heads=4, n_kv_heads=2, q_lora_rank=32, kv_lora_rank=16,
                qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, prelude_layers=1, coda_layers=1,
                mean_loops=3, n_experts=8, n_shared_experts=1, num_experts_per_tok=2, expert_dim=32, lora_rank=4)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
