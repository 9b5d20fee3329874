"""Per-GPU memory plan of a ZeRO + TP + EP layout: weights, gradients, optimizer states, the largest gathered
module and activations, from the analytic counts of :mod:`megamythos.model.params`."""
from __future__ import annotations

import math
from dataclasses import dataclass

from megamythos.model.config import ModelConfig
from megamythos.model.params import (
    BYTES,
    attention_params,
    count,
    dense_block_params,
    embedding_params,
    expert_params,
    parts,
)


@dataclass
class MemoryPlan:
    """Per-GPU memory estimate (GiB) of a ZeRO + TP + EP layout with bf16 weights and fp32 Adam states."""

    gpus: int
    tp: int
    ep: int
    zero: int
    dp: int
    params_per_gpu: float
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    gathered_working_gib: float
    activations_gib: float
    total_gib: float


def checkpointed_loop_states(c: ModelConfig, loops: int) -> int:
    """fp32 [tokens, dim] recurrent states a checkpointed training step holds at its peak for ``loops``
    iterations: one per iteration under gradient (the last ``backprop_loops``), or with two-level segments of
    s iterations one state per segment boundary and one segment's states during backward."""
    k = min(c.backprop_loops or loops, loops)
    segment = c.loop_checkpoint_segment or math.ceil(math.sqrt(k))
    if segment == 1:
        return k
    return math.ceil(k / segment) + segment


def tp_sharded_attention(c: ModelConfig) -> int:
    """Attention weights AutoTP splits (megamythos.parallel.tensor_parallel patterns)."""
    if c.attn_type == "gqa":
        hd = c.resolved_head_dim
        return 2 * c.dim * c.n_heads * hd + 2 * c.dim * c.n_kv_heads * hd
    q = (c.q_lora_rank if c.q_lora_rank else c.dim) * c.n_heads * c.qk_head_dim
    return q + c.kv_lora_rank * c.n_heads * (c.qk_nope_head_dim + c.v_head_dim) + c.n_heads * c.v_head_dim * c.dim


def core_dense_local_params(c: ModelConfig, tp: int) -> float:
    """Parameters of the recurrent core outside the routed experts that one rank holds under tensor parallelism
    ``tp`` (AutoTP splits its attention; shared experts, router, norms and injection stay whole)."""
    p = parts(c)
    return p.recurrent - p.routed_experts - tp_sharded_attention(c) * (1 - 1 / tp)


def memory_plan(c: ModelConfig, gpus: int, tp: int = 1, ep: int = 1, zero: int = 3, micro_batch: int = 1,
                seq_len: int | None = None, dtype: str = "bf16", replicated_core: bool = False) -> MemoryPlan:
    """Estimate per-GPU memory. Dense and attention matrices are split by ``tp``; routed experts by ``ep``;
    ZeRO stage 1/2/3 shards optimizer states / + gradients / + weights over the data-parallel group (experts
    over the expert-data-parallel group gpus / ep). Activations assume loop checkpointing at the config's
    ``max_loops`` (:func:`checkpointed_loop_states` fp32 states, + 2) plus one block's full activations
    (Megatron's ~34 s b h bytes per layer) and logits. ``replicated_core`` (ZeRO-3 only): the recurrent core's
    weights stay gathered (:mod:`megamythos.parallel.zero`); its gradients and optimizer states stay sharded."""
    if gpus % tp or gpus % ep:
        raise ValueError(f"gpus={gpus} must be divisible by tp={tp} and ep={ep}")
    seq = seq_len or min(c.max_seq_len, 4096)
    report = count(c, seq)
    dp, edp = gpus // tp, gpus // ep
    expert_total = report.routed_experts
    dense_total = report.total - expert_total
    dense_local, expert_local = dense_total / tp, expert_total / ep
    shard_dense = dp if zero >= 3 else 1
    shard_expert = edp if zero >= 3 else 1
    weight_params = dense_local / shard_dense + expert_local / shard_expert
    if zero >= 3 and replicated_core:  # the core's local share held whole (shared experts are not TP-split)
        core_dense = core_dense_local_params(c, tp)
        weight_params += core_dense * (1 - 1 / dp) + expert_local * (1 - 1 / edp)
    w_bytes = BYTES[dtype]
    gib = 1024 ** 3
    grads_params = dense_local / (dp if zero >= 2 else 1) + expert_local / (edp if zero >= 2 else 1)
    opt_params = dense_local / (dp if zero >= 1 else 1) + expert_local / (edp if zero >= 1 else 1)
    # ZeRO-3 gathers one module at a time: the recurrent block's local experts dominate
    largest_module = (c.n_experts // ep) * expert_params(c) + attention_params(c) / tp if zero >= 3 else 0
    if zero >= 3 and replicated_core:  # then the largest gathered module lies outside the core
        largest_module = max(embedding_params(c) / (1 if c.tie_embeddings else 2), dense_block_params(c) / tp)
    tokens = micro_batch * seq
    loops = c.resolved_max_loops
    acts = (tokens * c.dim * 4 * (checkpointed_loop_states(c, loops) + 2) + 34 * tokens * c.dim * w_bytes / tp
            + tokens * c.vocab_size * 4 / tp)
    plan = dict(weights_gib=weight_params * w_bytes / gib, grads_gib=grads_params * w_bytes / gib,
                optimizer_gib=opt_params * 12 / gib, gathered_working_gib=largest_module * w_bytes / gib,
                activations_gib=acts / gib)
    return MemoryPlan(gpus=gpus, tp=tp, ep=ep, zero=zero, dp=dp, params_per_gpu=weight_params,
                      total_gib=sum(plan.values()), **plan)
