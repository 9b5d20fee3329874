"""Per-GPU memory plan of a ZeRO + TP + EP layout: weights, gradients, optimizer states, the largest gathered
module, ZeRO's gradient reduce buckets and activations, from the analytic counts of
:mod:`megamythos.model.params`; and what one rank holds while the trainer starts, before ZeRO partitions anything
(:func:`startup_memory`)."""
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
from megamythos.planning.layout import LayoutError, ZeroBuffers, accumulates_in_fp32


@dataclass
class MemoryPlan:
    """Per-GPU memory estimate (GiB) of a ZeRO + TP + EP layout with bf16 (or fp32) weights and fp32 Adam states."""

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
    reduce_bucket_gib: float  # the gradient reduce bucket(s) ZeRO-2/3 keep (:func:`reduce_bucket_bytes`)
    reduce_copy_gib: float  # the copy of a bucket one reduction makes
    activations_gib: float
    total_gib: float
    startup_device_gib: float  # the rank's share of the model on the GPU whole, before ZeRO partitions it


GIB = 1024 ** 3


class StartupMemoryError(LayoutError):
    """The trainer cannot build the model on this host or device."""


@dataclass(frozen=True)
class StartupMemory:
    """What one rank holds while the trainer starts, in GiB. ``MythosLM`` is built whole, in fp32, in host memory
    on every rank (``host_gib``); inside ``deepspeed.initialize`` AutoEP keeps the rank's ``E / ep`` experts and
    AutoTP its shards, and DeepSpeed casts the rest to the weights' dtype and moves it to the device whole
    (``device_gib``) before ZeRO-3 partitions it. The trainer does not build a model sharded
    (``deepspeed.zero.Init``, expert-parallel construction), so these bound the presets a host can start."""

    host_gib: float
    device_gib: float


def startup_memory(c: ModelConfig, tp: int = 1, ep: int = 1, dtype: str = "bf16") -> StartupMemory:
    """:class:`StartupMemory` of one rank of a ``tp`` x ``ep`` layout with weights in ``dtype``; the weights outside
    the routed experts as AutoTP leaves them on a rank (:func:`dense_local_params`)."""
    report = count(c)
    return StartupMemory(host_gib=report.total * BYTES["fp32"] / GIB,
                         device_gib=(dense_local_params(c, tp) + report.routed_experts / ep) * BYTES[dtype] / GIB)


def check_startup_memory(c: ModelConfig, tp: int, ep: int, ranks_on_host: int, host_bytes: int,
                         device_bytes: int | None, dtype: str = "bf16", host: str = "this host") -> None:
    """Refuse (:class:`StartupMemoryError`) a start the host or the device cannot hold: ``ranks_on_host`` ranks
    each building the whole model in ``host_bytes`` of host memory (the host named ``host`` in the message), or
    one rank's share moved whole to a device of ``device_bytes`` (None: no device other than the host)."""
    need = startup_memory(c, tp, ep, dtype)
    total = f"{count(c).total / 1e9:.3g}B"
    sharded = ("the trainer does not build a model sharded yet (deepspeed.zero.Init, expert-parallel "
               "construction)")
    if ranks_on_host * need.host_gib * GIB > host_bytes:
        raise StartupMemoryError(
            f"the model ({total} parameters) is built whole in fp32 on every rank before DeepSpeed shards it: "
            f"{need.host_gib:.1f} GiB per rank, {ranks_on_host * need.host_gib:.1f} GiB for the {ranks_on_host} "
            f"rank(s) of {host}, which has {host_bytes / GIB:.1f} GiB; {sharded}: train a smaller model or run "
            "fewer ranks per host")
    if device_bytes is not None and need.device_gib * GIB > device_bytes:
        raise StartupMemoryError(
            f"the model ({total} parameters) goes to the GPU whole (this rank's experts and tensor-parallel "
            f"shards) before ZeRO-3 partitions it: {need.device_gib:.1f} GiB in {dtype}, on a GPU of "
            f"{device_bytes / GIB:.1f} GiB; {sharded}: raise --ep or --tp, or train a smaller model")


def checkpointed_loop_states(c: ModelConfig, loops: int) -> int:
    """fp32 [tokens, dim] recurrent states a checkpointed training step holds at its peak for ``loops``
    iterations: one per iteration under gradient (the last ``backprop_loops``), or with two-level segments of
    s iterations one state per segment boundary and one segment's states during backward."""
    k = min(c.backprop_loops or loops, loops)
    segment = c.loop_checkpoint_segment or math.ceil(math.sqrt(k))
    if segment == 1:
        return k
    return math.ceil(k / segment) + segment


def attention_activation_bytes(c: ModelConfig, tp: int, w_bytes: int) -> float:
    """Bytes per token one attention layer keeps for its backward with a flash/memory-efficient kernel (no
    S x S term): its input; under MLA the q and kv latents (``w_bytes``) and their fp32 RMSNorms' inputs and
    outputs; queries, keys, values and output (2 (qk + v) per head, heads split by ``tp``)."""
    if c.attn_type == "gqa":
        hd = c.resolved_head_dim
        return w_bytes * (c.dim + 2 * (c.n_heads + c.n_kv_heads) * hd / tp)
    latents = (c.q_lora_rank or 0) + c.kv_lora_rank
    return w_bytes * (c.dim + latents + 2 * c.n_heads * (c.qk_head_dim + c.v_head_dim) / tp) + 2 * 4 * latents


def block_activation_bytes(c: ModelConfig, tp: int, w_bytes: int) -> float:
    """Bytes per token one recurrent block keeps for its backward: two fp32 RMSNorms (input and output,
    16 dim), the attention (:func:`attention_activation_bytes`), the router's input and fp32 logits, and per
    routed assignment (top-k of them) the expert's input, gate and up outputs, activation, product and output
    before and after weighting (3 dim + 4 F), and the shared experts' 4 S F. AutoTP leaves the MoE whole, so
    every tensor-parallel rank keeps all of it."""
    moe = (w_bytes * c.dim + 4 * c.n_experts + c.num_experts_per_tok * w_bytes * (3 * c.dim + 4 * c.expert_dim)
           + 4 * w_bytes * c.n_shared_experts * c.expert_dim)
    return 16 * c.dim + attention_activation_bytes(c, tp, w_bytes) + moe


def iteration_activation_bytes(c: ModelConfig, tp: int, w_bytes: int) -> float:
    """Bytes per token one recurrent iteration keeps for its backward: its block
    (:func:`block_activation_bytes`), the fp32 input RMSNorm's input and output and the injection's fp32 state
    and input (16 dim), and the LoopLoRA's input."""
    return block_activation_bytes(c, tp, w_bytes) + 16 * c.dim + w_bytes * c.dim


def dense_block_activation_bytes(c: ModelConfig, tp: int, w_bytes: int) -> float:
    """Bytes per token one prelude/coda block keeps for its backward: two fp32 RMSNorms, the attention, and the
    dense SwiGLU's input, gate and up outputs, activation and product (4 ffn_dim, split by ``tp``)."""
    return (16 * c.dim + attention_activation_bytes(c, tp, w_bytes) + w_bytes * c.dim
            + 4 * w_bytes * c.resolved_ffn_dim / tp)


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


def dense_local_params(c: ModelConfig, tp: int) -> float:
    """Parameters outside the routed experts that one rank holds under tensor parallelism ``tp``: AutoTP splits
    every attention (prelude, coda and the recurrent block's) and the prelude/coda SwiGLUs; the embeddings, LM
    head, norms and the recurrent core's router, shared experts, LoRA and injection stay whole on every rank."""
    p = parts(c)
    split = (c.prelude_layers + c.coda_layers + 1) * tp_sharded_attention(c) + p.dense_ffn
    return p.total - p.routed_experts - split * (1 - 1 / tp)


def reduce_bucket_bytes(zero: int, buffers: ZeroBuffers, w_bytes: int, comm_bytes: int) -> tuple[int, int]:
    """(kept, copy): bytes of the gradient reduce bucket(s) ZeRO keeps on a rank, and of the copy of one bucket a
    reduction makes (DeepSpeed 0.19.8), for buckets of ``reduce_bucket_size`` elements, weights of ``w_bytes`` and
    reductions in ``comm_bytes`` (4 where the trainer reduces in fp32). ZeRO-3 keeps one bucket in the reduction's
    dtype with ``contiguous_gradients`` (none without: the gradients are then cast to it in place of the copy into
    it) and reduce-scatters it through a flat copy (``reduce_scatter_coalesced``). ZeRO-2 keeps its bucket in the
    weights' dtype, two with ``overlap_comm``, flattens the one it reduces and casts that to the reduction's dtype
    where they differ. ZeRO-0/1: none counted (bf16 ZeRO-1 is DeepSpeed's BF16_Optimizer, another code path)."""
    size = buffers.reduce_bucket_size
    if zero == 3:
        cast = 0 if buffers.contiguous_gradients or comm_bytes == w_bytes else comm_bytes
        return (size * comm_bytes if buffers.contiguous_gradients else 0), size * (comm_bytes + cast)
    if zero == 2:
        kept = size * w_bytes * (2 if buffers.overlaps(zero) else 1) if buffers.contiguous_gradients else 0
        return kept, size * (w_bytes + (comm_bytes if comm_bytes != w_bytes else 0))
    return 0, 0


def optimizer_bytes(zero: int, dtype: str) -> int:
    """Bytes per parameter of AdamW's states as DeepSpeed 0.19 keeps them for weights in ``dtype``: the fp32 moments
    (8) and an fp32 master copy of the weights (4). fp32 weights need no copy under ZeRO-0 (DeepSpeed's plain
    optimizer updates them) nor ZeRO-3 (which takes its fp32 partitions as the master); ZeRO-1/2 clone their
    partitions whatever the dtype."""
    return 8 if dtype == "fp32" and zero in (0, 3) else 12


def memory_plan(c: ModelConfig, gpus: int, tp: int = 1, ep: int = 1, zero: int = 3, micro_batch: int = 1,
                seq_len: int | None = None, dtype: str = "bf16", replicated_core: bool = False,
                grad_accum: int = 1, buffers: ZeroBuffers | None = None, fp32_reduce: bool = False) -> MemoryPlan:
    """Estimate per-GPU memory. Attention and the prelude/coda SwiGLUs are split by ``tp``, the rest outside the
    routed experts is whole on every TP rank (:func:`dense_local_params`, as are the fp32 logits of the
    unsplit LM head); routed experts are split by ``ep``;
    ZeRO stage 1/2/3 shards optimizer states / + gradients / + weights over the data-parallel group (experts
    over the expert-data-parallel group gpus / ep); the recurrent core's gradient is whole while the loops'
    backward runs (its weights serve every loop). Activations at the config's ``max_loops``: with
    ``checkpoint_loops`` the :func:`checkpointed_loop_states` fp32 states (+ 2) and one iteration recomputed
    (:func:`iteration_activation_bytes`), without it every iteration under gradient; the prelude and coda blocks
    (:func:`dense_block_activation_bytes`; with ``checkpoint_dense_blocks`` their inputs and one block) and fp32
    logits. ``replicated_core`` (ZeRO-3 only): the recurrent core's weights stay gathered
    (:mod:`megamythos.parallel.zero`); its optimizer states stay sharded. The gradient partitions of ZeRO-2/3 hold
    fp32 sums where ``grad_accum`` micro-batches are summed in fp32 (:func:`accumulates_in_fp32`). ``buffers``: the
    ds_config's sizes (:class:`ZeroBuffers`; None: DeepSpeed's defaults): the reduce bucket(s) and one bucket's copy
    (:func:`reduce_bucket_bytes`; ``fp32_reduce``: the trainer reduces in fp32, :func:`reduces_in_fp32`), and under
    ZeRO-3 the parameters prefetched while the largest module is gathered, up to ``max_live_parameters`` in all."""
    if gpus % tp or gpus % ep:
        raise ValueError(f"gpus={gpus} must be divisible by tp={tp} and ep={ep}")
    seq = seq_len or c.training_seq_len
    report = count(c, seq)
    dp, edp = gpus // tp, gpus // ep
    dense_local, expert_local = dense_local_params(c, tp), report.routed_experts / ep
    shard_dense = dp if zero >= 3 else 1
    shard_expert = edp if zero >= 3 else 1
    weight_params = dense_local / shard_dense + expert_local / shard_expert
    if zero >= 3 and replicated_core:  # the core's local share held whole (shared experts are not TP-split)
        core_dense = core_dense_local_params(c, tp)
        weight_params += core_dense * (1 - 1 / dp) + expert_local * (1 - 1 / edp)
    w_bytes = BYTES[dtype]
    grads_params = dense_local / (dp if zero >= 2 else 1) + expert_local / (edp if zero >= 2 else 1)
    grads_bytes = grads_params * (4 if accumulates_in_fp32(zero, grad_accum, dtype == "bf16") else w_bytes)
    if zero >= 2:  # the core's weights serve every loop: autograd sums their gradient whole, on this rank, from
        # the last loop's backward to the first's, before ZeRO's hook reduce-scatters it once
        grads_bytes += (core_dense_local_params(c, tp) * (1 - 1 / dp) + expert_local * (1 - 1 / edp)) * w_bytes
    opt_params = dense_local / (dp if zero >= 1 else 1) + expert_local / (edp if zero >= 1 else 1)
    # ZeRO-3 gathers one module at a time: the recurrent block's local experts dominate
    largest_module = (c.n_experts // ep) * expert_params(c) + attention_params(c) / tp if zero >= 3 else 0
    if zero >= 3 and replicated_core:  # then the largest gathered module lies outside the core
        largest_module = max(embedding_params(c) / (1 if c.tie_embeddings else 2), dense_block_params(c) / tp)
    buffers = buffers or ZeroBuffers()
    if zero >= 3:  # the prefetcher gathers ahead while fewer than max_live_parameters are gathered
        largest_module = max(largest_module, min(buffers.max_live_parameters,
                                                 largest_module + buffers.prefetch_bucket_size))
    bucket, bucket_copy = reduce_bucket_bytes(zero, buffers, BYTES[dtype], 4 if fp32_reduce else BYTES[dtype])
    tokens = micro_batch * seq
    loops = c.resolved_max_loops
    iteration = iteration_activation_bytes(c, tp, w_bytes)
    if c.checkpoint_loops:  # the checkpointed fp32 states, and one iteration recomputed during backward
        loop_bytes = c.dim * 4 * (checkpointed_loop_states(c, loops) + 2) + iteration
    else:  # every iteration under gradient keeps its activations
        loop_bytes = min(c.backprop_loops or loops, loops) * iteration + c.dim * 4 * 2
    n_dense = c.prelude_layers + c.coda_layers
    if c.checkpoint_dense_blocks:  # each block's input, and one block recomputed during backward
        dense = n_dense * c.dim * w_bytes + (dense_block_activation_bytes(c, tp, w_bytes) if n_dense else 0)
    else:
        dense = n_dense * dense_block_activation_bytes(c, tp, w_bytes)
    acts = tokens * (loop_bytes + dense + c.vocab_size * 4)
    plan = dict(weights_gib=weight_params * w_bytes / GIB, grads_gib=grads_bytes / GIB,
                optimizer_gib=opt_params * optimizer_bytes(zero, dtype) / GIB,
                gathered_working_gib=largest_module * w_bytes / GIB,
                reduce_bucket_gib=bucket / GIB, reduce_copy_gib=bucket_copy / GIB, activations_gib=acts / GIB)
    return MemoryPlan(gpus=gpus, tp=tp, ep=ep, zero=zero, dp=dp, params_per_gpu=weight_params,
                      total_gib=sum(plan.values()), startup_device_gib=startup_memory(c, tp, ep, dtype).device_gib,
                      **plan)
