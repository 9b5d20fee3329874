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
  each AutoTP shard and AutoEP expert once.
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

__all__ = ["MOE_LAYER_PATTERN", "TP_COLUMN_PATTERNS", "TP_ROW_PATTERNS", "adapt_engine_module",
           "autoep_to_model_names", "ds_config_sections", "global_grad_norm", "replicate_recurrent_core"]


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


def global_grad_norm(params: Iterable[nn.Parameter], world: int, tp: int, ep: int) -> float:
    """The L2 norm of the whole model's gradient, the norm DeepSpeed's ZeRO and bf16 optimizers report (before
    clipping), from the ``.grad`` of this rank's ``params``. Call it at the accumulation boundary after backward,
    when the data-parallel gradients are reduced, and before ``engine.step()`` clips and zeroes them.

    ||g||^2 is the sum of ||g_p||^2 over the model's distinct gradient tensors. The ranks that hold a tensor hold the
    same gradient for it: a replicated parameter is held by all ``world`` ranks, each shard of an AutoTP-split
    weight by world / tp of them, each AutoEP expert's weights by world / ep. Without TP and EP every rank holds
    the whole gradient, so its local norm is the norm; with them, ||g||^2 = sum over the ranks of
    sum_p ||g_p||^2 / copies(p), one all-reduce of a scalar."""
    from deepspeed.moe.utils import is_moe_param
    from deepspeed.runtime.utils import is_model_parallel_parameter

    trained = [p for p in params if p.grad is not None]
    if tp == 1 and ep == 1:
        return float(torch.nn.utils.get_total_norm([p.grad for p in trained]))
    by_copies: dict[int, list[torch.Tensor]] = defaultdict(list)  # one fused norm per copy count, not per tensor
    for p in trained:
        by_copies[world // ep if is_moe_param(p) else world // tp if is_model_parallel_parameter(p)
                  else world].append(p.grad)
    squares = torch.stack([torch.nn.utils.get_total_norm(grads).double() ** 2 / copies
                           for copies, grads in by_copies.items()]).sum()
    dist.all_reduce(squares)
    return float(squares.sqrt())
