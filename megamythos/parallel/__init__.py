"""The one boundary between the model and DeepSpeed's AutoTP / AutoEP.

The model (``megamythos.model.lm`` and the modules it is built from) knows nothing of DeepSpeed; it only keeps the
layout DeepSpeed relies on (Linear names, fused expert tensors, buffer names, shape-inferred head counts). This
package holds everything that depends on DeepSpeed's contract:

- before ``deepspeed.initialize``: :func:`ds_config_sections`, the ``tensor_parallel`` / ``expert_parallel``
  ds_config sections, written from the model config (a mismatch there silently changes the maths);
- after it: :func:`adapt_engine_module` completes what AutoTP and AutoEP did to the model (see
  :mod:`.tensor_parallel` and :mod:`.expert_parallel`);
- at export: :func:`autoep_to_model_names` maps AutoEP's checkpoint names back to the model's;
- under ZeRO-3, after it: :func:`replicate_recurrent_core` bounds how often the shared recurrent block is
  gathered per step (see :mod:`.zero`);
- at each step where DeepSpeed computes no gradient norm (ZeRO-0 in fp32): :func:`global_grad_norm`, which counts
  each AutoTP shard and AutoEP expert once, and :func:`clip_gradients` by it; under ``--log-params-norm``:
  :func:`params_norm`, which also counts each ZeRO-3 partition once (both :func:`distributed_norm`).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from megamythos.model.config import ModelConfig
from megamythos.parallel.expert_parallel import (
    MOE_LAYER_PATTERN,
    adapt_autoep_layers,
    autoep_section,
    autoep_to_model_names,
)
from megamythos.parallel.tensor_parallel import TP_COLUMN_PATTERNS, TP_ROW_PATTERNS, autotp_section, sum_rope_key_grad
from megamythos.parallel.zero import replicate_recurrent_core
from megamythos.runtime.device import collective_device

__all__ = ["MOE_LAYER_PATTERN", "TP_COLUMN_PATTERNS", "TP_ROW_PATTERNS", "adapt_engine_module",
           "autoep_to_model_names", "clip_gradients", "ds_config_sections", "global_grad_norm", "params_norm",
           "replicate_recurrent_core"]


def ds_config_sections(config: ModelConfig, tp: int, ep: int, ep_template: Mapping[str, Any]) -> dict[str, Any]:
    """``tensor_parallel`` (when tp > 1) and ``expert_parallel`` (when ep > 1) ds_config sections; the template's
    ``expert_parallel`` section (``ep_template``) contributes only implementation options."""
    sections: dict[str, Any] = {}
    if tp > 1:
        sections["tensor_parallel"] = autotp_section(tp)
    if ep > 1:
        sections["expert_parallel"] = autoep_section(config, ep, ep_template)
    return sections


def adapt_engine_module(module: nn.Module, config: ModelConfig, tp_group: Any | None) -> int:
    """After ``deepspeed.initialize``: sum MLA's shared RoPE-key gradient over ``tp_group`` (None: no TP) and give
    every AutoEP layer our MoE's contract. Returns the number of AutoEP layers."""
    if tp_group is not None:
        sum_rope_key_grad(module, tp_group)
    return adapt_autoep_layers(module, config)


def copies(p: nn.Parameter, world: int, tp: int, ep: int) -> int:
    """How many of the ``world`` ranks hold the same values as this rank's ``p`` (its whole local tensor, and so
    its gradient): all of them for a replicated parameter, world / tp for each shard of an AutoTP-split weight,
    world / ep for an AutoEP expert's weights."""
    from deepspeed.moe.utils import is_moe_param
    from deepspeed.runtime.utils import is_model_parallel_parameter

    return world // ep if is_moe_param(p) else world // tp if is_model_parallel_parameter(p) else world


def distributed_norm(pieces: Iterable[tuple[torch.Tensor | None, int]], world: int) -> float:
    """The L2 norm of tensors spread over the ``world`` ranks, from this rank's ``(tensor, copies)`` pairs: each
    tensor is held, with the same values, by ``copies`` ranks (None: this rank holds none of its values, e.g. a
    parameter without a gradient; its copy count still counts below, so that every rank decides alike).

    ||x||^2 = sum over the ranks of sum_t ||t||^2 / copies(t): one all-reduce of a scalar, and none when every
    pair is held by all ``world`` ranks (then this rank's norm is the norm). Each tensor's norm is taken in fp32
    whatever its dtype (bf16 weights included) and summed in fp64."""
    by_copies: dict[int, list[torch.Tensor]] = defaultdict(list)
    for tensor, n in pieces:
        by_copies[n].extend(() if tensor is None else (tensor,))
    everywhere = set(by_copies) <= {world}  # decided alike on every rank: all of them reduce, or none
    # torch's fused per-tensor norms (those of clip_grad_norm_), each in fp32 whatever the tensor's dtype
    squares = [torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32)).double().square().sum()
               / (1 if everywhere else n) for n, tensors in by_copies.items() if tensors]
    total = torch.stack(squares).sum() if squares else torch.zeros((), dtype=torch.float64)
    if not everywhere:  # on the backend's device: NCCL takes CUDA tensors only (a rank holding none, offloaded ones)
        total = total.to(collective_device())
        dist.all_reduce(total)
    return float(total.sqrt())


def global_grad_norm(params: Iterable[nn.Parameter], world: int, tp: int, ep: int) -> float:
    """The L2 norm of the whole model's gradient, the norm DeepSpeed's ZeRO and bf16 optimizers report (before
    clipping), from the ``.grad`` of this rank's ``params``. Call it at the accumulation boundary after backward,
    when the data-parallel gradients are reduced, and before ``engine.step()`` clips and zeroes them. The ranks
    that hold a parameter (:func:`copies`) hold the same gradient for it (:func:`distributed_norm`)."""
    return distributed_norm(((p.grad, copies(p, world, tp, ep)) for p in params), world)


def clip_gradients(params: Iterable[nn.Parameter], norm: float, max_norm: float) -> None:
    """Scale the ``.grad`` of ``params`` by min(1, max_norm / (norm + 1e-6)), the rule of DeepSpeed's and torch's
    ``clip_grad_norm_``, with ``norm`` the whole model's gradient norm (:func:`global_grad_norm`): every rank scales
    by the same factor. ``max_norm`` 0: no clipping.

    Where the trainer computes the norm (ZeRO-0 in fp32) it clips by it too: DeepSpeed's engine there clips by the
    mean over the data-parallel ranks of each rank's own gradient norm, which under AutoEP leaves out the experts
    the other ranks hold (``ds_config.trainer_clips``)."""
    scale = max_norm / (norm + 1e-6)
    if max_norm > 0 and scale < 1:
        torch._foreach_mul_([p.grad for p in params if p.grad is not None], scale)


def local_weights(p: nn.Parameter, world: int, tp: int, ep: int) -> tuple[torch.Tensor, int]:
    """(this rank's weights of ``p``, how many ranks hold them) for :func:`distributed_norm`, without a gather:
    under ZeRO-3 its partition, ``p.ds_tensor`` [ds_tensor.ds_numel] less the padding past the parameter's end
    (uninitialised), held by copies(p) / partition-group size ranks; otherwise ``p`` itself (the module's
    weights, bf16 under bf16: DeepSpeed's fp32 master copies sit in flat, padded, per-optimizer buffers)."""
    n = copies(p, world, tp, ep)
    partition = getattr(p, "ds_tensor", None)
    if partition is None:
        return p.detach(), n
    size = partition.ds_numel
    valid = min(size, max(0, p.ds_numel - size * p.ds_zero_partition_rank))
    return partition.narrow(0, 0, valid), n // p.ds_zero_partition_world_size


def params_norm(params: Iterable[nn.Parameter], world: int, tp: int, ep: int) -> float:
    """The L2 norm of the whole model's weights (Megatron's ``params-norm``) from this rank's ``params``, under any
    ZeRO stage, AutoTP and AutoEP: each value counted once (:func:`local_weights`, :func:`distributed_norm`)."""
    return distributed_norm((local_weights(p, world, tp, ep) for p in params), world)
