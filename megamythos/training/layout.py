"""Parallel layout (world size, TP, EP, ZeRO, batch sizes): validation, and the dry run of big presets.

DeepSpeed folds AutoEP onto the data-parallel x tensor-parallel ranks: tp and ep each have to divide the world
size (tp2 x ep2 runs on 2 ranks), the data-parallel size is world / tp, and the global batch is
micro x accumulation x dp. Everything is checked here, before any process group or tensor exists, so a bad
layout is a clear error instead of a hang inside a collective.

``python -m megamythos.training.layout --preset 1t --nodes 128 --gpus-per-node 8 --tp 8 --ep 128 --dry-run``
counts the parameters analytically, validates the layout, prints the memory plan, the step-time model
(:mod:`megamythos.step_model`: compute, bytes and time of every collective per link class, step time, tokens/s,
MFU, and the figures it rests on) and the exact launch command.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from megamythos.config import ModelConfig, get_preset
from megamythos.errors import ArgumentParser, UserError
from megamythos.params import count, memory_plan

logger = logging.getLogger(__name__)


class LayoutError(UserError, ValueError):
    """The parallel layout cannot run this model on this many processes."""


@dataclass(frozen=True)
class ParallelLayout:
    """Sizes of one run. ``dp`` and ``grad_accum`` are derived; construction validates the arithmetic."""

    world_size: int
    tp: int = 1
    ep: int = 1
    zero: int = 3
    micro_batch_size: int = 1
    global_batch_size: int = 1

    def __post_init__(self) -> None:
        for name in ("world_size", "tp", "ep", "micro_batch_size", "global_batch_size"):
            if getattr(self, name) < 1:
                raise LayoutError(f"{name}={getattr(self, name)} must be >= 1")
        if self.zero not in (0, 1, 2, 3):
            raise LayoutError(f"ZeRO stage {self.zero} does not exist; choose 0, 1, 2 or 3")
        if self.world_size % self.tp:
            raise LayoutError(f"world size {self.world_size} is not divisible by tensor-parallel size tp={self.tp}")
        if self.world_size % self.ep:
            raise LayoutError(f"world size {self.world_size} is not divisible by expert-parallel size ep={self.ep} "
                              "(AutoEP folds expert groups onto the data x tensor parallel ranks)")
        if self.global_batch_size % (self.micro_batch_size * self.dp):
            raise LayoutError(f"global batch {self.global_batch_size} is not divisible by micro batch "
                              f"{self.micro_batch_size} x data-parallel size {self.dp}")

    @property
    def dp(self) -> int:
        return self.world_size // self.tp

    @property
    def grad_accum(self) -> int:
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


GIB_PER_GB = 1e9 / 2 ** 30


def step_prediction(config: ModelConfig, layout: ParallelLayout, args: argparse.Namespace,
                    ds_config: dict[str, Any]) -> dict[str, Any]:
    """The step-time model for this layout (figures and the table as lines) and what it rests on."""
    from megamythos.step_model import Cluster, Layout, format_plan, step_plan

    zero = ds_config.get("zero_optimization", {})
    model_layout = Layout(gpus=layout.world_size, tp=layout.tp, ep=layout.ep, zero=layout.zero,
                          micro_batch=layout.micro_batch_size, grad_accum=layout.grad_accum,
                          seq_len=args.seq_length, hpz=int(zero.get("zero_hpz_partition_size", 1)),
                          qwz=bool(zero.get("zero_quantized_weights")), qgz=bool(zero.get("zero_quantized_gradients")))
    cluster = Cluster(gpus_per_node=args.gpus_per_node, nvlink_gbs=args.nvlink_gbs, ib_gbs=args.ib_gbs,
                      peak_tflops=args.peak_tflops, mfu=args.mfu)
    plan = step_plan(config, model_layout, cluster)
    return {"step_seconds": plan.step_seconds, "tokens_per_second": plan.tokens_per_second, "mfu": plan.mfu,
            "compute_seconds": plan.compute_seconds, "table": format_plan(plan).splitlines(),
            "rests_on": [
                f"matmul MFU {cluster.mfu:g} of {cluster.peak_tflops:g} TFLOP/s per GPU (--mfu, --peak-tflops)",
                f"NVLink {cluster.nvlink_gbs:g} GB/s and InfiniBand {cluster.ib_gbs:g} GB/s per GPU, ring "
                "collectives (--nvlink-gbs, --ib-gbs)",
                f"T = mean_loops = {config.mean_loops}, changing every step: ZeRO-3 fetches per use (no prefetch) "
                "except the recurrent core, replicated and gathered once per step (--recurrent-zero 2)",
                "TP all-reduces, EP all-to-alls (balanced routing) and on-demand ZeRO gathers are exposed; "
                "gradient reduce-scatters overlap with backward",
                "byte counts checked against the trainer's comm/ accounting on 2 CPU ranks "
                "(tests/test_step_model.py, within 10%); times are not measured"]}


def load_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def parameter_summary(config: ModelConfig) -> dict[str, int]:
    """Total, routed-expert and per-token-active parameters (:func:`megamythos.params.count`, analytic)."""
    report = count(config)
    return {"total": report.total, "routed_experts": report.routed_experts,
            "active_per_token": report.active_per_token}


def launch_command(args: argparse.Namespace, layout: ParallelLayout) -> list[str]:
    """The exact multi-node command line for this layout."""
    return ["deepspeed", "--hostfile", args.hostfile, "--num_nodes", str(args.nodes), "--num_gpus",
            str(args.gpus_per_node), "--module", "megamythos.training.pretrain", "--preset", args.preset,
            "--ds-config", args.ds_config, "--tp", str(layout.tp), "--ep", str(layout.ep), "--zero", str(layout.zero),
            "--micro-batch-size", str(layout.micro_batch_size), "--global-batch-size", str(layout.global_batch_size),
            "--seq-length", str(args.seq_length), "--loop-checkpoint-segment", str(args.loop_checkpoint_segment),
            "--bf16", *args.train_args]


def dry_run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate a cluster layout for a preset without any accelerator; print and return the plan."""
    p = ArgumentParser(prog="python -m megamythos.training.layout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="1t")
    p.add_argument("--nodes", type=int, default=128)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--tp", type=int, default=8)
    p.add_argument("--ep", type=int, default=128)
    p.add_argument("--zero", type=int, default=3)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--global-batch-size", type=int, default=1024)
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--loop-checkpoint-segment", type=int, default=0,
                   help="two-level loop checkpointing (0: sqrt-sized segments), passed to the trainer")
    p.add_argument("--gpu-memory-gb", type=float, nargs="*", default=[80.0, 141.0])
    p.add_argument("--mfu", type=float, default=0.4, help="step model: achieved matmul fraction of peak")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="step model: per GPU (H100 bf16)")
    p.add_argument("--nvlink-gbs", type=float, default=450.0, help="step model: GB/s per GPU")
    p.add_argument("--ib-gbs", type=float, default=50.0, help="step model: GB/s per GPU (400 Gb/s)")
    p.add_argument("--ds-config", default="ds_configs/1t.json")
    p.add_argument("--hostfile", default="hostfile")
    p.add_argument("--dry-run", action="store_true", help="accepted for symmetry with the launcher; always dry")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="further pretrain flags after --")
    args = p.parse_args(argv)
    args.train_args = [a for a in args.train_args if a != "--"]
    config = get_preset(args.preset, max_seq_len=max(get_preset(args.preset).max_seq_len, args.seq_length),
                        checkpoint_loops=True, loop_checkpoint_segment=args.loop_checkpoint_segment)
    layout = ParallelLayout(world_size=args.nodes * args.gpus_per_node, tp=args.tp, ep=args.ep, zero=args.zero,
                            micro_batch_size=args.micro_batch_size, global_batch_size=args.global_batch_size)
    layout.check_model(config)
    plan: dict[str, Any] = {
        "preset": args.preset,
        "layout": {**asdict(layout), "dp": layout.dp, "grad_accum": layout.grad_accum,
                   "experts_per_ep_rank": config.n_experts // layout.ep, "heads_per_tp_rank": config.n_heads // layout.tp},
        "parameters": parameter_summary(config),
        "memory": asdict(memory_plan(config, gpus=layout.world_size, tp=layout.tp, ep=layout.ep, zero=layout.zero,
                                     micro_batch=layout.micro_batch_size, seq_len=args.seq_length,
                                     replicated_core=True)),
        "step_model": step_prediction(config, layout, args, load_json(args.ds_config)),
        "command": shlex.join(launch_command(args, layout)),
    }
    need = plan["memory"]["total_gib"]
    plan["fits"] = {f"{gb:g} GB": need <= gb * GIB_PER_GB for gb in args.gpu_memory_gb}
    print(json.dumps(plan, indent=2, default=str))
    if not all(plan["fits"].values()):
        raise LayoutError(f"the plan needs {plan['memory']['total_gib']:.1f} GiB per GPU: does not fit "
                          f"{[k for k, ok in plan['fits'].items() if not ok]}; raise --ep/--tp or add nodes")
    return plan


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dry_run(sys.argv[1:])
    except (LayoutError, ValueError) as err:
        sys.exit(f"layout error: {err}")
