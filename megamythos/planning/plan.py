"""Plan a run before renting it: parameter counts, FLOPs and KV cache of a configuration; with ``--gpus`` the
per-GPU memory plan of a layout (checked against the model and against ``--gpu-memory-gb``); with ``--plan``
the step-time model (compute, collectives per link class, step time, tokens/s, MFU); with ``--hostfile`` the
exact multi-node launch command.

    python -m megamythos.planning.plan --preset 1t [--json]
    python -m megamythos.planning.plan --preset 1t --gpus 1024 --ep 256 --zero 3 --global-batch-size 1024 --plan
    python -m megamythos.planning.plan --preset 1t --gpus 1024 --ep 256 --global-batch-size 1024 \\
        --ds-config ds_configs/1t.json --plan --hostfile hostfile -- --data-path 1.0 /data/a_text_document

Counting lives in :mod:`megamythos.model.params`, memory in :mod:`megamythos.planning.memory`, the layout in
:mod:`megamythos.planning.layout`, the step-time model in :mod:`megamythos.planning.step_model`.
``launchers/pretrain_1t.sh --dry-run`` runs this for the 1t layout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from megamythos.errors import ArgumentParser, number, path_text, read_json_object, run_cli
from megamythos.model.config import DEFAULT_PRESET, PRESETS, ConfigError, ModelConfig, field_overrides, get_preset
from megamythos.model.params import BYTES, count
from megamythos.planning.layout import (
    ZEROPP_KEYS,
    LayoutError,
    ParallelLayout,
    bf16_enabled,
    check_compile,
    check_folded_expert_norm,
    check_layout_keys,
    check_precision,
    reduces_in_fp32,
    template_layout,
    zero_buffers,
)
from megamythos.planning.memory import GIB, check_startup_memory, memory_plan, startup_memory
from megamythos.planning.step_model import PEAK_TFLOPS, Cluster, StepSettings, format_plan, step_plan
from megamythos.runtime.remote_words import check_remote_words

logger = logging.getLogger(__name__)

GIB_PER_GB = 1e9 / GIB
# what to do about a --config file that cannot be planned
CONFIG_REMEDY = ("give --config a ModelConfig JSON object (ModelConfig.to_json writes one, as a checkpoint tag's "
                 "model_config.json), or a --preset")
TRAINER = "megamythos.training.launch"  # each rank: launchers/pretrain.sh's rank start-up, then the trainer


def _fmt(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


# The argument groups whose flags act only with --gpus.
WITH_GPUS = ("layout (with --gpus)", "step model (--plan, with --gpus)", "launch command (with --gpus)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m megamythos.planning.plan", description=__doc__)
    positive_int, positive_float = number(int, 1), number(float, 0, low_open=True)  # one error line
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                        help=f"model size (default {DEFAULT_PRESET})")
    parser.add_argument("--config", type=path_text, help="model config JSON (overrides --preset)")
    parser.add_argument("--seq-length", type=positive_int, default=None, help="default: min(max_seq_len, 4096)")
    parser.add_argument("--loops", type=positive_int, default=None,
                        help="loop count for effective params / FLOPs (default: the mean; with --plan at most "
                             "max_loops, the most a training step runs)")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    lay = parser.add_argument_group(WITH_GPUS[0])
    lay.add_argument("--gpus", type=positive_int, default=None, help="world size; also prints the per-GPU memory plan")
    # each layout setting not given is --ds-config's, as the trainer takes it, else the default named here
    lay.add_argument("--tp", type=positive_int, default=None, help="tensor-parallel size (AutoTP; default 1)")
    lay.add_argument("--ep", type=positive_int, default=None, help="expert-parallel size (AutoEP; default 1)")
    lay.add_argument("--zero", type=int, default=None, choices=[0, 1, 2, 3],
                     help=f"ZeRO stage (default {ParallelLayout.zero}; with --ds-config, its stage, else 0)")
    lay.add_argument("--micro-batch-size", type=positive_int, default=None,
                     help="sequences per rank and forward (default 1)")
    batch = lay.add_mutually_exclusive_group()
    batch.add_argument("--grad-accum", type=positive_int, default=None,
                       help="micro-batches per rank and step (default 1)")
    batch.add_argument("--global-batch-size", type=positive_int, default=None, help="or: samples per optimizer step")
    lay.add_argument("--no-replicate-core", dest="replicate_core", action="store_false", default=None,
                     help="under ZeRO-3: partition the recurrent core too (the trainer's --no-replicate-core; "
                          "default: replicated, unless --ds-config makes the blocks leaf modules)")
    lay.add_argument("--loop-checkpoint-segment", type=number(int, 0), default=None,
                     help="override the config's (0: two-level checkpointing with sqrt-sized segments)")
    lay.add_argument("--ds-config", type=path_text,
                     help="the DeepSpeed JSON the trainer would read: the layout settings not given as flags (ZeRO "
                          "stage, tp, ep, batch sizes, leaf modules), ZeRO++ options and ZeRO's buffer sizes")
    lay.add_argument("--hpz", type=positive_int, default=None,
                     help="ZeRO++ zero_hpz_partition_size (default: ds-config, 1)")
    lay.add_argument("--qwz", action="store_true", default=None, help="ZeRO++ zero_quantized_weights")
    lay.add_argument("--qgz", action="store_true", default=None, help="ZeRO++ zero_quantized_gradients")
    lay.add_argument("--gpu-memory-gb", type=positive_float, nargs="+", default=[],
                     help="exit 2 when the memory plan, or a rank's share of the model at start-up (moved to the "
                          "GPU whole before ZeRO partitions it), does not fit each of these GPU sizes")
    lay.add_argument("--host-memory-gb", type=positive_float, default=None,
                     help="host memory per node: exit 2 when --gpus-per-node ranks, each building the whole model "
                          "in fp32 at start-up, do not fit it")
    step = parser.add_argument_group(WITH_GPUS[1])
    step.add_argument("--plan", action="store_true", help="also predict compute, collectives and step time")
    step.add_argument("--mfu", type=number(float, 0, 1, low_open=True), default=Cluster.mfu,
                      help="achieved fraction of peak in the matmuls")
    step.add_argument("--peak-tflops", type=positive_float, default=None,
                      help="per GPU (default: an H100 SXM's dense peak in the plan's precision, from NVIDIA's "
                           f"datasheet: {PEAK_TFLOPS['bf16']:g} in bf16, {PEAK_TFLOPS['fp32']:g} in fp32, whose "
                           "matmuls the trainer runs in FP32, not TF32)")
    step.add_argument("--gpus-per-node", type=positive_int, default=Cluster.gpus_per_node, help="GPUs sharing NVLink")
    step.add_argument("--nvlink-gbs", type=positive_float, default=Cluster.nvlink_gbs, help="GB/s per GPU")
    step.add_argument("--ib-gbs", type=positive_float, default=Cluster.ib_gbs, help="GB/s per GPU (400 Gb/s = 50)")
    run = parser.add_argument_group(WITH_GPUS[2])
    run.add_argument("--hostfile", type=path_text, help="print the exact multi-node deepspeed command for this layout")
    run.add_argument("train_args", nargs=argparse.REMAINDER, help="further trainer flags after --")
    return parser


def flags_needing_gpus(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The flags of the :data:`WITH_GPUS` groups that ``args`` gives a value other than their default."""
    given = []
    for group in parser._action_groups:
        if group.title not in WITH_GPUS:
            continue
        for action in group._group_actions:
            value = getattr(args, action.dest)
            if action.dest != "gpus" and value != action.default and value != []:  # train_args: [] when absent
                given.append(action.option_strings[0] if action.option_strings else "trainer flags after --")
    return given


def ds_template(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--ds-config`` JSON object ({} without one), its layout settings checked
    (:func:`~megamythos.planning.layout.check_layout_keys`)."""
    if not args.ds_config:
        return {}
    template = read_json_object(args.ds_config, LayoutError, "give --ds-config a DeepSpeed JSON file (ds_configs/)")
    check_layout_keys(template, args.ds_config)
    return template


def resolve_layout(args: argparse.Namespace, template: dict[str, Any]) -> ParallelLayout:
    """The layout of ``--gpus`` and friends, each setting not given taken from ``template`` (:func:`ds_template`)
    as the trainer takes it (:func:`~megamythos.planning.layout.template_layout`; without a template, ZeRO-3; the
    trainer's ``--compile`` after ``--`` makes ZeRO-3's blocks leaf modules); ZeRO++ options from the flags, then
    the template, then off."""
    zero = args.zero if args.zero is not None or args.ds_config else ParallelLayout.zero
    zeropp = {key: getattr(args, flag) for flag, key in ZEROPP_KEYS.items() if getattr(args, flag) is not None}
    template = {**template, "zero_optimization": {**template.get("zero_optimization", {}), **zeropp}}
    return template_layout(template, args.ds_config, args.gpus, tp=args.tp, ep=args.ep, zero=zero,
                           micro_batch_size=args.micro_batch_size, global_batch_size=args.global_batch_size,
                           grad_accum=args.grad_accum, replicate_core=args.replicate_core,
                           compiled="--compile" in args.train_args)


def trains_in_bf16(args: argparse.Namespace, template: dict[str, Any]) -> bool:
    """Whether the planned run trains in bf16, as the trainer decides it
    (:func:`~megamythos.planning.layout.bf16_enabled`): with ``--hostfile`` the printed command's ``--bf16``; else
    the trainer's last ``--bf16`` or ``--no-bf16`` after ``--``, then ``template``'s ``bf16.enabled``; without
    ``--ds-config``, bf16 (as every template in ds_configs/ asks)."""
    given = [flag for flag in args.train_args if flag in ("--bf16", "--no-bf16")]
    flag = True if args.hostfile else given[-1] == "--bf16" if given else None
    return bf16_enabled(template if args.ds_config else {"bf16": {"enabled": True}}, flag)


def hostfile_slots(path: str) -> dict[str, int] | None:
    """The slots of each host of DeepSpeed hostfile ``path`` (``HOST slots=N`` per line, # comments) by host name,
    in file order; None when it does not exist (yet: a dry run plans before the hostfile is written). A malformed
    line or a host listed twice raises :class:`LayoutError` (DeepSpeed's runner refuses both with a traceback)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise LayoutError(f"--hostfile {path}: cannot read it ({err})") from err
    slots: dict[str, int] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"(\S+)\s+slots=(\d+)", line)  # as DeepSpeed parses it
            if match is None:
                raise LayoutError(f"--hostfile {path}: {line!r} is not 'HOST slots=N'")
            if match[1] in slots:
                raise LayoutError(f"--hostfile {path}: host {match[1]} is listed twice; give each host one line")
            slots[match[1]] = int(match[2])
    return slots


# the model fields this plan decides (the command sets them): a trainer --override of one after -- would train another
PLANNED_FIELDS = {"max_seq_len", "checkpoint_loops", "loop_checkpoint_segment", "checkpoint_dense_blocks"}


def trainer_model_changes(train_args: list[str]) -> dict[str, Any]:
    """The model fields the trainer flags after ``--`` set: each ``--override FIELD=VALUE`` (also the one-word
    ``--override=FIELD=VALUE``) and the trainer's field flags ``--mean-loops`` / ``--backprop-loops``, read as the
    trainer reads them (:func:`field_overrides`: the last ``--override`` of a field wins, a flag and an override
    of two values are refused; no prefix of a flag is the flag). The plan is made of the model with them, the model
    the command trains."""
    parser = ArgumentParser(prog="trainer flags after --", add_help=False)  # one error line, no prefix read
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--mean-loops", type=number(int, 1))  # the trainer's types
    parser.add_argument("--backprop-loops", type=number(int, 0))
    known, _ = parser.parse_known_args([a for a in train_args if a != "--"])
    return field_overrides(known.override, {"mean_loops": known.mean_loops, "backprop_loops": known.backprop_loops})


def check_launchable(args: argparse.Namespace) -> None:
    """Refuse a ``--hostfile`` plan whose printed command would train another model or layout than the plan: the
    trainer takes a ``--preset`` (not ``--config``), reads ZeRO++ from its ds_config (not ``--hpz/--qwz/--qgz``)
    and, run directly, defaults to the CPU template; ``deepspeed --num_gpus`` is per node."""
    if args.config:
        raise LayoutError("--hostfile with --config: the printed command trains a --preset; plan a --preset and "
                          "pass the config's changes as trainer flags after -- (--override KEY=VALUE)")
    given = [f"--{k}" for k in ("hpz", "qwz", "qgz") if getattr(args, k) is not None]
    if given:
        raise LayoutError(f"{', '.join(given)} with --hostfile: the trainer reads ZeRO++ from its ds_config; put "
                          "the setting in the --ds-config file instead (as ds_configs/1t.json does)")
    if not args.ds_config:
        raise LayoutError("--hostfile needs --ds-config (ds_configs/multi-node.json, or ds_configs/1t.json for the "
                          "1t layout): the printed command and this plan must read the same template")
    planned = {"--preset", "--config", "--ds-config", "--tp", "--ep", "--zero", "--micro-batch-size",
               "--global-batch-size", "--seq-length", "--replicate-core", "--no-replicate-core", "--checkpoint-loops",
               "--no-checkpoint-loops", "--loop-checkpoint-segment", "--bf16", "--no-bf16"}
    overridden = [a for a in args.train_args if a.split("=")[0] in planned
                  or a.removeprefix("--override=").split("=")[0] in PLANNED_FIELDS]  # --override F=V, --override=F=V
    if overridden:
        raise LayoutError(f"trainer flags after -- ({', '.join(overridden)}) would change what this plan checked: "
                          "give the layout, batch and sequence settings as the planner's own flags")
    hosts = hostfile_slots(args.hostfile)
    slots = None if hosts is None else list(hosts.values())
    nodes = max(1, args.gpus // args.gpus_per_node)
    if slots is not None and (len(slots) < nodes or min(slots[:nodes]) < min(args.gpus, args.gpus_per_node)):
        raise LayoutError(f"--hostfile {args.hostfile} lists {len(slots)} host(s) with slots {slots}, but the plan "
                          f"needs {nodes} host(s) of {min(args.gpus, args.gpus_per_node)} slots: deepspeed would start "
                          "other ranks than planned (a smaller world, more accumulation); fix the hostfile or --gpus")
    if args.gpus > args.gpus_per_node and args.gpus % args.gpus_per_node:
        raise LayoutError(f"--gpus {args.gpus} is not a multiple of --gpus-per-node {args.gpus_per_node}: deepspeed "
                          "starts the same number of processes on every node")


def launch_command(args: argparse.Namespace, layout: ParallelLayout, seq_len: int) -> str:
    """The deepspeed command line that trains ``args.preset`` on this layout (:func:`check_launchable` first),
    with ``--override max_seq_len`` where ``seq_len`` is longer than the preset's."""
    nodes = max(1, layout.world_size // args.gpus_per_node)
    longer = seq_len > get_preset(args.preset).max_seq_len
    cmd = ["deepspeed", "--hostfile", args.hostfile, "--num_nodes", str(nodes), "--num_gpus",
           str(min(args.gpus_per_node, layout.world_size)), "--module", TRAINER, "--preset", args.preset,
           *(["--override", f"max_seq_len={seq_len}"] if longer else []),
           "--ds-config", args.ds_config, "--tp", str(layout.tp), "--ep",
           str(layout.ep), "--zero", str(layout.zero), "--micro-batch-size", str(layout.micro_batch_size),
           "--global-batch-size", str(layout.global_batch_size), "--seq-length", str(seq_len),
           *([] if layout.replicate_core else ["--no-replicate-core"]),
           "--checkpoint-loops", *(["--loop-checkpoint-segment", str(args.loop_checkpoint_segment)]
                                   if args.loop_checkpoint_segment is not None else []),
           "--override", "checkpoint_dense_blocks=true",
           "--bf16", *[a for a in args.train_args if a != "--"]]
    if nodes > 1:  # pdsh hands every word after the module to each node's shell
        check_remote_words(cmd[cmd.index(TRAINER) + 1:], os.getcwd())
    return shlex.join(cmd)


def plan(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, print the report and return it; a layout that does not fit raises :class:`LayoutError`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stray = flags_needing_gpus(parser, args) if args.gpus is None else []
    if stray:
        parser.error(f"{', '.join(stray)}: only with a layout; add --gpus N (the world size)")
    if args.hostfile:
        check_launchable(args)
    config = ModelConfig.from_json(args.config, CONFIG_REMEDY) if args.config else get_preset(args.preset)
    if changes := trainer_model_changes(args.train_args):  # what the trainer flags after -- make of the model
        config = config.replace(**changes)
        logger.info("planned with the model fields the trainer flags after -- set: %s",
                    ", ".join(f"{k}={v}" for k, v in changes.items()))
    if why := config.training_refusal():  # the trainer's line: a plan of it would plan nothing it can run
        raise ConfigError(why)
    seq_len = args.seq_length or config.training_seq_len
    if seq_len > config.max_seq_len:
        logger.warning("--seq-length %d is longer than the model's max_seq_len %d: planned with max_seq_len %d "
                       "(the trainer needs --override max_seq_len=%d)", seq_len, config.max_seq_len, seq_len, seq_len)
        config = config.replace(max_seq_len=seq_len)
    if args.loops and args.loops > config.resolved_max_loops:
        deeper = (f"--loops {args.loops} is above the model's max_loops {config.resolved_max_loops}, where training "
                  "clips each step's sampled loop count")
        if args.plan:  # the step model times a training step
            raise LayoutError(f"{deeper}: no training step runs {args.loops} loops; give --loops 1 to "
                              f"{config.resolved_max_loops} with --plan (evaluate and generate may loop deeper: "
                              "their counts are planned without --plan)")
        logger.warning("%s: the training FLOPs/token are of a step the trainer never runs; the other counts are "
                       "those of evaluate or generate at %d loops", deeper, args.loops)
    # activation checkpointing of every iteration and prelude/coda block, as the printed command asks, and as the
    # trainer does by default where gradients flow through every loop (TrainArgs.model_overrides)
    if args.plan or args.hostfile or config.backprop_loops == 0 or args.loop_checkpoint_segment is not None:
        config = config.replace(checkpoint_loops=True, checkpoint_dense_blocks=True)
    if args.loop_checkpoint_segment is not None:
        config = config.replace(loop_checkpoint_segment=args.loop_checkpoint_segment)
    report: dict[str, Any] = asdict(count(config, seq_len, args.loops))
    prediction = None
    if args.gpus:
        template = ds_template(args)
        zero = template.get("zero_optimization", {})
        layout = resolve_layout(args, template)
        layout.check_model(config)
        bf16 = trains_in_bf16(args, template)
        check_precision(layout, bf16, fp32_allowed=not args.hostfile)  # the trainer's refusals
        check_folded_expert_norm(layout)
        check_compile(layout, bf16, "--compile" in args.train_args)
        dtype = "bf16" if bf16 else "fp32"
        report["layout"] = {**asdict(layout), "dp": layout.dp, "grad_accum": layout.grad_accum, "dtype": dtype,
                            "experts_per_ep_rank": config.n_experts // layout.ep,
                            "heads_per_tp_rank": config.n_heads // layout.tp}
        report["memory_plan"] = asdict(memory_plan(config, layout.world_size, layout.tp, layout.ep, layout.zero,
                                                   layout.micro_batch_size, seq_len, dtype,
                                                   replicated_core=layout.replicate_core,
                                                   grad_accum=layout.grad_accum,
                                                   buffers=zero_buffers(zero, args.ds_config),
                                                   fp32_reduce=reduces_in_fp32(layout, bf16)))
        peak_gib = max(report["memory_plan"]["total_gib"], report["memory_plan"]["startup_device_gib"])
        report["fits"] = {f"{gb:g} GB": peak_gib <= gb * GIB_PER_GB for gb in args.gpu_memory_gb}
        ranks_on_host = min(args.gpus_per_node, layout.world_size)
        report["startup"] = {**asdict(startup_memory(config, layout.tp, layout.ep, dtype)),
                             "ranks_per_node": ranks_on_host}
        if args.plan:
            if layout.hpz > args.gpus_per_node:
                raise LayoutError(f"ZeRO++ hpz={layout.hpz} is larger than --gpus-per-node {args.gpus_per_node}: "
                                  "the step model times hpZ's secondary copy on NVLink, within a node; use an hpz "
                                  "of at most the node size (usually the node size itself)")
            cluster = Cluster(gpus_per_node=args.gpus_per_node, nvlink_gbs=args.nvlink_gbs, ib_gbs=args.ib_gbs,
                              peak_tflops=args.peak_tflops or PEAK_TFLOPS[dtype], mfu=args.mfu)
            settings = StepSettings(seq_len=seq_len, weight_bytes=BYTES[dtype], act_bytes=BYTES[dtype])
            prediction = step_plan(config, layout, settings, cluster, args.loops)
            report["step_plan"] = asdict(prediction)
        if args.hostfile:
            report["command"] = launch_command(args, layout, seq_len)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(args.config or args.preset, report, prediction)
    if args.host_memory_gb is not None:  # the model is built on the host before anything reaches a GPU
        check_startup_memory(config, layout.tp, layout.ep, report["startup"]["ranks_per_node"],
                             int(args.host_memory_gb * 1e9), None,
                             host=f"a node (--host-memory-gb {args.host_memory_gb:g})")
    too_small = [size for size, ok in report.get("fits", {}).items() if not ok]
    if too_small:
        mem = report["memory_plan"]
        if mem["startup_device_gib"] > mem["total_gib"]:
            raise LayoutError(f"the plan needs {mem['startup_device_gib']:.1f} GiB per GPU at start-up (each rank's "
                              "share of the model moved to the GPU whole, before ZeRO partitions it; "
                              f"{mem['total_gib']:.1f} GiB once partitioned): does not fit {too_small}; the trainer "
                              "does not build a model sharded yet (deepspeed.zero.Init, expert-parallel "
                              "construction): raise --ep/--tp or train a smaller model")
        raise LayoutError(f"the plan needs {mem['total_gib']:.1f} GiB per GPU: does not fit {too_small}; raise "
                          "--ep/--tp or add GPUs")
    return report


def print_report(name: str, report: dict[str, Any], prediction: Any) -> None:
    print(f"{name}: total {_fmt(report['total'])} params "
          f"(embeddings {_fmt(report['embedding'])}, prelude+coda {_fmt(report['prelude_coda'])}, "
          f"recurrent {_fmt(report['recurrent'])} of which routed experts {_fmt(report['routed_experts'])})")
    print(f"  active per token      {_fmt(report['active_per_token'])}")
    print(f"  effective per token   {_fmt(report['effective_per_token'])}  (recurrent block x loops)")
    print(f"  training FLOPs/token  {_fmt(report['train_flops_per_token'])}  "
          f"(+{_fmt(report['recompute_flops_per_token'])} recompute with per-loop checkpointing)")
    print(f"  KV cache per token    {report['kv_cache_bytes_per_token']} bytes (bf16)")
    if "memory_plan" in report:
        mem = report["memory_plan"]
        print(f"  memory per GPU        {mem['total_gib']:.1f} GiB on {mem['gpus']} GPUs "
              f"(tp {mem['tp']}, ep {mem['ep']}, dp {mem['dp']}, ZeRO-{mem['zero']}, {report['layout']['dtype']}): "
              f"weights {mem['weights_gib']:.1f}, grads {mem['grads_gib']:.1f}, "
              f"optimizer {mem['optimizer_gib']:.1f}, gathered {mem['gathered_working_gib']:.1f}, "
              f"reduce bucket {mem['reduce_bucket_gib']:.1f} (+{mem['reduce_copy_gib']:.1f} while it reduces), "
              f"activations {mem['activations_gib']:.1f}")
        start = report["startup"]
        print(f"  start-up per rank     {start['host_gib']:.1f} GiB in host memory (the whole model in fp32; "
              f"{start['ranks_per_node']} ranks per node: {start['ranks_per_node'] * start['host_gib']:.1f} GiB), "
              f"{start['device_gib']:.1f} GiB on the GPU before ZeRO partitions it")
        for size, ok in report["fits"].items():
            print(f"  fits {size:<16} {'yes' if ok else 'NO'}")
    if prediction is not None:
        print(format_plan(prediction))
    if "command" in report:
        print(f"  command: {report['command']}")


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        plan(argv)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
