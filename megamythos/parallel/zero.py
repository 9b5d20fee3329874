"""ZeRO-3 and the shared recurrent block: its weights are gathered a bounded number of times per step, whatever
the loop count T and however T changes between steps.

DeepSpeed ZeRO-3 gathers a module's parameters for every call and releases them after it, and prefetches by a
recorded order of module calls (its trace). The recurrent block is called T times per forward, again in every
activation-checkpoint recompute and in backward, and T is sampled per step: partitioned like everything else,
the block is gathered about 3T times per micro-batch, and every change of T invalidates the trace, so the
parameters of the rest of the model are fetched on demand too (measured in ``bench/README.md``).

:func:`replicate_recurrent_core` makes the recurrent core's parameters ZeRO-3 *persistent* (DeepSpeed's
``ds_persist``, what ``stage3_param_persistence_threshold`` does for small tensors): their weights stay gathered
on every rank of their data-parallel group (experts: their expert-data-parallel group), their gradients are
reduce-scattered and their optimizer states stay partitioned as before, i.e. ZeRO-2 for this group and ZeRO-3
for the rest. The optimizer step ends with one all-gather of the updated persistent weights
(``DeepSpeedZeroOptimizer_Stage3._post_step``), so the block costs one gather of its own size per step, for any
T and any number of micro-batches, and no gather inside the loop at all. The price is memory: the core's local
share (attention / tp, local experts, shared experts) is held whole instead of 1/dp of it, about what a
per-use gather of its largest module needs anyway while the loop runs (``megamythos.planning.step_model`` budgets it).

The core may instead be a ZeRO-3 leaf module (``zero_optimization.leaf_module``: one gather per forward and one
per backward), which is correct because every parameter it owns, its input norm included, is used inside its own
forward, and the prelude/coda blocks with it (:func:`leaf_blocks_section`). ``--compile`` under ZeRO-3 needs that
(no hook inside a compiled block); the CPU template (``ds_configs/cpu-debug.json``) asks for it eagerly too, where
it skips DeepSpeed's per-submodule hooks (measured in ``bench/README.md``). Elsewhere the persistent core is the
default.
"""
from __future__ import annotations

import logging
from typing import Any

from megamythos.model.lm import DenseBlock
from megamythos.model.recurrent import RecurrentCore

log = logging.getLogger(__name__)
RECURRENT_CORE = "recurrent"  # MythosLM.recurrent: RecurrentCore, the module that runs the T iterations
# ZeRO-3 leaf modules: the blocks gathered whole by one hook each (under --compile: one graph per block)
LEAF_BLOCKS = (RecurrentCore, DenseBlock)


def leaf_blocks_section() -> dict[str, Any]:
    """The ``zero_optimization.leaf_module`` section that makes the recurrent core and each prelude/coda block a
    ZeRO-3 leaf module.

    ZeRO-3 fetches parameters in a hook on every submodule (and Dynamo breaks a compiled block at every hook). As
    leaves, the recurrent core and each prelude/coda block are fetched whole by one hook before their forward
    (and before their backward) and have no hooks inside, so :func:`megamythos.model.lm.compile_blocks` gets one
    graph per block. The core may be a leaf because every parameter it owns is used inside its forward (the input
    norm included); the shared block alone may not, since ZeRO-3 would reduce its gradients once per call.
    """
    return {"classes": [f"{cls.__module__}.{cls.__qualname__}" for cls in LEAF_BLOCKS]}


def replicate_recurrent_core(engine: Any) -> int:
    """After ``deepspeed.initialize``: make the recurrent core's ZeRO-3 parameters persistent (see the module
    docstring); returns how many elements (local to this rank's EP/TP shard) became persistent, 0 when the
    engine does not run ZeRO-3. Their weights are gathered by the first forward and never released."""
    if engine.zero_optimization_stage() != 3:
        return 0
    core = getattr(engine.module, RECURRENT_CORE)
    params = [p for p in core.parameters() if hasattr(p, "ds_id") and not p.ds_persist]
    for p in params:
        p.ds_persist = True
    for p in engine.module.parameters():
        # DeepSpeed 0.19.8 releases persistent parameters after a module call while it records a new trace
        # (PartitionedParameterCoordinator.release_sub_module skips them only with a complete trace), i.e. after
        # every change of T; it never releases a parameter marked external there. The optimizer step still
        # partitions and re-gathers them (release_and_reset_all, then _post_step).
        if getattr(p, "ds_persist", False):
            p.is_external_param = True
    # The optimizer all-gathers exactly this list after every step (and partitions it around checkpoints).
    engine.optimizer.persistent_parameters.extend(params)
    numel = sum(p.ds_numel for p in params)
    log.info("ZeRO-3: the recurrent core's %d parameter tensors (%d elements) stay gathered (ZeRO-2 for them)",
             len(params), numel)
    return numel
