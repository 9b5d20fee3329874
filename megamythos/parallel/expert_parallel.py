"""DeepSpeed AutoEP: the ds_config section for this model, the adapter that gives AutoEP's replacement layer the
contract of our :class:`~megamythos.model.moe.MoE`, and the map from its checkpoint names back to ours.

What AutoEP takes from the model (deepspeed 0.19.8, ``deepspeed/module_inject/auto_ep.py``): the top-level module's
``config.num_experts_per_tok``; every module whose path matches :data:`MOE_LAYER_PATTERN`, with ``gate`` =
Linear(H, E), its buffer ``gate.e_score_correction_bias`` [E], ``experts.gate_up_proj`` [E, 2F, H],
``experts.down_proj`` [E, H, F] and ``shared_experts`` (dropped silently unless the section declares them).

What it puts in their place (``deepspeed/module_inject/auto_ep_layer.py``, ``AutoEPMoELayer``): ``router``
(``TokenChoiceTopKRouter``: ``router.gate`` Linear(H, E), buffer ``router.e_score_correction_bias``),
``experts.w1`` / ``w3`` [E_local, F, H] and ``experts.w2`` [E_local, H, F], the same ``shared_experts`` and a
``tokens_per_expert`` [E] buffer that counts in every forward. Its routing equals ours (softmax|sigmoid in fp32,
top-k on scores + bias, unbiased weights, renormalised with ``route_norm``), but its forward maps [B, S, H] to
[B, S, H] only: no balance loss, no router logits.

:func:`adapt_autoep_layers` restores our contract on each replacement after ``deepspeed.initialize``:

- output MoEOutput(hidden, aux_loss): a forward hook on ``router.gate`` keeps the logits the call routed with, and
  a forward hook on the layer returns them scored by the same :class:`~megamythos.model.moe.BalanceLoss` our MoE uses,
  so losses with and without expert parallelism agree. Both hooks run again in an activation-checkpoint
  recompute, and they read only an activation and a buffer (nothing ZeRO-3 partitions). Hooks rather than a
  wrapper module, so parameter names stay AutoEP's: DeepSpeed's AutoEP checkpointing and universal checkpoints
  find the layer by them, and existing checkpoints keep loading.
- balancing buffers: the layer type is registered with :func:`~megamythos.model.moe.register_moe_layer`, so
  ``update_expert_bias``, ``expert_bias_state`` / ``load_expert_bias_state`` and ``expert_counts_frozen`` (the
  recompute context that keeps a recompute from counting tokens twice) treat it like our MoE.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from megamythos.model.config import ModelConfig
from megamythos.model.moe import GROUPED_MM_KERNEL, BalanceLoss, ExpertLoad, MoEOutput, register_moe_layer

MOE_LAYER_PATTERN = r"recurrent\.block\.moe"
# Implementation choices a ds_config template may make; everything that describes the model comes from its config.
TEMPLATE_OPTIONS = ("use_grouped_mm", "combine_impl")


def autoep_section(config: ModelConfig, ep: int, template: Mapping[str, Any]) -> dict[str, Any]:
    """The ds_config ``expert_parallel`` section for expert-parallel size ``ep``; of ``template`` (the template's
    section) only :data:`TEMPLATE_OPTIONS` are kept. Where torch has no ``torch._grouped_mm`` kernel (before 2.9,
    :data:`~megamythos.model.moe.GROUPED_MM_KERNEL`) ``use_grouped_mm`` is off: AutoEP's experts then run its
    per-expert loop, where its grouped mm would refuse to build (2.6-2.7) or find no CPU kernel (2.8)."""
    options = {k: v for k, v in template.items() if k in TEMPLATE_OPTIONS}
    if not GROUPED_MM_KERNEL:
        options["use_grouped_mm"] = False
    section = {**options, "enabled": True, "autoep_size": ep,
               "moe_layer_pattern": MOE_LAYER_PATTERN, "score_func": config.score_func,
               "route_norm": config.route_norm, "route_scale": 1.0, "top_k": config.num_experts_per_tok}
    if config.n_shared_experts:  # without this AutoEP silently drops the shared experts
        section.update(has_shared_experts=True, shared_experts_pattern="shared_experts")
    return section


def _autoep_expert_load(layer: nn.Module) -> ExpertLoad:
    bias = layer.router.e_score_correction_bias
    if bias is None:
        raise RuntimeError("AutoEP layer has no router.e_score_correction_bias: the expert bias was not copied")
    return ExpertLoad(layer.tokens_per_expert, bias)


class _BalanceLossHooks:
    """Forward hooks that make one AutoEP layer return MoEOutput(hidden [B, S, H], balance loss)."""

    def __init__(self, layer: nn.Module, balance_loss: BalanceLoss) -> None:
        self.balance_loss = balance_loss
        self.logits: torch.Tensor | None = None
        layer.router.gate.register_forward_hook(self.keep_logits)
        layer.register_forward_hook(self.attach_loss)

    def keep_logits(self, _gate: nn.Module, _inputs: Any, logits: torch.Tensor) -> None:
        self.logits = logits  # [T, E], T = B * S

    def attach_loss(self, layer: nn.Module, _inputs: Any, hidden: torch.Tensor) -> MoEOutput:
        logits, self.logits = self.logits, None
        if logits is None or not isinstance(hidden, torch.Tensor):
            raise RuntimeError("AutoEP layer did not call router.gate once and return [B, S, H]")
        bias = layer.router.e_score_correction_bias
        return MoEOutput(hidden, self.balance_loss(logits.view(*hidden.shape[:2], -1), bias))


def adapt_autoep_layers(model: nn.Module, config: ModelConfig) -> int:
    """Give every AutoEP layer in ``model`` our MoE's output and balancing contract (see the module docstring);
    returns how many there are. Call once, after ``deepspeed.initialize``."""
    try:
        from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer
    except ImportError:  # a DeepSpeed without AutoEP (the engine tolerates it too) replaced nothing
        return 0
    register_moe_layer(AutoEPMoELayer, _autoep_expert_load)
    layers = [m for m in model.modules() if isinstance(m, AutoEPMoELayer)]
    balance_loss = BalanceLoss.from_config(config)
    for layer in layers:
        _BalanceLossHooks(layer, balance_loss)
    return len(layers)


def autoep_to_model_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors named as in an AutoEP model (a universal checkpoint) -> named as in :class:`MythosLM`.

    ``experts.w1`` [E, F, H] and ``experts.w3`` [E, F, H] -> ``experts.gate_up_proj`` [E, 2F, H] (gate rows first);
    ``experts.w2`` -> ``experts.down_proj`` [E, H, F]; ``router.gate.*`` -> ``gate.*``; the selection bias
    ``router.e_score_correction_bias`` (a ZeRO-1/2 checkpoint's universal form carries it) ->
    ``gate.e_score_correction_bias``; other names pass through.
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(".experts.w1"):
            base = name[: -len("w1")]
            out[base + "gate_up_proj"] = torch.cat([tensor, state[base + "w3"]], dim=1)
        elif name.endswith(".experts.w2"):
            out[name[: -len("w2")] + "down_proj"] = tensor
        elif name.endswith(".experts.w3"):
            continue  # folded into gate_up_proj above
        else:
            out[name.replace(".router.gate.", ".gate.").replace(".router.e_score_correction_bias",
                                                                ".gate.e_score_correction_bias")] = tensor
    return out
