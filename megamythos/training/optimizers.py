"""Which AdamW implementation steps the parameters (``--adam-impl``).

* ``deepspeed``: the ds_config's ``optimizer`` section; DeepSpeed builds AdamW itself (its fused CUDA Adam on a
  GPU, ``torch.optim.AdamW`` on CPU with the template's ``"torch_adam": true``).
* ``apex``: NVIDIA apex's ``FusedAdam`` in AdamW mode, Megatron-LM's default on CUDA, handed to DeepSpeed as a
  client optimizer. DeepSpeed calls :func:`client_adam`'s factory with the parameter groups after AutoEP and AutoTP
  replaced their layers; the factory splits expert from non-expert parameters as DeepSpeed does for its own
  optimizer (expert-data-parallel gradients and ZeRO partitions need that split).
* ``auto`` (default): ``apex`` on a CUDA machine where apex's CUDA extensions import, else ``deepspeed``.

The PyPI package named ``apex`` is another project: only ``apex.optimizers.FusedAdam`` counts as installed.

:func:`adamw_param_groups` gives the groups every implementation steps: no weight decay on norms, biases and the
other weights :func:`~megamythos.model.lm.weight_decay_param_groups` names, each group marked with whether
``--weight-decay`` applies to it (``DECAYS``), so that a resume on another layout can put the checkpoint's weight
decay back on exactly those groups.

Whichever it is, :func:`undo_state_initialising_step` takes back the step on zero gradients that DeepSpeed's
fp16/bf16 optimizers of ZeRO-0 take while they are built, and :func:`optimizer_update_left_out` discards a step
as DeepSpeed discards one whose gradient norm is not finite (ZeRO-0 in fp32 computes no norm to discard it by).
:func:`import_muon_without_compiling` keeps DeepSpeed's start-up from importing torch's inductor for an optimizer
the trainer never uses.
"""
from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from megamythos.errors import UserError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ADAM_IMPLS = ("auto", "deepspeed", "apex")
# parameter-group key: whether --weight-decay applies to the group, whatever its value (0 included)
DECAYS = "decays"
DEEPSPEED_MUON = "deepspeed.runtime.zero.muon.muon_optimizer"


def apex_fused_adam() -> type | None:
    """``apex.optimizers.FusedAdam`` when NVIDIA apex is importable, else None (lazy import)."""
    try:
        from apex.optimizers import FusedAdam  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return FusedAdam


def resolve_adam_impl(requested: str, cuda: bool) -> str:
    """``deepspeed`` or ``apex`` for ``--adam-impl requested``; an explicit ``apex`` that does not import is a
    :class:`UserError` naming the fix."""
    available = apex_fused_adam() is not None
    if requested == "apex" and not available:
        raise UserError("--adam-impl apex: apex.optimizers.FusedAdam does not import; install NVIDIA apex with its "
                        "CUDA extensions (github.com/NVIDIA/apex, not the PyPI package named apex), or use "
                        "--adam-impl deepspeed")
    if requested == "auto":
        return "apex" if cuda and available else "deepspeed"
    return requested


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """``model``'s AdamW groups (:func:`~megamythos.model.lm.weight_decay_param_groups`) with ``weight_decay`` on
    the decayed one, each named ``params-i`` (DeepSpeed splits each into expert / non-expert groups by name under
    AutoEP, and moves the expert weights AutoEP replaces into the group of the weights they replace) and marked
    ``DECAYS``. The decayed group comes first, as ``weight_decay_param_groups`` returns it."""
    from megamythos.model.lm import weight_decay_param_groups

    groups = weight_decay_param_groups(model, 1.0)  # weight decay 1 where it applies, else 0
    return [{**group, "name": f"params-{i}", DECAYS: group["weight_decay"] > 0,
             "weight_decay": weight_decay * group["weight_decay"]} for i, group in enumerate(groups)]


def client_adam(impl: str, lr: float, betas: tuple[float, float], eps: float,
                weight_decay: float) -> Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None:
    """The factory to pass as ``deepspeed.initialize(optimizer=...)`` for ``impl`` (None: DeepSpeed builds it
    from the config). Per-group ``weight_decay`` (no decay for norms and biases) overrides the default."""
    if impl != "apex":
        return None
    fused_adam = apex_fused_adam()

    def build(param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        from deepspeed.moe.utils import configure_moe_param_groups, is_moe_param

        groups = list(param_groups)
        if any(is_moe_param(p) for group in groups for p in group["params"]):  # as DeepSpeed's own path does
            groups = configure_moe_param_groups(groups)
        logger.info("optimizer: apex FusedAdam (AdamW mode) over %d parameter groups", len(groups))
        return fused_adam(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adam_w_mode=True)

    return build


def kept_optimizer_settings(groups: list[dict[str, Any]], weight_decay: float, betas: tuple[float, float],
                            eps: float) -> list[str]:
    """``--flag saved (command line X)`` for each AdamW setting that a resumed optimizer's ``groups`` (restored
    by DeepSpeed with the optimizer state) hold other than the command line: weight decay (the largest of the
    groups': norms and biases have none), beta1, beta2, eps."""
    first = groups[0]
    saved = {"--weight-decay": max(g.get("weight_decay", 0.0) for g in groups), "--adam-beta1": first["betas"][0],
             "--adam-beta2": first["betas"][1], "--adam-eps": first["eps"]}
    asked = {"--weight-decay": weight_decay, "--adam-beta1": betas[0], "--adam-beta2": betas[1], "--adam-eps": eps}
    return [f"{flag} {saved[flag]:g} (command line {asked[flag]:g})" for flag in saved if saved[flag] != asked[flag]]


def undo_state_initialising_step(optimizer: Any) -> bool:
    """Take back the optimizer step that DeepSpeed 0.19's mixed-precision optimizers outside ZeRO (``--zero 0``
    with bf16 or fp16: ``FP16_UnfusedOptimizer``, ``FP16_Optimizer``) run on zero gradients while they are built,
    to create the optimizer state. AdamW counts that step and decays the fp32 master weights once: every later
    bias correction is one step behind (the first update 0.73x of ZeRO-1/2/3's at beta2 0.95) and the masters no
    longer equal the model's weights. Afterwards the state is empty, as ZeRO-1/2/3 leave it (built at the first
    real step), and each master equals its weight again. Returns whether ``optimizer`` (the engine's) was one."""
    import torch
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if isinstance(optimizer, FP16_UnfusedOptimizer):
        pairs = [pair for masters, weights in zip(optimizer.fp32_groups, optimizer.fp16_groups, strict=True)
                 for pair in zip(masters, weights, strict=True)]
    elif isinstance(optimizer, FP16_Optimizer):
        pairs = list(zip(optimizer.fp32_groups_flat, optimizer.fp16_groups_flat, strict=True))
    else:
        return False
    with torch.no_grad():
        for master, weight in pairs:
            master.copy_(weight)
    optimizer.optimizer.state.clear()
    for group in optimizer.optimizer.param_groups:  # apex's and DeepSpeed's FusedAdam count steps per group
        group.pop("step", None)
    return True


@contextmanager
def optimizer_update_left_out(optimizer: torch.optim.Optimizer, left_out: bool) -> Iterator[None]:
    """With ``left_out``, ``optimizer.step()`` does nothing inside the block and the optimizer reports an overflow,
    so ``engine.step()`` discards the step's gradient (and zeroes it), counts it in ``engine.skipped_steps`` and
    leaves the LR scheduler where it was, as DeepSpeed does for its ZeRO, bf16 and fp16 optimizers' non-finite
    gradient norm (and Megatron for a skipped step); the weights and the optimizer's moments stay as they were."""
    if not left_out:
        yield
        return
    own = vars(optimizer)
    kept = {name: own[name] for name in ("step", "overflow") if name in own}  # the LR scheduler's step wrapper
    optimizer.step = lambda *args, **kwargs: None  # instance attributes: hide the class's step (and overflow)
    optimizer.overflow = True  # DeepSpeed's engine reads it after step(): no scheduler step, skipped_steps + 1
    try:
        yield
    finally:
        del optimizer.step, optimizer.overflow
        for name, value in kept.items():
            setattr(optimizer, name, value)


def import_muon_without_compiling() -> None:
    """Import DeepSpeed's Muon optimizer module with its ``@compiler.compile()`` kernels left as plain functions.

    ``deepspeed.initialize`` imports that module at every start (ZeRO's optimizer check and its optimizers ask
    whether the optimizer is a Muon one), and the module wraps its kernels in ``torch.compile`` at import, which
    imports torch's inductor: 2.3-2.8 s of CPU per rank on every launch (``bench/README.md``, start-up
    2026-12-06), for an optimizer the trainer never builds (its optimizer is AdamW: :func:`resolve_adam_impl`).
    Imported here first, DeepSpeed's later imports find it. A DeepSpeed without that module or decorator is left
    to import what it does."""
    if DEEPSPEED_MUON in sys.modules:
        return
    from deepspeed.runtime import compiler

    decorator_factory = getattr(compiler, "compile", None)
    identity = getattr(compiler, "dummy_decorator", None)
    if decorator_factory is None or identity is None:
        return
    compiler.compile = lambda: identity
    try:
        importlib.import_module(DEEPSPEED_MUON)
    except ImportError:
        pass
    finally:
        compiler.compile = decorator_factory
