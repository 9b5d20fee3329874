"""The parallel layout of one run (world size, TP, EP, ZeRO and its options, batch sizes): one dataclass that the
trainer builds from its flags and ds_config, and that the memory plan and step-time model read.

DeepSpeed folds AutoEP onto the data-parallel x tensor-parallel ranks: tp and ep each have to divide the world
size (tp2 x ep2 runs on 2 ranks), the data-parallel size is world / tp, experts are replicated over
world / ep ranks, and the global batch is micro x accumulation x dp. Everything is checked at construction,
before any process group or tensor exists, so a bad layout is a clear error instead of a hang in a collective.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megamythos.errors import UserError
from megamythos.model.config import ModelConfig


class LayoutError(UserError, ValueError):
    """The parallel layout cannot run this model on this many processes."""


@dataclass(frozen=True)
class ParallelLayout:
    """Sizes and ZeRO options of one run; ``dp``, ``edp`` and ``grad_accum`` are derived.

    ``global_batch_size`` None means one micro-batch per rank and step (micro x dp). ``replicate_core``: under
    ZeRO-3 the recurrent core's weights stay gathered; ``leaf_blocks``: under ZeRO-3 the core and the prelude/coda
    blocks are leaf modules instead, each fetched whole by one hook per forward and backward (both:
    :mod:`megamythos.parallel.zero`; what that gathers: :mod:`megamythos.planning.step_model`). ``hpz``, ``qwz``,
    ``qgz``: ZeRO++ hierarchical partition size, quantised weights, quantised gradients (ds_config options).
    """

    world_size: int
    tp: int = 1
    ep: int = 1
    zero: int = 3
    micro_batch_size: int = 1
    global_batch_size: int | None = None
    replicate_core: bool = True
    leaf_blocks: bool = False
    hpz: int = 1
    qwz: bool = False
    qgz: bool = False

    def __post_init__(self) -> None:
        for name in ("world_size", "tp", "ep", "micro_batch_size", "hpz"):
            if getattr(self, name) < 1:
                raise LayoutError(f"{name}={getattr(self, name)} must be >= 1")
        if self.zero not in (0, 1, 2, 3):
            raise LayoutError(f"ZeRO stage {self.zero} does not exist; choose 0, 1, 2 or 3")
        if self.world_size % self.tp:
            raise LayoutError(f"world size {self.world_size} is not divisible by tensor-parallel size tp={self.tp}")
        if self.world_size % min(self.hpz, self.world_size):
            raise LayoutError(f"world size {self.world_size} is not divisible by ZeRO++ zero_hpz_partition_size "
                              f"hpz={self.hpz} (DeepSpeed groups the ranks in blocks of min(hpz, world size))")
        if self.zero == 3 and self.ep > 1 and (self.hpz > 1 or self.qgz):
            option = (f"zero_hpz_partition_size={self.hpz}" if self.hpz > 1 else "zero_quantized_gradients")
            raise LayoutError(f"ZeRO++ {option} with expert parallelism (ep={self.ep}) under ZeRO-3: DeepSpeed's "
                              "AutoEP refuses hpZ and qgZ under ZeRO-3 (deepspeed 0.19); drop the option, or "
                              "use ep=1")
        if self.world_size % self.ep:
            raise LayoutError(f"world size {self.world_size} is not divisible by expert-parallel size ep={self.ep} "
                              "(AutoEP folds expert groups onto the data x tensor parallel ranks)")
        if self.global_batch_size is None:
            object.__setattr__(self, "global_batch_size", self.micro_batch_size * self.dp)
        if self.global_batch_size < 1 or self.global_batch_size % (self.micro_batch_size * self.dp):
            raise LayoutError(f"global batch {self.global_batch_size} is not divisible by micro batch "
                              f"{self.micro_batch_size} x data-parallel size {self.dp}")

    @property
    def dp(self) -> int:
        """Data-parallel size: ranks that see different samples."""
        return self.world_size // self.tp

    @property
    def edp(self) -> int:
        """Ranks holding the same experts (ZeRO partitions experts over them); without AutoEP, dp."""
        return self.world_size // self.ep if self.ep > 1 else self.dp

    @property
    def grad_accum(self) -> int:
        """Micro-batches per rank and optimizer step."""
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    def check_model(self, config: ModelConfig) -> None:
        """Raise :class:`LayoutError` if ``config`` cannot be split this way."""
        if config.n_experts % self.ep:
            raise LayoutError(f"n_experts={config.n_experts} is not divisible by expert-parallel size ep={self.ep}")
        if config.n_heads % self.tp:
            raise LayoutError(f"n_heads={config.n_heads} is not divisible by tensor-parallel size tp={self.tp}")
        if config.resolved_ffn_dim % self.tp:
            raise LayoutError(f"dense ffn_dim={config.resolved_ffn_dim} is not divisible by tp={self.tp}")
        if config.attn_type == "gqa" and config.n_kv_heads % self.tp:
            raise LayoutError(f"n_kv_heads={config.n_kv_heads} is not divisible by tensor-parallel size tp={self.tp}")


def accumulates_in_fp32(zero: int, grad_accum: int, bf16: bool) -> bool:
    """Whether DeepSpeed sums a step's micro-batch gradients in fp32 in this layout, as the trainer asks it to
    (``data_types.grad_accum_dtype``). In bf16 DeepSpeed 0.19 sums them in bf16 by default (the weights' dtype):
    at 16 micro-batches a step's gradient is then ~0.5% off their fp32 sum (relative L2), growing with their
    number. Under ZeRO-2/3 with more than one micro-batch the trainer asks for fp32, which DeepSpeed keeps in its
    gradient partitions (4 instead of 2 bytes per partitioned parameter); one micro-batch has nothing to sum. Not
    under ZeRO-0 (DeepSpeed refuses the mix) nor ZeRO-1 (it swaps in another optimizer, ``BF16_Optimizer``, with
    other checkpoint files): those sum in bf16, and the trainer says so at start."""
    return bf16 and zero >= 2 and grad_accum > 1


def reduces_in_fp32(layout: ParallelLayout, bf16: bool) -> bool:
    """Whether the trainer asks DeepSpeed to sum gradients across ranks in fp32 (``communication_data_type``), as
    Megatron and torchtitan do under bf16. DeepSpeed 0.19 reduces them in the weights' dtype by default: a ring
    over n ranks rounds each partial sum to bf16, n - 1 roundings (relative L2 of the mean against its exact value
    in a torch emulation: 0.36% at 8 ranks, 0.89% at 64, 2.2% at 512, against 0.17% for an fp32 sum rounded once).
    Costs twice the bytes of every gradient reduction, so it is asked for where it changes the result: over more
    than two ranks, or over two whose sum is kept in fp32 (:func:`accumulates_in_fp32`); two ranks' bf16 sum is
    rounded once either way. Not with ZeRO++'s quantised gradients (``qgz``), whose reduction is its own."""
    ranks = max(layout.dp, layout.edp)
    kept_in_fp32 = accumulates_in_fp32(layout.zero, layout.grad_accum, bf16)
    return bf16 and not layout.qgz and (ranks > 2 or (ranks == 2 and kept_in_fp32))


def bf16_enabled(template: Mapping[str, Any], flag: bool | None) -> bool:
    """Whether a run trains in bf16, as the trainer decides it: its ``--bf16``/``--no-bf16`` (``flag``; None where
    neither is given), else ds_config ``template``'s ``bf16.enabled`` (absent: fp32)."""
    return bool(flag if flag is not None else template.get("bf16", {}).get("enabled", False))


def check_compile(layout: ParallelLayout, bf16: bool, compiled: bool, error: type[UserError] = LayoutError) -> None:
    """Refuse (``error``), before start-up, a ``--compile`` (``compiled``) run that Dynamo cannot trace (AutoEP's
    expert matmul, ``torch._grouped_mm``, used when ``--ep`` > 1, accepts only bf16 inputs under fake tensors).
    The trainer's start-up and the planner both refuse it."""
    if compiled and layout.ep > 1 and not bf16:
        raise error("--compile with --ep > 1 needs --bf16: AutoEP's expert matmul (torch._grouped_mm) takes only "
                    "bf16 under torch.compile; add --bf16, or drop --compile or --ep")


def check_precision(layout: ParallelLayout, bf16: bool, error: type[UserError] = LayoutError,
                    fp32_allowed: bool = True) -> None:
    """Refuse (``error``), before start-up, ZeRO-0 in bf16 with tensor or expert parallelism. DeepSpeed 0.19's
    optimizer there (``FP16_UnfusedOptimizer``) takes the gradient norm of a flattened copy of each group, which no
    longer says which weights AutoTP sharded: tensor-parallel rank 0's gradients stand for the whole group, so
    clipping, the logged grad-norm and the non-finite check leave out the other ranks' shards (TP 2: 1.007 where
    ZeRO-1 and one process give 1.020). It leaves AutoEP's expert gradients out of the norm altogether (EP 2: 1.45951
    where the norm is 1.46020; ZeRO-1 logs 1.46038). ZeRO-1/2/3 and ZeRO-0 in fp32 (the trainer's own norm) count
    every shard and expert once, but for ZeRO-1/2 with both TP and EP (:func:`check_folded_expert_norm`). The
    trainer's start-up and the planner both refuse it, offering ``--no-bf16`` where ``fp32_allowed`` (not in the
    planner's ``--hostfile`` command, which always trains in bf16).

    A checkpoint of such a run resumes on its own layout and precision only (another ZeRO stage needs ZeRO-3 on
    both sides, ZeRO-0's optimizer files hold bf16 groups), so the refusal names the way on from one: its weights
    into a new run, ``--finetune``."""
    folded = layout.tp > 1 and layout.ep > 1  # ZeRO-1/2 are refused there too (check_folded_expert_norm)
    stages, stage = ("3", "3") if folded else ("1 (or 2, 3)", "1")
    remedy = (f"use --zero {stages}{', or --no-bf16' if fp32_allowed else ''}; to go on from a checkpoint of "
              f"such a run, --load it with --finetune, --zero {stage} and another --save")
    if bf16 and layout.zero == 0 and layout.tp > 1:
        raise error(f"--zero 0 with --tp {layout.tp} in bf16: DeepSpeed's ZeRO-0 bf16 optimizer measures the "
                    "gradient norm on one tensor-parallel rank's shards, so gradient clipping and its non-finite "
                    f"check miss the other ranks'; {remedy}")
    if bf16 and layout.zero == 0 and layout.ep > 1:
        raise error(f"--zero 0 with --ep {layout.ep} in bf16: DeepSpeed's ZeRO-0 bf16 optimizer leaves the experts' "
                    "gradients out of the gradient norm, so gradient clipping and the logged grad norm miss them; "
                    f"{remedy}")


def check_folded_expert_norm(layout: ParallelLayout, error: type[UserError] = LayoutError) -> None:
    """Refuse (``error``), before start-up, ZeRO-1/2 with both ``--tp`` and ``--ep`` > 1. AutoEP folds each
    expert-parallel group across the tensor-parallel ranks, so those ranks hold different routed experts, but
    DeepSpeed 0.19's ZeRO-1/2 optimizer (``get_grad_norm_direct``) adds a weight that AutoTP did not shard to the
    gradient norm on tensor-parallel rank 0 only: the norm it clips by and the trainer logs leaves out the experts
    of every other tensor-parallel rank (tp 2, ep 2: ||g||^2 short by exactly rank 1's expert share). Its ZeRO-3
    optimizer counts them (``_grad_norm_counts_every_rank``), and at ZeRO-0 in fp32 the trainer measures the norm
    itself; ZeRO-0 in bf16 is refused by :func:`check_precision`. The trainer's start-up and the planner both
    refuse it. A checkpoint of such a run resumes on no other ZeRO stage, so the line names ``--finetune``."""
    if layout.zero in (1, 2) and layout.tp > 1 and layout.ep > 1:
        raise error(f"--zero {layout.zero} with --tp {layout.tp} and --ep {layout.ep}: DeepSpeed's ZeRO-1/2 "
                    "optimizer counts the routed experts' gradients on tensor-parallel rank 0 only, so gradient "
                    "clipping and the logged grad norm miss the experts the other tensor-parallel ranks hold; use "
                    "--zero 3 (whose checkpoints of this layout resume only on it and cannot be exported), or train "
                    "without --tp or without --ep; to go on from a checkpoint of such a run, --load it with "
                    "--finetune, --zero 3 and another --save")


@dataclass(frozen=True)
class ZeroBuffers:
    """The buffer sizes of a ds_config's ``zero_optimization`` that the memory plan counts, in elements; the
    defaults are DeepSpeed 0.19's, for a template that gives none. ``reduce_bucket_size``: the gradients ZeRO-2/3
    reduce at once (a contiguous buffer with ``contiguous_gradients``; two under ZeRO-2 with ``overlap_comm``,
    which DeepSpeed turns on for ZeRO-3 only where None); ``prefetch_bucket_size`` and ``max_live_parameters``:
    under ZeRO-3, the parameters gathered ahead of their module, and the gathered parameters past which nothing
    more is prefetched."""

    reduce_bucket_size: int = 500_000_000
    prefetch_bucket_size: int = 50_000_000
    max_live_parameters: int = 1_000_000_000
    contiguous_gradients: bool = True
    overlap_comm: bool | None = None

    def overlaps(self, zero: int) -> bool:
        """Whether DeepSpeed overlaps reductions with the backward at ZeRO stage ``zero`` (None: at ZeRO-3)."""
        return zero == 3 if self.overlap_comm is None else self.overlap_comm


# ZeroBuffers field -> (ds_config key, the least value DeepSpeed takes: a prefetch bucket of 0 prefetches nothing)
ZERO_BUFFER_KEYS = {"reduce_bucket_size": ("reduce_bucket_size", 1),
                    "prefetch_bucket_size": ("stage3_prefetch_bucket_size", 0),
                    "max_live_parameters": ("stage3_max_live_parameters", 0)}


def zero_buffers(zero_optimization: Mapping[str, Any], path: str | Path) -> ZeroBuffers:
    """:class:`ZeroBuffers` of the ``zero_optimization`` section of ds_config file ``path`` (a count may be written
    ``2e8``, as DeepSpeed reads it); a count that is not a whole number DeepSpeed takes, or a switch that is not
    true/false, raises :class:`LayoutError` naming the file and the key."""
    given: dict[str, Any] = {}
    for field, (key, least) in ZERO_BUFFER_KEYS.items():
        value = zero_optimization.get(key, getattr(ZeroBuffers, field))
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value != int(value) or value < least):
            raise LayoutError(f"--ds-config {path}: zero_optimization.{key} must be a whole number >= {least}, got "
                              f"{value!r}")
        given[field] = int(value)
    for key in ("contiguous_gradients", "overlap_comm"):
        value = zero_optimization.get(key, getattr(ZeroBuffers, key))
        if not (isinstance(value, bool) or value is None and key == "overlap_comm"):
            raise LayoutError(f"--ds-config {path}: zero_optimization.{key} must be true or false, got {value!r}")
        given[key] = value
    return ZeroBuffers(**given)


# the ZeRO++ fields of ParallelLayout -> their zero_optimization keys
ZEROPP_KEYS = {"hpz": "zero_hpz_partition_size", "qwz": "zero_quantized_weights", "qgz": "zero_quantized_gradients"}


def zeropp_options(zero_optimization: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The ZeRO++ fields of :class:`ParallelLayout` (``hpz``, ``qwz``, ``qgz``) from the ``zero_optimization``
    section of ds_config file ``path`` (absent: off); a malformed one raises :class:`LayoutError` naming the file."""
    hpz = zero_optimization.get(ZEROPP_KEYS["hpz"], 1)
    if isinstance(hpz, bool) or not isinstance(hpz, int) or hpz < 1:
        raise LayoutError(f"--ds-config {path}: zero_optimization.zero_hpz_partition_size must be a positive "
                          f"integer, got {hpz!r}")
    names = {key: ZEROPP_KEYS[key] for key in ("qwz", "qgz")}
    flags = {key: zero_optimization.get(name, False) for key, name in names.items()}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise LayoutError(f"--ds-config {path}: zero_optimization.{names[key]} must be true or false, got "
                              f"{value!r}")
    return {"hpz": hpz, **flags}


TEMPLATE_COUNTS = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps")


def check_layout_keys(template: Mapping[str, Any], path: str | Path, error: type[UserError] = LayoutError) -> None:
    """Raise ``error`` naming ds_config file ``path`` and the key where a layout or precision setting of
    ``template`` (its sections ``zero_optimization``, ``tensor_parallel``, ``expert_parallel`` and ``bf16``, batch
    counts, ZeRO stage, AutoTP and AutoEP sizes, ``expert_parallel.enabled``, ``bf16.enabled``: a string "false"
    would be true to :func:`bf16_enabled`) is not what DeepSpeed takes."""
    for key in ("zero_optimization", "tensor_parallel", "expert_parallel", "bf16"):
        if not isinstance(template.get(key, {}), dict):
            raise error(f"--ds-config {path}: {key} must be an object, got {template[key]!r}")
    for section in ("expert_parallel", "bf16"):
        if not isinstance(template.get(section, {}).get("enabled", False), bool):
            raise error(f"--ds-config {path}: {section}.enabled must be true or false, got "
                        f"{template[section]['enabled']!r}")
    stage = template.get("zero_optimization", {}).get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise error(f"--ds-config {path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    counts = {key: template.get(key) for key in TEMPLATE_COUNTS}
    counts.update({f"{section}.{key}": template.get(section, {}).get(key)
                   for section, key in (("tensor_parallel", "autotp_size"), ("expert_parallel", "autoep_size"))})
    for key, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise error(f"--ds-config {path}: {key} must be a positive integer, got {value!r}")


def template_layout(template: Mapping[str, Any], path: str | Path, world_size: int, *, tp: int | None = None,
                    ep: int | None = None, zero: int | None = None, micro_batch_size: int | None = None,
                    global_batch_size: int | None = None, grad_accum: int | None = None,
                    replicate_core: bool | None = None, compiled: bool = False,
                    error: type[UserError] = LayoutError) -> ParallelLayout:
    """The layout of ``world_size`` ranks given these settings (None: not given) and ds_config ``template`` read
    from ``path`` (:func:`check_layout_keys` first), as the trainer resolves it: a given setting first, then the
    template's, then the default (ZeRO stage 0 where the template gives none). ``grad_accum`` (the planner's) or
    ``global_batch_size`` replace the template's ``train_batch_size`` and ``gradient_accumulation_steps``; a
    template giving both must agree with the micro-batch and data-parallel size (DeepSpeed's rule). Under ZeRO-3 the
    core and the dense blocks are leaf modules where ``compiled`` or the template asks for them
    (``zero_optimization.leaf_module``); the core is then gathered per forward and backward, not replicated. A
    contradiction raises ``error`` naming ``path``."""
    micro = micro_batch_size or template.get("train_micro_batch_size_per_gpu", 1)
    tp = tp or template.get("tensor_parallel", {}).get("autotp_size", 1)
    ep_section = template.get("expert_parallel", {})
    ep = ep or (ep_section.get("autoep_size", 1) if ep_section.get("enabled", False) else 1)
    zero = zero if zero is not None else template.get("zero_optimization", {}).get("stage", 0)
    dp = world_size // tp if world_size % tp == 0 else 1  # ParallelLayout reports the divisibility error
    accumulation, template_batch = template.get("gradient_accumulation_steps"), template.get("train_batch_size")
    if grad_accum:
        global_batch_size = micro * grad_accum * dp
    if not global_batch_size and accumulation and template_batch and template_batch != micro * accumulation * dp:
        raise error(f"--ds-config {path}: train_batch_size {template_batch} is not micro-batch {micro} x "
                    f"gradient_accumulation_steps {accumulation} x data-parallel size {dp}, and DeepSpeed would keep "
                    "only one of them: remove one of the two keys, or pass --global-batch-size")
    global_batch = global_batch_size or template_batch or micro * (accumulation or 1) * dp
    leaf = zero == 3 and (compiled or "leaf_module" in template.get("zero_optimization", {}))
    if leaf and replicate_core:
        why = "under --compile" if compiled else "with this ds_config's zero_optimization.leaf_module"
        raise error(f"--replicate-core does not apply {why} under ZeRO-3: there the recurrent core is a ZeRO-3 "
                    "leaf module, gathered once per forward and backward; drop one of them")
    return ParallelLayout(world_size=world_size, tp=tp, ep=ep, zero=zero, micro_batch_size=micro,
                          global_batch_size=global_batch,
                          replicate_core=replicate_core if replicate_core is not None else not leaf,
                          leaf_blocks=leaf, **zeropp_options(template.get("zero_optimization", {}), path))
