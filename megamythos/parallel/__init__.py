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
  gathered per step (see :mod:`.zero`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
           "autoep_to_model_names", "ds_config_sections", "replicate_recurrent_core"]


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
