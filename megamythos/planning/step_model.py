"""Step-time model of a training layout: compute at a stated MFU, the bytes of every collective on every link
class, and the predicted step time, tokens/s and MFU.

``python -m megamythos.planning.plan --preset 1t --gpus 1024 --ep 256 --zero 3 --plan`` prints it (with the
memory plan); :func:`step_plan` returns it.

Collective bytes follow the trainer's accounting (:mod:`megamythos.training.comm_stats`, tested against it on
2 CPU ranks): per rank and per optimizer step, the size of the full tensor a collective works on (all-gather:
gathered output; reduce-scatter: reduced input; all-reduce: the tensor; all-to-all: what the rank sends). What
each rank issues, with W = weight bytes, A = activation bytes per element, t = micro_batch x seq tokens, m
micro-batches per step, T loops (k of them under gradient, r = 1 recompute forward per checkpointed iteration,
2 with two-level segments):

- ZeRO-3 all-gather (groups of size > 1; DeepSpeed skips size-1 gathers): the recurrent core once per step
  when it is replicated (``replicate_core``, :mod:`megamythos.parallel.zero`), else (1 + r) T + k times per
  micro-batch; every other parameter once in forward and once in backward per micro-batch (a change of T
  invalidates DeepSpeed's trace, so parameters are fetched per use; a tied embedding is used twice). ZeRO-1/2:
  the updated parameters once per step. With leaf blocks (``leaf_blocks``, the CPU template's layout) the
  module sequence DeepSpeed traces no longer depends on T, so its trace stays valid and every parameter is
  gathered once per step and kept until the optimizer step, as long as the local model fits DeepSpeed's live
  and reuse-distance limits (``stage3_max_live_parameters``, ``stage3_max_reuse_distance``: 10^9 elements by
  default, the CPU case; measured at one micro-batch per step).
- reduce-scatter (ZeRO-3) / all-reduce (ZeRO-0/1/2) of the gradients: the local (TP/EP-sharded) parameters,
  per micro-batch under ZeRO-2/3, once per step under ZeRO-0/1; 4 bytes per element where bf16 gradients are
  summed in fp32 (:func:`megamythos.planning.layout.reduces_in_fp32`).
- TP all-reduce of activations [t, width] (AutoTP): forward of every row-parallel layer (``wo``, dense
  ``w_down``), backward of every column-parallel layer's input (``wq_b`` or ``wq``, ``wkv_b``, dense ``w_gate``
  and ``w_up``), MLA's k_pe gradient (:mod:`megamythos.parallel.tensor_parallel`); the recurrent attention
  once per forward, recompute and backward of each iteration.
- EP all-to-all (AutoEP): dispatch and combine of t x top_k rows of width dim per MoE call, forward, recompute
  and backward, plus the per-expert token counts [E] int32 per forward.

Time on the wire: a ring all-gather / reduce-scatter of B bytes over n ranks moves B (n - 1) / n per rank, an
all-reduce twice that, an all-to-all B (n - 1) / n; a group inside one node runs at the NVLink bandwidth, a
group spanning nodes at the InfiniBand bandwidth per GPU (ZeRO++ hpZ keeps a secondary weight copy inside the
node, so backward gathers use NVLink; qwZ halves gathered bytes, qgZ quarters reduced gradient bytes).
Exposed time: TP and EP collectives (they sit between dependent matmuls) and weight all-gathers (fetched on
demand: no prefetch after a change of T; the replicated core's after the optimizer step); gradient reductions
overlap with backward compute (``overlap_comm``).
Step time = compute + exposed + max(0, overlapped - compute).

Compute per GPU: the executed FLOPs (model FLOPs plus recompute) over the world size, plus what AutoTP leaves
replicated run once more on every other rank of a TP group: its patterns (:mod:`megamythos.parallel.tensor_parallel`)
shard attention and the dense blocks' SwiGLU only, so the recurrent block's MoE (router, routed and shared
experts), its LoRA and the LM head run on every TP rank for the group's tokens (:func:`tp_replicated_flops_per_token`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from megamythos.model.config import ModelConfig
from megamythos.model.params import (
    attention_fwd_flops_per_token,
    count,
    dense_block_matmul_params,
    expert_params,
    parts,
)
from megamythos.planning.layout import ParallelLayout, reduces_in_fp32
from megamythos.planning.memory import GIB, core_dense_local_params, dense_local_params

KINDS = ("all-gather", "reduce-scatter", "all-to-all", "all-reduce")
# Dense (no sparsity) peak TFLOP/s of an H100 SXM per training precision, from NVIDIA's H100 datasheet: BF16 Tensor
# Core 989; FP32 67, as the trainer's fp32 matmuls run it (torch's default float32 matmul precision "highest" keeps
# TF32's 494.5 off, and the trainer does not turn it on)
PEAK_TFLOPS = {"bf16": 989.0, "fp32": 67.0}


@dataclass(frozen=True)
class Cluster:
    """Per-GPU hardware figures. Bandwidths in GB/s per GPU and direction (400 Gb/s InfiniBand = 50 GB/s)."""

    gpus_per_node: int = 8
    nvlink_gbs: float = 450.0
    ib_gbs: float = 50.0
    peak_tflops: float = PEAK_TFLOPS["bf16"]
    mfu: float = 0.4  # achieved fraction of peak in the matmuls (compute time = FLOPs / (peak x mfu))


@dataclass(frozen=True)
class StepSettings:
    """What a step moves besides the layout: tokens per sample and bytes per weight and activation element."""

    seq_len: int = 4096
    weight_bytes: int = 2  # bf16 weights and gradients (4: fp32); reduced in fp32 where :func:`reduces_in_fp32`
    act_bytes: int = 2


@dataclass
class Collective:
    """One kind of collective on one group: bytes per step (trainer's convention), group size, link, seconds."""

    kind: str
    group: str
    bytes_per_step: float
    group_size: int
    link: str
    seconds: float
    exposed: bool


@dataclass
class StepPlan:
    layout: dict[str, Any]
    cluster: dict[str, Any]
    n_loops: int
    tokens_per_step: int
    compute_seconds: float
    collectives: list[Collective] = field(default_factory=list)
    step_seconds: float = 0.0
    tokens_per_second: float = 0.0
    mfu: float = 0.0

    def bytes_by_kind(self) -> dict[str, float]:
        """Bytes per step of each collective kind, summed over groups (what the trainer logs as comm/...)."""
        return {kind: sum(c.bytes_per_step for c in self.collectives if c.kind == kind) for kind in KINDS}


# ----------------------------------------------------------------------------------------- parameter shards
def local_params(c: ModelConfig, layout: ParallelLayout) -> dict[str, float]:
    """Parameters one rank holds before ZeRO, by ZeRO group: "core-dense", "core-experts" (recurrent core)
    and "rest" (embeddings, prelude, coda, final norm)."""
    core_dense = core_dense_local_params(c, layout.tp)
    return {"core-dense": core_dense, "core-experts": parts(c).routed_experts / layout.ep,
            "rest": dense_local_params(c, layout.tp) - core_dense}


# ----------------------------------------------------------------------------------------- collective bytes
def _iterations(c: ModelConfig, n_loops: int) -> tuple[int, int]:
    """(iterations under gradient k, recompute forwards per checkpointed iteration r)."""
    k = min(c.backprop_loops or n_loops, n_loops)
    if not c.checkpoint_loops:
        return k, 0
    return k, 2 if c.loop_checkpoint_segment != 1 and k > 1 else 1


def zero_bytes(c: ModelConfig, layout: ParallelLayout, settings: StepSettings,
               n_loops: int) -> list[tuple[str, str, float, int]]:
    """(kind, group, bytes per step, group size) of the ZeRO weight gathers and gradient reductions."""
    shards = local_params(c, layout)
    w, m = settings.weight_bytes, layout.grad_accum
    grad_w = 4 if reduces_in_fp32(layout, bf16=w == 2) else w  # bytes per element of a gradient reduction
    size = {"core-dense": layout.dp, "rest": layout.dp, "core-experts": layout.edp}
    out: list[tuple[str, str, float, int]] = []
    for group, n in shards.items():
        g = "expert-dp" if group == "core-experts" else "dp"
        if layout.zero >= 3:
            if layout.leaf_blocks:
                gathers = n
            elif group == "rest":
                tied = c.vocab_size * c.dim if c.tie_embeddings else 0  # one tensor, two modules
                gathers = 2 * m * (n + tied)
            elif layout.replicate_core:
                gathers = n
            else:
                k, r = _iterations(c, n_loops)
                gathers = m * ((1 + r) * n_loops + k) * n
            if size[group] > 1:
                out.append(("all-gather", f"{g} ({group})", gathers * w, size[group]))
            out.append(("reduce-scatter", f"{g} ({group})", m * n * grad_w, size[group]))
        else:
            if layout.zero >= 1 and size[group] > 1:
                out.append(("all-gather", f"{g} ({group})", n * w, size[group]))
            out.append(("all-reduce", f"{g} ({group})", (m if layout.zero == 2 else 1) * n * grad_w, size[group]))
    return out


def tp_allreduce_elements_per_token(c: ModelConfig, n_loops: int) -> float:
    """Activation elements all-reduced over the TP group per token and micro-batch (see the module docstring)."""
    k, r = _iterations(c, n_loops)
    if c.attn_type == "mla":
        col_inputs = (c.q_lora_rank or c.dim) + c.kv_lora_rank + c.qk_rope_head_dim  # + k_pe gradient
    else:
        col_inputs = 3 * c.dim  # wq, wk, wv
    dense = (c.prelude_layers + c.coda_layers) * (2 * c.dim + col_inputs + 2 * c.dim)
    return dense + n_loops * c.dim + k * (r * c.dim + col_inputs)


def tp_replicated_flops_per_token(c: ModelConfig, n_loops: int) -> float:
    """Executed training FLOPs per token (forward, backward and recompute) of the matmuls AutoTP leaves replicated:
    the LM head, and per loop the router, the k routed experts, the shared experts and the LoRA, each loop
    weighted by its ``loop_capacity`` share (1 forward without gradients; 3 + recompute forwards with them)."""
    k, r = _iterations(c, n_loops)
    p = parts(c)
    per_loop = 2 * (p.router + c.num_experts_per_tok * expert_params(c) + p.shared_experts + 2 * c.dim * c.lora_rank)
    capacity = (c.loop_capacity + c.loop_capacity[-1:] * n_loops) if c.loop_capacity else (1.0,) * n_loops
    weights = [1] * (n_loops - k) + [3 + r] * k
    return 3 * 2 * c.vocab_size * c.dim + per_loop * sum(w * share for w, share in zip(weights, capacity))


def ep_alltoall_bytes(c: ModelConfig, layout: ParallelLayout, settings: StepSettings, n_loops: int) -> float:
    """Bytes one rank sends per step in AutoEP's all-to-alls (balanced routing)."""
    k, r = _iterations(c, n_loops)
    tokens = layout.micro_batch_size * settings.seq_len
    rows = tokens * c.num_experts_per_tok * c.dim * settings.act_bytes
    forwards = n_loops + k * r
    per_micro = 2 * rows * (forwards + k) + forwards * c.n_experts * 4
    return layout.grad_accum * per_micro


# ----------------------------------------------------------------------------------------- time
def _link(group_size: int, contiguous: int, cluster: Cluster) -> tuple[str, float]:
    """Link class and bandwidth (B/s) of a group of ``group_size`` ranks spaced ``contiguous`` apart."""
    if group_size * contiguous <= cluster.gpus_per_node:
        return "nvlink", cluster.nvlink_gbs * 1e9
    return "infiniband", cluster.ib_gbs * 1e9


def _wire_seconds(kind: str, nbytes: float, n: int, bandwidth: float) -> float:
    if n <= 1:
        return 0.0
    factor = 2.0 if kind == "all-reduce" else 1.0
    return factor * nbytes * (n - 1) / n / bandwidth


def step_plan(c: ModelConfig, layout: ParallelLayout, settings: StepSettings = StepSettings(),
              cluster: Cluster = Cluster(), n_loops: int | None = None) -> StepPlan:
    """Predicted compute, collectives and step time of one optimizer step at loop count ``n_loops``
    (default: the config's mean)."""
    loops = n_loops or c.mean_loops
    tokens_micro = layout.micro_batch_size * settings.seq_len
    tokens_step = tokens_micro * layout.grad_accum * layout.dp
    report = count(c, settings.seq_len, loops)
    model_flops = report.train_flops_per_token * tokens_step
    _, recomputes = _iterations(c, loops)  # forwards of the loop repeated by activation checkpointing
    executed = model_flops + recomputes * report.recompute_flops_per_token * tokens_step
    if c.checkpoint_dense_blocks:  # each prelude/coda block's forward once more in backward
        executed += ((c.prelude_layers + c.coda_layers) * tokens_step
                     * (2 * dense_block_matmul_params(c) + attention_fwd_flops_per_token(c, settings.seq_len)))
    executed += (layout.tp - 1) * tp_replicated_flops_per_token(c, loops) * tokens_step  # once per TP rank
    compute = executed / layout.world_size / (cluster.peak_tflops * 1e12 * cluster.mfu)
    described = {**asdict(layout), "dp": layout.dp, "grad_accum": layout.grad_accum, **asdict(settings)}
    plan = StepPlan(layout=described, cluster=asdict(cluster), n_loops=loops, tokens_per_step=tokens_step,
                    compute_seconds=compute)

    for kind, group, nbytes, n in zero_bytes(c, layout, settings, loops):
        # dp groups: one rank per TP group (ranks tp apart); expert-dp groups under AutoEP: ranks ep apart
        link, bw = _link(n, layout.ep if group.startswith("expert") and layout.ep > 1 else layout.tp, cluster)
        wire = nbytes * (0.5 if kind == "all-gather" and layout.qwz else 1.0)
        wire *= 0.25 if kind == "reduce-scatter" and layout.qgz else 1.0
        seconds = _wire_seconds(kind, wire, n, bw)
        if kind == "all-gather" and layout.hpz > 1 and layout.zero >= 3:  # backward half from the node's copy
            seconds = 0.5 * seconds + 0.5 * _wire_seconds(kind, wire, min(n, layout.hpz), cluster.nvlink_gbs * 1e9)
        plan.collectives.append(Collective(kind, group, nbytes, n, link, seconds, exposed=kind == "all-gather"))
    if layout.tp > 1:
        nbytes = layout.grad_accum * tokens_micro * tp_allreduce_elements_per_token(c, loops) * settings.act_bytes
        link, bw = _link(layout.tp, 1, cluster)
        plan.collectives.append(Collective("all-reduce", "tp (activations)", nbytes, layout.tp, link,
                                           _wire_seconds("all-reduce", nbytes, layout.tp, bw), exposed=True))
    if layout.ep > 1:
        nbytes = ep_alltoall_bytes(c, layout, settings, loops)
        local = min(layout.ep, cluster.gpus_per_node) / layout.ep  # share of peers inside the node
        seconds = max(nbytes * (local - 1 / layout.ep) / (cluster.nvlink_gbs * 1e9),
                      nbytes * (1 - local) / (cluster.ib_gbs * 1e9))
        link = "nvlink" if local == 1 else "nvlink+infiniband"
        plan.collectives.append(Collective("all-to-all", "ep (tokens)", nbytes, layout.ep, link, seconds,
                                           exposed=True))
    exposed = sum(x.seconds for x in plan.collectives if x.exposed)
    overlapped = sum(x.seconds for x in plan.collectives if not x.exposed)
    plan.step_seconds = compute + exposed + max(0.0, overlapped - compute)
    plan.tokens_per_second = tokens_step / plan.step_seconds
    plan.mfu = model_flops / plan.step_seconds / layout.world_size / (cluster.peak_tflops * 1e12)
    return plan


def format_plan(plan: StepPlan) -> str:
    """Human-readable lines: compute, every collective with its link and time, step time, tokens/s, MFU."""
    cl, lay = plan.cluster, plan.layout
    micro = max(1, lay["grad_accum"])
    lines = [f"  step model at T = {plan.n_loops} loops, {plan.tokens_per_step} tokens/step "
             f"({lay['grad_accum']} micro-batches of {lay['micro_batch_size']} x {lay['seq_len']} per rank), "
             f"{cl['peak_tflops']:g} TFLOP/s peak at MFU {cl['mfu']:g}, NVLink {cl['nvlink_gbs']:g} GB/s, "
             f"InfiniBand {cl['ib_gbs']:g} GB/s per GPU",
             f"    compute            {plan.compute_seconds:9.3f} s/step  {plan.compute_seconds / micro:9.4f} s/micro"]
    for x in plan.collectives:
        lines.append(f"    {x.kind:14s} {x.group:24s} {x.bytes_per_step / GIB:10.3f} GiB/step "
                     f"{x.bytes_per_step / micro / GIB:9.3f} GiB/micro  n={x.group_size:<5d} {x.link:18s} "
                     f"{x.seconds:8.3f} s {'exposed' if x.exposed else 'overlapped'}")
    lines.append(f"    step time          {plan.step_seconds:9.3f} s   tokens/s {plan.tokens_per_second:,.0f}   "
                 f"MFU {plan.mfu:.3f}")
    return "\n".join(lines)
