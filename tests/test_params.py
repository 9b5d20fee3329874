"""Analytic parameter counts, FLOPs and memory plan against the real model."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import small_config
from megamythos.config import PRESETS, get_preset
from megamythos.model import MythosLM
from megamythos.params import checkpointed_loop_states, count, main, memory_plan


def model_params(config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in MythosLM(config).parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_counts_equal_model_on_meta_device(name: str) -> None:
    config = get_preset(name)
    assert count(config).total == model_params(config)


@pytest.mark.parametrize("variant", [dict(attn_type="gqa"), dict(lora_rank=0, loop_embedding=True), dict(tie_embeddings=False),
                                     dict(q_lora_rank=0, n_shared_experts=0), dict(injection="concat"),
                                     dict(injection="additive")])
def test_variant_counts_equal_model(variant: dict) -> None:
    config = small_config(**variant)
    assert count(config).total == model_params(config)


def test_active_and_effective_counts() -> None:
    config = small_config()
    report = count(config, n_loops=4)
    expert = 3 * config.dim * config.expert_dim
    assert report.total - report.active_per_token == (config.n_experts - config.num_experts_per_tok) * expert
    rec_active = report.recurrent - (config.n_experts - config.num_experts_per_tok) * expert
    assert report.effective_per_token == report.active_per_token + 3 * rec_active
    assert count(config, n_loops=8).train_flops_per_token > report.train_flops_per_token


def test_cli_json_and_memory_plan(capsys) -> None:
    assert main(["--preset", "1t", "--json", "--gpus", "1024", "--tp", "8", "--ep", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == count(get_preset("1t")).total
    assert 0 < report["memory_plan"]["total_gib"] < 141
    more_ep = memory_plan(get_preset("1t"), 1024, tp=8, ep=128)
    assert more_ep.weights_gib <= memory_plan(get_preset("1t"), 1024, tp=8, ep=64).weights_gib
    with pytest.raises(ValueError, match="divisible"):
        memory_plan(get_preset("1t"), 100, tp=8)


def test_checkpointed_loop_states_follow_the_checkpointing_scheme() -> None:
    """Per-iteration: one state per loop under gradient; two-level: one state per segment boundary plus one
    segment; truncated BPTT caps both. The memory plan follows the config."""
    tiny = get_preset("tiny")
    assert checkpointed_loop_states(tiny, 32) == 32
    assert checkpointed_loop_states(tiny.replace(backprop_loops=8), 32) == 8
    assert checkpointed_loop_states(tiny.replace(loop_checkpoint_segment=0), 32) == 6 + 6
    assert checkpointed_loop_states(tiny.replace(loop_checkpoint_segment=0), 36) == 6 + 6
    assert checkpointed_loop_states(tiny.replace(loop_checkpoint_segment=4), 32) == 8 + 4
    big = get_preset("1t")
    assert (memory_plan(big.replace(loop_checkpoint_segment=0), 1024, tp=8, ep=128).activations_gib
            < memory_plan(big, 1024, tp=8, ep=128).activations_gib / 2)


def test_dense_baseline_matches_params_or_flops() -> None:
    from megamythos.baselines import DenseLM, dense_params, dense_train_flops_per_token, matching_dense_layers

    config = small_config(max_seq_len=32, n_experts=32, expert_dim=64)
    n_params = matching_dense_layers(config, "params", 32)
    n_flops = matching_dense_layers(config, "flops", 32)
    with torch.device("meta"):
        assert sum(p.numel() for p in DenseLM(config, n_params).parameters()) == dense_params(config, n_params)
    looped = count(config, seq_len=32)
    assert abs(dense_params(config, n_params) - looped.total) <= dense_params(config, 1) - dense_params(config, 0)
    assert dense_train_flops_per_token(config, n_flops, 32) <= looped.train_flops_per_token * 1.5
    assert n_params > n_flops  # the MoE holds many parameters a token never touches
