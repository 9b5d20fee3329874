"""Tensor-parallel helpers the model needs itself (the projections are sharded by DeepSpeed AutoTP).

MLA under tensor parallelism: the ONE shared decoupled RoPE key k_pe [B, S, 1, r] is computed from a
replicated projection and consumed only by each rank's local heads, so each rank sees only part of its
gradient. Without an all-reduce of that gradient over the TP group the replicated ``wkv_a`` weights drift
apart between TP ranks. :func:`reduce_grad_over_group` is identity forward and all-reduce (sum) backward.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def reduce_grad_over_group(x: torch.Tensor, group: Any | None) -> torch.Tensor:
    """Identity in the forward pass; sums the gradient of ``x`` over ``group`` in the backward pass.

    A no-op when ``group`` is None or has a single rank.
    """
    if group is None or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return x
    return _AllReduceGrad.apply(x, group)


def set_tensor_parallel_group(model: nn.Module, group: Any | None) -> int:
    """Point every module that has a ``tp_group`` attribute (MLA attention) at ``group``; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "tp_group"):
            module.tp_group = group
            count += 1
    return count
