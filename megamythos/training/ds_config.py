"""DeepSpeed config: a JSON template from ``ds_configs/`` with the command line applied consistently.

The template decides defaults (ZeRO stage, precision, parallel sizes, batch sizes); a flag given on the command
line wins. Whatever the source, the result obeys train_batch = micro x accumulation x dp, and the sections that
describe the model's own layout (AutoTP patterns, AutoEP MoE path and routing) come from ``megamythos.parallel``,
written from the model config, never trusted from a template, because a mismatch there silently changes the maths.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from megamythos.errors import read_json_object
from megamythos.model.config import ModelConfig
from megamythos.parallel import ds_config_sections
from megamythos.parallel.zero import leaf_blocks_section
from megamythos.planning.layout import (
    ParallelLayout,
    accumulates_in_fp32,
    bf16_enabled,
    check_compile,
    check_folded_expert_norm,
    check_layout_keys,
    check_precision,
    reduces_in_fp32,
    template_layout,
)
from megamythos.training.arguments import TEMPLATE_REMEDY, ArgumentError, TrainArgs

# sections the trainer writes itself whatever a template says: one there would be dropped without a word
DROPPED = {
    "scheduler": "the LR schedule is the trainer's (--lr-schedule, --warmup, --lr, --min-lr), which replaces "
                 "DeepSpeed's scheduler",
    "fp16": "the trainer runs in bf16 (bf16.enabled, --bf16) or fp32, never fp16, whose section it drops",
    "torch_autocast": "the trainer runs in bf16 weights (bf16.enabled, --bf16) or fp32, not under DeepSpeed's "
                      "torch_autocast (whose fp16 loss scaling its own gradient clipping would not undo)",
    "data_types": "the trainer sets data_types.grad_accum_dtype itself (fp32 under bf16 ZeRO-2/3 with gradient "
                  "accumulation: the micro-batches' gradients summed in fp32, as Megatron sums them)",
    "communication_data_type": "the trainer sets communication_data_type itself (fp32 under bf16 where ranks sum a "
                               "gradient in more than one rounding: gradients summed across ranks in fp32, as "
                               "Megatron and torchtitan sum them)",
}
ENABLED_SECTIONS = ("fp16", "torch_autocast")  # of DROPPED, refused only where their "enabled" is true
# settings the command line owns (``--clip-grad``, AdamW's flags): a template's value, where it differs, would be
# overwritten without a word; dotted path into the template -> TrainArgs fields (two: betas, a list)
FLAG_KEYS = {
    "gradient_clipping": ("clip_grad",), "optimizer.params.lr": ("lr",), "optimizer.params.eps": ("adam_eps",),
    "optimizer.params.weight_decay": ("weight_decay",), "optimizer.params.betas": ("adam_beta1", "adam_beta2"),
}
OPTIMIZER_TYPES = ("adam", "adamw")  # the trainer's is AdamW; DeepSpeed spells it either way, in any case


def load_template(path: str | Path) -> dict[str, Any]:
    """Read a ds_config JSON file: an object whose batch sizes, where given, are positive integers, whose ZeRO
    stage is 0-3, whose ``bf16.enabled`` and ``expert_parallel.enabled`` are true or false, and whose sections the
    trainer reads (``zero_optimization``, ``tensor_parallel``, ``expert_parallel``, ``bf16``, ``optimizer`` and its
    ``params``) are objects; anything else raises :class:`ArgumentError` naming the file and the key. So does a
    section the trainer would drop (:data:`DROPPED`)."""
    template = read_json_object(path, ArgumentError, TEMPLATE_REMEDY)
    check_layout_keys(template, path, ArgumentError)
    if not isinstance(template.get("optimizer", {}), dict):  # the layout's and bf16's sections: check_layout_keys
        raise ArgumentError(f"--ds-config {path}: optimizer must be an object, got {template['optimizer']!r}")
    if not isinstance(template.get("optimizer", {}).get("params", {}), dict):
        raise ArgumentError(f"--ds-config {path}: optimizer.params must be an object, got "
                            f"{template['optimizer']['params']!r}")
    for key, why in DROPPED.items():
        switchable = key in ENABLED_SECTIONS and isinstance(template.get(key), dict)
        if key in template and (not switchable or template[key].get("enabled")):
            raise ArgumentError(f"--ds-config {path}: {why}; remove {key} from the file")
    return template


def check_zero_options(path: str | Path, template: dict[str, Any]) -> None:
    """Refuse a ``zero_optimization`` section DeepSpeed's own model refuses (a mistyped option: its pydantic
    traceback on every rank after start-up). Imports DeepSpeed, so each rank checks it, not the launcher's
    preflight (a second of its start-up)."""
    import pydantic
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    try:
        DeepSpeedZeroConfig(**template.get("zero_optimization", {}))
    except pydantic.ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(part) for part in ("zero_optimization", *problem["loc"]))
        raise ArgumentError(f"--ds-config {path}: {where}: {problem['msg']} (DeepSpeed's ZeRO options: https://"
                            "www.deepspeed.ai/docs/config-json/#zero-optimizations-for-fp16-training)") from None


def check_template(path: str | Path, template: dict[str, Any], args: TrainArgs) -> None:
    """Refuse a template whose optimizer is not AdamW, or whose gradient clipping or AdamW hyper-parameters
    (:data:`FLAG_KEYS`) differ from the command line's, which replace them: ``--clip-grad``, ``--lr``,
    ``--adam-beta1``/``--adam-beta2``, ``--adam-eps`` and ``--weight-decay`` (their defaults where not given)."""
    kind = template.get("optimizer", {}).get("type", "AdamW")
    if not isinstance(kind, str) or kind.lower() not in OPTIMIZER_TYPES:
        raise ArgumentError(f"--ds-config {path}: optimizer.type {kind!r} is not AdamW, the trainer's optimizer "
                            "(its flags: --lr, --adam-beta1, --adam-beta2, --adam-eps, --weight-decay); set it to "
                            "AdamW or remove it")
    for key, names in FLAG_KEYS.items():
        value: Any = template
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        wanted = [getattr(args, name) for name in names]
        if value is not None and value != (wanted if len(names) > 1 else wanted[0]):
            flags = " ".join(f"--{name.replace('_', '-')} {getattr(args, name)}" for name in names)
            raise ArgumentError(f"--ds-config {path}: {key} {value!r} contradicts {flags} (the flag's value, its "
                                "default where not given), which the run uses; pass the flag with the value you "
                                f"want and remove {key} from the file")


def resolve_layout(template: dict[str, Any], args: TrainArgs, world_size: int) -> ParallelLayout:
    """Parallel sizes and batch sizes: command line first, then the template, then defaults
    (:func:`~megamythos.planning.layout.template_layout`, as the planner resolves them)."""
    return template_layout(template, args.ds_config, world_size, tp=args.tp, ep=args.ep, zero=args.zero,
                           micro_batch_size=args.micro_batch_size, global_batch_size=args.global_batch_size,
                           replicate_core=args.replicate_core, compiled=args.compile, error=ArgumentError)


def trainer_clips(layout: ParallelLayout, bf16: bool) -> bool:
    """Whether the trainer, not DeepSpeed, measures the gradient norm and clips by it (ZeRO-0 in fp32, DeepSpeed's
    plain optimizer; its ``gradient_clipping`` is then written as 0). DeepSpeed computes no norm there, and its
    engine clips by the mean over the data-parallel ranks of each rank's local norm: under AutoEP a norm without
    the other ranks' experts, so the clipping differs from one process's (EP 2: 1.48695 where the norm is 1.48725).
    The trainer's :func:`megamythos.parallel.global_grad_norm` counts each AutoTP shard and AutoEP expert once."""
    return layout.zero == 0 and not bf16


def accumulation_warning(layout: ParallelLayout, bf16: bool) -> str | None:
    """The start-up warning of a run that sums more than one micro-batch's gradients in bf16."""
    if not bf16 or layout.grad_accum == 1 or accumulates_in_fp32(layout.zero, layout.grad_accum, bf16):
        return None
    return (f"ZeRO-{layout.zero} in bf16 sums the gradients of the {layout.grad_accum} micro-batches of each step "
            "in bf16 (DeepSpeed 0.19; about 0.5% off their fp32 sum at 16 micro-batches, more with more): --zero 2 "
            "or 3 sum them in fp32, as does --no-bf16")


def check_layout(args: TrainArgs, layout: ParallelLayout, config: ModelConfig, bf16: bool) -> None:
    """Every check of a run's layout that needs no process group, as the launcher's preflight and each rank's
    start-up make them: the model fits the layout (:meth:`ParallelLayout.check_model`), :func:`check_compile`,
    :func:`check_precision` and :func:`check_folded_expert_norm`."""
    layout.check_model(config)
    check_compile(layout, bf16, args.compile, ArgumentError)
    check_precision(layout, bf16, ArgumentError)
    check_folded_expert_norm(layout, ArgumentError)


def build_ds_config(template: dict[str, Any], args: TrainArgs, layout: ParallelLayout, config: ModelConfig,
                    client_optimizer: bool = False) -> dict[str, Any]:
    """The ds_config dict DeepSpeed gets for this run; ``client_optimizer``: the optimizer is handed to
    ``deepspeed.initialize`` (see :mod:`megamythos.training.optimizers`), so the config names none."""
    ds = copy.deepcopy(template)
    ds["train_micro_batch_size_per_gpu"] = layout.micro_batch_size
    ds["gradient_accumulation_steps"] = layout.grad_accum
    # DeepSpeed checks train_batch = micro x accum x world once before AutoTP groups exist (counting TP
    # replicas) and once after (counting dp); given only micro and accum it derives a consistent value each time.
    # The number of distinct samples per step is layout.global_batch_size = micro x accum x dp.
    ds.pop("train_batch_size", None)
    ds.setdefault("steps_per_print", 10**9)  # our own log line replaces DeepSpeed's
    bf16 = bf16_enabled(template, args.bf16)
    ds["gradient_clipping"] = 0.0 if trainer_clips(layout, bf16) else args.clip_grad
    # AdamW from the template's implementation choice (e.g. "torch_adam" on CPU), hyper-parameters from us.
    ds["optimizer"] = {"type": "AdamW", "params": {
        **template.get("optimizer", {}).get("params", {}), "lr": args.lr, "betas": [args.adam_beta1, args.adam_beta2],
        "eps": args.adam_eps, "weight_decay": args.weight_decay}}
    if client_optimizer:
        del ds["optimizer"]
        ds["zero_allow_untested_optimizer"] = True  # ZeRO's list of tested optimizers knows DeepSpeed's own only
    ds.pop("scheduler", None)  # the schedule is ours (warmup + cosine/WSD, see schedules.py)
    ds["zero_optimization"] = {**ds.get("zero_optimization", {}), "stage": layout.zero}
    ds["zero_optimization"].pop("leaf_module", None)
    if layout.leaf_blocks:
        ds["zero_optimization"]["leaf_module"] = leaf_blocks_section()
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds.pop("fp16", None)
    if accumulates_in_fp32(layout.zero, layout.grad_accum, bf16):
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    if reduces_in_fp32(layout, bf16):
        ds["communication_data_type"] = "fp32"
    ds.pop("tensor_parallel", None)
    ds.update(ds_config_sections(config, layout.tp, layout.ep, ep_template=ds.pop("expert_parallel", {})))
    return ds
