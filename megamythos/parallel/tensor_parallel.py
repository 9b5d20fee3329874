"""DeepSpeed AutoTP: the ds_config section for this model, and the gradient sum MLA needs under it.

AutoTP shards the Linears whose ``<module path>.weight`` matches a pattern below: column-parallel (output features
split; the backward sums the input gradient over the TP group) or row-parallel (input features split; the forward
sums the output). Everything else stays replicated, 3-D expert weights included. The model infers its local head
counts from tensor shapes (``view(B, S, -1, d)``), so it needs no change for the sharding itself.

MLA under TP: the ONE decoupled RoPE key k_pe [B, S, r], the last r output columns of the replicated ``wkv_a``,
feeds each rank's local heads directly, so each rank holds only part of its gradient; without a sum over the TP
group the replicated ``wkv_a`` weights drift apart between ranks. (The other columns, c_kv, reach the heads through
the column-parallel ``wkv_b``, whose backward already sums.) :func:`sum_rope_key_grad` fixes this from outside the
model: a forward hook on every MLA's ``wkv_a`` passes its output through an op that is the identity forward and
sums the gradient of the k_pe columns over the TP group backward.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from megamythos.model.attention import MLA

# Attention projections and the dense SwiGLU of prelude/coda; the shared experts stay replicated.
TP_COLUMN_PATTERNS = [r".*attn\.(wq_b|wq|wkv_b|wk|wv)\.weight", r".*(prelude|coda)\.\d+\.ffn\.(w_gate|w_up)\.weight"]
TP_ROW_PATTERNS = [r".*attn\.wo\.weight", r".*(prelude|coda)\.\d+\.ffn\.w_down\.weight"]


def autotp_section(tp: int) -> dict[str, Any]:
    """The ds_config ``tensor_parallel`` section for ``tp`` ranks: our patterns only, DeepSpeed's defaults off."""
    return {"autotp_size": tp, "partition_config": {
        "use_default_specs": False,
        "layer_specs": [{"patterns": TP_COLUMN_PATTERNS, "partition_type": "column"},
                        {"patterns": TP_ROW_PATTERNS, "partition_type": "row"}]}}


class _SumTrailingColumnsGrad(torch.autograd.Function):
    """Identity forward; backward sums the gradient of columns [start:] of the last dim over ``group``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, start: int, group: Any) -> torch.Tensor:
        ctx.start, ctx.group = start, group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.clone()
        columns = grad[..., ctx.start:].contiguous()
        dist.all_reduce(columns, op=dist.ReduceOp.SUM, group=ctx.group)
        grad[..., ctx.start:] = columns
        return grad, None, None


def _sum_rope_key_grad_hook(start: int, group: Any, _module: nn.Module, _inputs: Any,
                            output: torch.Tensor) -> torch.Tensor:
    return _SumTrailingColumnsGrad.apply(output, start, group)


def sum_rope_key_grad(model: nn.Module, tp_group: Any) -> int:
    """Hook every MLA's ``wkv_a`` (output [B, S, kv_lora_rank + r]) so the gradient of its k_pe columns is summed
    over ``tp_group``; returns the number of MLA modules hooked. Call once, after ``deepspeed.initialize``."""
    mlas = [m for m in model.modules() if isinstance(m, MLA)]
    for mla in mlas:
        mla.wkv_a.register_forward_hook(partial(_sum_rope_key_grad_hook, mla.kv_lora_rank, tp_group))
    return len(mlas)
