"""Command line for the analytic model of a configuration: parameter counts, FLOPs, KV cache, the per-GPU memory
plan of a layout and, with ``--plan``, the step-time model (compute, collectives per link class, step time).

    python -m megamythos.plan --preset 1t [--json] [--gpus 1024 --tp 8 --ep 128 --zero 3 [--plan ...]]

Counting lives in :mod:`megamythos.params`, the step-time model in :mod:`megamythos.step_model`.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from megamythos.config import PRESETS, ModelConfig, get_preset
from megamythos.errors import ArgumentParser
from megamythos.params import count, memory_plan
from megamythos.step_model import Cluster, Layout, format_plan, step_plan


def _fmt(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--config", help="model config JSON (overrides --preset)")
    parser.add_argument("--seq-length", type=int, default=None)
    parser.add_argument("--loops", type=int, default=None, help="loop count for effective params / FLOPs")
    parser.add_argument("--gpus", type=int, default=None, help="also print the per-GPU memory plan")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--zero", type=int, default=3, choices=[0, 1, 2, 3])
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--loop-checkpoint-segment", type=int, default=None,
                        help="override the config's (0: two-level checkpointing with sqrt-sized segments)")
    parser.add_argument("--json", action="store_true")
    step = parser.add_argument_group("step model (--plan, with --gpus)")
    step.add_argument("--plan", action="store_true", help="also predict compute, collectives and step time")
    step.add_argument("--grad-accum", type=int, default=1, help="micro-batches per rank and step")
    step.add_argument("--recurrent-zero", type=int, default=2, choices=[2, 3],
                      help="under ZeRO-3: 2 = recurrent core replicated (the trainer's default), 3 = partitioned")
    step.add_argument("--mfu", type=float, default=Cluster.mfu, help="achieved fraction of peak in the matmuls")
    step.add_argument("--peak-tflops", type=float, default=Cluster.peak_tflops, help="per GPU")
    step.add_argument("--gpus-per-node", type=int, default=Cluster.gpus_per_node)
    step.add_argument("--nvlink-gbs", type=float, default=Cluster.nvlink_gbs, help="GB/s per GPU")
    step.add_argument("--ib-gbs", type=float, default=Cluster.ib_gbs, help="GB/s per GPU (400 Gb/s = 50)")
    step.add_argument("--hpz", type=int, default=1, help="ZeRO++ zero_hpz_partition_size")
    step.add_argument("--qwz", action="store_true", help="ZeRO++ zero_quantized_weights")
    step.add_argument("--qgz", action="store_true", help="ZeRO++ zero_quantized_gradients")
    args = parser.parse_args(argv)
    config = ModelConfig.from_json(args.config) if args.config else get_preset(args.preset)
    if args.plan:  # as the trainer runs it: per-iteration activation checkpointing (its default)
        config = config.replace(checkpoint_loops=True)
    if args.loop_checkpoint_segment is not None:
        config = config.replace(loop_checkpoint_segment=args.loop_checkpoint_segment)
    report = asdict(count(config, args.seq_length, args.loops))
    if args.gpus:
        report["memory_plan"] = asdict(memory_plan(config, args.gpus, args.tp, args.ep, args.zero,
                                                   args.micro_batch_size, args.seq_length,
                                                   replicated_core=args.recurrent_zero == 2))
    prediction = None
    if args.gpus and args.plan:
        layout = Layout(gpus=args.gpus, tp=args.tp, ep=args.ep, zero=args.zero, micro_batch=args.micro_batch_size,
                        grad_accum=args.grad_accum, seq_len=args.seq_length or min(config.max_seq_len, 4096),
                        recurrent_zero=args.recurrent_zero, hpz=args.hpz, qwz=args.qwz, qgz=args.qgz)
        cluster = Cluster(gpus_per_node=args.gpus_per_node, nvlink_gbs=args.nvlink_gbs, ib_gbs=args.ib_gbs,
                          peak_tflops=args.peak_tflops, mfu=args.mfu)
        prediction = step_plan(config, layout, cluster, args.loops)
        report["step_plan"] = asdict(prediction)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    name = args.config or args.preset
    print(f"{name}: total {_fmt(report['total'])} params "
          f"(embeddings {_fmt(report['embedding'])}, prelude+coda {_fmt(report['prelude_coda'])}, "
          f"recurrent {_fmt(report['recurrent'])} of which routed experts {_fmt(report['routed_experts'])})")
    print(f"  active per token      {_fmt(report['active_per_token'])}")
    print(f"  effective per token   {_fmt(report['effective_per_token'])}  (recurrent block x loops)")
    print(f"  training FLOPs/token  {_fmt(report['train_flops_per_token'])}  "
          f"(+{_fmt(report['recompute_flops_per_token'])} recompute with per-loop checkpointing)")
    print(f"  KV cache per token    {report['kv_cache_bytes_per_token']} bytes (bf16)")
    if args.gpus:
        plan = report["memory_plan"]
        print(f"  memory per GPU        {plan['total_gib']:.1f} GiB on {plan['gpus']} GPUs "
              f"(tp {plan['tp']}, ep {plan['ep']}, dp {plan['dp']}, ZeRO-{plan['zero']}): "
              f"weights {plan['weights_gib']:.1f}, grads {plan['grads_gib']:.1f}, "
              f"optimizer {plan['optimizer_gib']:.1f}, gathered {plan['gathered_working_gib']:.1f}, "
              f"activations {plan['activations_gib']:.1f}")
    if prediction is not None:
        print(format_plan(prediction))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
