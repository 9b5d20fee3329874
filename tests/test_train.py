"""Training pieces that need no process group: arguments, layout, ds_config, schedules, guards, checkpoint
bookkeeping, AutoTP patterns against the real model, the 1t dry run, and bad inputs rejected before training; one
DeepSpeed engine in a gloo group of one (the step the trainer discards)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from megamythos.checkpoint.checksums import CHECKSUMS_FILE
from megamythos.checkpoint.export import main as export_main
from megamythos.checkpoint.files import CheckpointError, read_latest, write_atomic
from megamythos.checkpoint.reader import load_checkpoint_weights
from megamythos.model.config import get_preset
from megamythos.model.lm import MythosLM
from megamythos.parallel import MOE_LAYER_PATTERN, TP_COLUMN_PATTERNS, TP_ROW_PATTERNS
from megamythos.planning.layout import LayoutError, ParallelLayout
from megamythos.training.arguments import ArgumentError, TrainArgs, parse_args
from megamythos.training.checkpointing import (
    PRECISION_KEY,
    CheckpointManager,
    check_model_config,
    check_saved_precision,
    repair_universal_optimizer,
    saved_progress,
    training_change,
)
from megamythos.training.ds_config import accumulation_warning, build_ds_config, load_template, resolve_layout
from megamythos.training.monitor import measure_peak_tflops, memory_usage
from megamythos.training.optimizers import adamw_param_groups, kept_optimizer_settings
from megamythos.training.process_exit import EXIT_RECORDS_ENV
from megamythos.training.schedules import LRSchedule, ScheduleChangeError, resumed_schedule, schedule_changes
from megamythos.training.signals import LAUNCHER_MARKERS, GracefulExit, NonFiniteGuard, NonFiniteLossError
from tests.helpers import (
    REPO,
    TINY_OVERRIDES,
    corpus_prefix,
    dead_pid,
    launch_env,
    make_dataset,
    one_error_line,
    plain_zero3_template,
    run,
    run_single,
    tiny_args,
)

DS_CONFIGS = sorted((REPO / "ds_configs").glob("*.json"))


# ------------------------------------------------------------------------------------------------ arguments
def test_the_mfu_peak_is_measured_on_the_run_device_leaving_the_global_rng_alone():
    """The peak was a CPU matmul whatever the device (a GPU run's MFU far above 1), drawn from the global RNG that
    a run's noise initialisation reads (found 2026-12-06)."""
    torch.manual_seed(3)
    before = torch.get_rng_state()
    assert measure_peak_tflops(torch.float32, torch.device("cpu"), size=64, repeats=2) > 0
    assert torch.equal(torch.get_rng_state(), before)


def test_arguments_parse_overrides_and_reject_bad_values():
    args = parse_args(["--override", "dim=64", "--override", "loop_embedding=false", "--override", "score_func=sigmoid",
                       "--train-tokens", "4096", "--global-batch-size", "4", "--seq-length", "32", "--tp", "2"])
    assert args.overrides == {"dim": 64, "loop_embedding": False, "score_func": "sigmoid"}
    assert args.total_iters(global_batch_size=4) == 32  # 4096 tokens / (4 x 32)
    assert args.total_iters(global_batch_size=8, done=(20, 2560)) == 26  # resumed: 1536 tokens left / (8 x 32)
    assert args.tp == 2 and args.zero is None and args.bf16 is None  # None: keep the ds_config value
    for bad in (["--train-iters", "5", "--train-tokens", "9"], ["--override", "dim"], ["--zero", "4"],
                ["--min-lr", "1", "--lr", "0.1"], ["--split", "90,10,1,1"], ["--ds-config", "/nonexistent.json"],
                ["--exit-duration-in-mins", "-1"], ["--finetune"],
                ["--profile-step-start", "5", "--profile-step-end", "4"]):
        with pytest.raises(ArgumentError):
            parse_args(bad)


def test_model_flags_are_aliases_of_overrides_with_one_training_default():
    """Training checkpoints the loops where backprop runs through all of them (memory grows with the sampled
    depth), not with truncated backprop (the tiny preset's 2 loops); a flag or override wins either way."""
    default = parse_args([]).model_config()
    assert default.backprop_loops == 2 and default.checkpoint_loops is False
    assert default == get_preset("tiny")
    assert default.checkpoint_dense_blocks is False
    for flags in (["--backprop-loops", "0"], ["--override", "backprop_loops=0"], ["--preset", "small"]):
        assert parse_args(flags).model_config().checkpoint_loops is True, flags
        assert parse_args(flags).model_config().checkpoint_dense_blocks is True, flags  # the blocks too
    assert parse_args(["--preset", "small", "--override", "checkpoint_dense_blocks=false"]).model_config() == \
        get_preset("small").replace(checkpoint_loops=True)
    assert parse_args(["--checkpoint-loops"]).model_config().checkpoint_dense_blocks is False  # truncated backprop
    for flags in (["--checkpoint-loops"], ["--override", "checkpoint_loops=true"], ["--loop-checkpoint-segment", "0"]):
        assert parse_args(flags).model_config().checkpoint_loops is True, flags
    for flags in (["--no-checkpoint-loops", "--backprop-loops", "0"], ["--override", "checkpoint_loops=false",
                                                                      "--preset", "small"]):
        assert parse_args(flags).model_config().checkpoint_loops is False
    aliased = parse_args(["--mean-loops", "3", "--backprop-loops", "2", "--loop-checkpoint-segment", "0"])
    spelled = parse_args(["--override", "mean_loops=3", "--override", "backprop_loops=2",
                          "--override", "loop_checkpoint_segment=0"])
    assert aliased.model_config() == spelled.model_config()
    assert parse_args(["--mean-loops", "3", "--override", "mean_loops=3"]).model_config().mean_loops == 3
    with pytest.raises(ArgumentError, match="--mean-loops 3 and --override mean_loops=5 set the same field"):
        parse_args(["--mean-loops", "3", "--override", "mean_loops=5"])


def test_seq_length_beyond_max_seq_len_is_an_error_naming_the_fix():
    assert parse_args(["--seq-length", "512"]).model_config().max_seq_len == 512  # tiny's own
    with pytest.raises(ArgumentError, match=r"--seq-length 1024 exceeds the model's max_seq_len=512 .*"
                                            r"--override max_seq_len=1024"):
        parse_args(["--seq-length", "1024"]).model_config()
    assert parse_args(["--seq-length", "1024", "--override", "max_seq_len=1024"]).model_config().max_seq_len == 1024


# --------------------------------------------------------------------------------------------------- layout
def test_layout_arithmetic_and_folding():
    layout = ParallelLayout(world_size=8, tp=2, ep=4, zero=3, micro_batch_size=2, global_batch_size=32)
    assert (layout.dp, layout.grad_accum) == (4, 4)
    folded = ParallelLayout(world_size=2, tp=2, ep=2)  # tp x ep on the same two ranks
    assert folded.dp == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(world_size=3, tp=2), "not divisible by tensor-parallel size tp=2"),
    (dict(world_size=4, ep=3, global_batch_size=4), "not divisible by expert-parallel size ep=3"),
    (dict(world_size=4, micro_batch_size=3, global_batch_size=8), "global batch 8 is not divisible"),
])
def test_layout_rejects_bad_world(kwargs, message):
    with pytest.raises(LayoutError, match=message):
        ParallelLayout(**kwargs)


def test_layout_rejects_model_that_cannot_be_split():
    config = get_preset("tiny", **TINY_OVERRIDES)  # 4 experts, 4 heads
    with pytest.raises(LayoutError, match="n_experts=4 is not divisible by expert-parallel size ep=8"):
        ParallelLayout(world_size=8, ep=8, global_batch_size=8).check_model(config)
    with pytest.raises(LayoutError, match="n_heads=4 is not divisible by tensor-parallel size tp=8"):
        ParallelLayout(world_size=8, tp=8).check_model(config)
    ParallelLayout(world_size=4, tp=2, ep=4, global_batch_size=2).check_model(config)


# ------------------------------------------------------------------------------------------------ ds_config
@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.stem)
def test_every_ds_config_resolves_consistently(path):
    template = load_template(path)
    world = 1024 if path.stem == "1t" else 16
    args = parse_args(["--ds-config", str(path)])
    layout = resolve_layout(template, args, world)
    config = get_preset("1t" if path.stem == "1t" else "small")
    layout.check_model(config)
    ds = build_ds_config(template, args, layout, config)
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * layout.dp == \
        layout.global_batch_size
    assert "train_batch_size" not in ds  # DeepSpeed derives it (it counts TP replicas before AutoTP exists)
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == args.lr
    assert ds["zero_optimization"]["stage"] == layout.zero


def test_ds_config_command_line_wins_and_model_owns_parallel_sections():
    template = load_template(REPO / "ds_configs" / "single-node-8gpu.json")  # ZeRO-3, EP 8, bf16, 256 global
    args = parse_args(["--zero", "2", "--no-bf16", "--tp", "2", "--ep", "4", "--micro-batch-size", "2",
                       "--global-batch-size", "64"])
    config = get_preset("small")
    layout = resolve_layout(template, args, world_size=8)
    ds = build_ds_config(template, args, layout, config)
    assert (layout.tp, layout.ep, layout.zero, layout.dp, layout.grad_accum) == (2, 4, 2, 4, 8)
    assert ds["bf16"]["enabled"] is False and ds["zero_optimization"]["stage"] == 2
    assert ds["tensor_parallel"]["autotp_size"] == 2
    ep = ds["expert_parallel"]
    assert ep["autoep_size"] == 4 and ep["moe_layer_pattern"] == MOE_LAYER_PATTERN
    assert ep["top_k"] == config.num_experts_per_tok and ep["score_func"] == config.score_func
    assert ep["has_shared_experts"] is True and ep["shared_experts_pattern"] == "shared_experts"
    plain = build_ds_config(template, parse_args(["--ep", "1", "--tp", "1"]), resolve_layout(
        template, parse_args(["--ep", "1", "--tp", "1"]), 8), config)
    assert "expert_parallel" not in plain and "tensor_parallel" not in plain


def test_replicate_core_is_one_yes_no_setting_that_leaf_blocks_turn_off():
    """--replicate-core is on by default; where the core is a ZeRO-3 leaf module (under --compile, or the CPU
    template's leaf_module) the default turns it off, and asking for both is refused before start-up."""
    cpu, plain = load_template(REPO / "ds_configs" / "cpu-debug.json"), plain_zero3_template()
    for template, argv, replicate, leaf in (
            (plain, [], True, False), (plain, ["--no-replicate-core"], False, False),
            (plain, ["--compile"], False, True), (plain, ["--compile", "--zero", "2"], True, False),
            (cpu, [], False, True), (cpu, ["--zero", "2"], True, False), (cpu, ["--no-replicate-core"], False, True)):
        layout = resolve_layout(template, parse_args(argv), 1)
        assert (layout.replicate_core, layout.leaf_blocks) == (replicate, leaf), (argv, template is cpu)
    with pytest.raises(ArgumentError, match="--replicate-core does not apply under --compile under ZeRO-3"):
        resolve_layout(plain, parse_args(["--compile", "--replicate-core"]), 1)
    with pytest.raises(ArgumentError, match="--replicate-core does not apply with this ds_config's "
                                            "zero_optimization.leaf_module under ZeRO-3"):
        resolve_layout(cpu, parse_args(["--replicate-core"]), 1)


def test_leaf_blocks_are_asked_of_deepspeed_under_zero3_only():
    """The CPU template and --compile under ZeRO-3 ask DeepSpeed for the core and the dense blocks as leaf modules
    (one hook, one compiled graph per block); ZeRO-2 and a template without them get none. The template spells
    the section leaf_blocks_section() writes."""
    cpu, plain = load_template(REPO / "ds_configs" / "cpu-debug.json"), plain_zero3_template()
    leaves = {"classes": ["megamythos.model.recurrent.RecurrentCore", "megamythos.model.lm.DenseBlock"]}
    assert cpu["zero_optimization"]["leaf_module"] == leaves
    for template, argv, want in ((cpu, [], leaves), (cpu, ["--compile"], leaves), (cpu, ["--zero", "2"], None),
                                 (plain, [], None), (plain, ["--compile"], leaves),
                                 (plain, ["--compile", "--zero", "2"], None)):
        args = parse_args(argv)
        ds = build_ds_config(template, args, resolve_layout(template, args, 1), get_preset("tiny"))
        assert ds["zero_optimization"].get("leaf_module") == want, (argv, template is cpu)


def test_compile_with_autoep_in_fp32_is_refused():
    """--compile with AutoEP in fp32 is refused before start-up (Dynamo cannot trace it)."""
    from megamythos.training.ds_config import bf16_enabled, check_compile

    template = load_template(REPO / "ds_configs" / "cpu-debug.json")
    args = parse_args(["--compile", "--ep", "2", "--no-bf16"])
    layout = resolve_layout(template, args, 2)
    with pytest.raises(ArgumentError, match="--compile with --ep > 1 needs --bf16"):
        check_compile(layout, bf16_enabled(template, args.bf16), args.compile, ArgumentError)
    check_compile(layout, bf16_enabled(template, None), True)
    check_compile(resolve_layout(template, parse_args([]), 2), False, True)


def test_zero0_in_bf16_with_tensor_or_expert_parallelism_is_refused(tmp_path):
    """DeepSpeed's ZeRO-0 bf16 optimizer clips with tensor-parallel rank 0's share of the gradient norm (found
    2026-12-06: `--zero 0 --tp 2` trained and logged grad norm 1.007 where ZeRO-1 and one process give 1.020), and
    without the AutoEP experts' gradients (found 2026-12-07: `--zero 0 --ep 2` logged and clipped by 1.45951 where
    the norm is 1.46020; ZeRO-1 logs 1.46038). The launcher's preflight refuses both before DeepSpeed starts, as it does
    --compile with AutoEP in fp32. A checkpoint of such a run resumes on no other layout or precision (resumed with
    --no-bf16: ``KeyError: 'param_groups'``), so the line names --finetune (found 2026-12-07)."""
    from megamythos.training.ds_config import bf16_enabled, check_precision
    from megamythos.training.launch import preflight

    template = load_template(REPO / "ds_configs" / "cpu-debug.json")
    for argv, refused in ((["--zero", "0", "--tp", "2"], "--tp 2"), (["--zero", "0", "--tp", "2", "--no-bf16"], None),
                          (["--zero", "1", "--tp", "2"], None), (["--zero", "0"], None),
                          (["--zero", "0", "--ep", "2"], "--ep 2"), (["--zero", "0", "--ep", "2", "--no-bf16"], None),
                          (["--zero", "1", "--ep", "2"], None)):
        args = parse_args(argv)
        layout = resolve_layout(template, args, 2)
        if refused:
            with pytest.raises(ArgumentError, match=rf"^--zero 0 with {refused} in bf16: .* use --zero 1 \(or 2, 3\), "
                                                    r"or --no-bf16; to go on from a checkpoint of such a run, "
                                                    r"--load it with --finetune, --zero 1 and another --save$"):
                check_precision(layout, bf16_enabled(template, args.bf16), ArgumentError)
        else:
            check_precision(layout, bf16_enabled(template, args.bf16), ArgumentError)
    for argv in (["--zero", "0", "--tp", "2"], ["--zero", "0", "--ep", "2"], ["--compile", "--ep", "2", "--no-bf16"]):
        with pytest.raises(ArgumentError, match="--zero 0 with --(tp|ep) 2 in bf16|--compile with --ep > 1 needs "):
            preflight([*argv, "--save", str(tmp_path / "run")], world_size=2)


def test_adam_implementation_choice(monkeypatch, tmp_path):
    """auto = apex only on CUDA and only when apex.optimizers imports; an explicit apex that does not import is a
    one-line user error; a client optimizer leaves the ds_config without an optimizer section."""
    from megamythos.errors import UserError
    from megamythos.training.optimizers import resolve_adam_impl

    monkeypatch.setitem(sys.modules, "apex", None)  # not importable, whatever this machine has
    assert resolve_adam_impl("auto", cuda=True) == resolve_adam_impl("auto", cuda=False) == "deepspeed"
    with pytest.raises(UserError, match="--adam-impl apex: apex.optimizers.FusedAdam does not import"):
        resolve_adam_impl("apex", cuda=True)
    (tmp_path / "apex" / "optimizers").mkdir(parents=True)
    (tmp_path / "apex" / "__init__.py").write_text("")
    (tmp_path / "apex" / "optimizers" / "__init__.py").write_text("FusedAdam = object\n")
    monkeypatch.delitem(sys.modules, "apex")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_adam_impl("auto", cuda=True) == resolve_adam_impl("apex", cuda=False) == "apex"
    assert resolve_adam_impl("auto", cuda=False) == resolve_adam_impl("deepspeed", cuda=True) == "deepspeed"
    with pytest.raises(ArgumentError, match="--adam-impl must be one of"):
        TrainArgs(adam_impl="fused")
    template = load_template(REPO / "ds_configs" / "cpu-debug.json")
    args = parse_args([])
    ds = build_ds_config(template, args, resolve_layout(template, args, 1), get_preset("tiny"), client_optimizer=True)
    assert "optimizer" not in ds and ds["zero_allow_untested_optimizer"] is True


def test_tensor_parallel_patterns_match_exactly_the_intended_weights():
    """AutoTP patterns against the real module names: attention and dense FFNs, never experts."""
    from megamythos.model.lm import MythosLM

    for attn_type in ("mla", "gqa"):
        names = [n for n, _ in MythosLM(get_preset("tiny", **TINY_OVERRIDES, attn_type=attn_type,
                                                   n_kv_heads=2)).named_parameters()]
        column = {n for n in names if any(re.fullmatch(p, n) for p in TP_COLUMN_PATTERNS)}
        row = {n for n in names if any(re.fullmatch(p, n) for p in TP_ROW_PATTERNS)}
        projections = ("wq_b", "wkv_b") if attn_type == "mla" else ("wq", "wk", "wv")
        want_column = {f"{block}.attn.{w}.weight" for block in ("prelude.0", "recurrent.block", "coda.0")
                       for w in projections} | {f"{b}.ffn.{w}.weight" for b in ("prelude.0", "coda.0")
                                                for w in ("w_gate", "w_up")}
        want_row = {f"{b}.attn.wo.weight" for b in ("prelude.0", "recurrent.block", "coda.0")} | \
                   {f"{b}.ffn.w_down.weight" for b in ("prelude.0", "coda.0")}
        assert column == want_column and row == want_row


# ------------------------------------------------------------------------------------------------ schedules
def test_lr_schedules():
    cos = LRSchedule(lr=1.0, min_lr=0.1, warmup=10, total=110, kind="cosine")
    assert cos.learning_rate(0) == pytest.approx(0.1) and cos.learning_rate(9) == pytest.approx(1.0)
    assert cos.learning_rate(60) == pytest.approx(0.55) and cos.learning_rate(110) == pytest.approx(0.1)
    assert all(cos.learning_rate(i) >= cos.learning_rate(i + 1) for i in range(10, 120))
    wsd = LRSchedule(lr=1.0, min_lr=0.0, warmup=10, total=100, kind="wsd", decay_fraction=0.2)
    assert wsd.learning_rate(79) == 1.0 and wsd.learning_rate(90) == pytest.approx(0.5)
    assert wsd.learning_rate(100) == 0.0
    assert cos(60) == pytest.approx(cos.learning_rate(60) / cos.lr)
    with pytest.raises(ValueError):
        LRSchedule(lr=1.0, min_lr=2.0, warmup=0, total=10)
    # --lr 0 --min-lr 0, which the arguments allow (as Megatron's): before 2026-12-06 a ValueError traceback
    frozen = LRSchedule(**{**dataclasses.asdict(cos), "lr": 0.0, "min_lr": 0.0})
    assert [frozen(i) for i in (0, 9, 60, 120)] == [0.0] * 4 and frozen.learning_rate(60) == 0.0
    args = parse_args(["--lr", "0", "--min-lr", "0", "--lr-schedule", "wsd"])
    assert LRSchedule(args.lr, args.min_lr, args.warmup, 100, args.lr_schedule, args.wsd_decay_fraction)(90) == 0.0


def test_a_warmup_as_long_as_the_run_is_described_as_it_runs():
    """Found 2026-12-06: a 10-step run with the default --warmup 10 warned "the LR never reaches --lr 0.001" and
    then logged learning rate 0.001 at step 10; the warning now gives the LR of the last step."""
    assert LRSchedule(1e-3, 1e-4, 9, 10).warmup_warning() is None
    assert LRSchedule(1e-3, 1e-4, 10, 10).learning_rate(9) == pytest.approx(1e-3)
    assert LRSchedule(1e-3, 1e-4, 10, 10).warmup_warning() == (
        "--warmup 10 is not below the run's 10 steps: the LR rises for the whole run (reaching --lr 0.001 only at "
        "its last step) and never decays to --min-lr 0.0001")
    assert LRSchedule(1e-3, 1e-4, 20, 10, "wsd").warmup_warning() == (
        "--warmup 20 is not below the run's 10 steps: the LR rises for the whole run (to 0.0005 at its last step, "
        "never to --lr 0.001) and never decays to --min-lr 0.0001")


def test_a_resumed_run_follows_one_schedule_and_is_told_which():
    """Megatron's rule: a command line whose schedule differs from the checkpoint's is refused unless it says
    which one wins; a WSD-only setting does not count for cosine schedules."""
    saved = LRSchedule(lr=1e-2, min_lr=1e-3, warmup=1, total=4)
    wanted = LRSchedule(lr=2e-3, min_lr=1e-3, warmup=1, total=8)
    record = dataclasses.asdict(saved)
    with pytest.raises(ScheduleChangeError) as refused:
        resumed_schedule(record, wanted, "check", "ckpt/iter_0000004", 4)
    assert str(refused.value) == (
        "the command line changes the LR schedule saved in ckpt/iter_0000004 (--lr 0.01 -> 0.002, steps 4 -> 8): "
        "pass --use-checkpoint-lr-schedule to keep the saved one (LR 0.001 at step 5), or --override-lr-schedule "
        "to follow the new one from here (LR 0.001611)")
    assert resumed_schedule(record, wanted, "checkpoint", "x", 4) == saved
    assert resumed_schedule(record, wanted, "override", "x", 4) == wanted
    assert resumed_schedule(None, wanted, "check", "x", 4) == wanted  # saved before checkpoints recorded it
    same = dataclasses.replace(saved, decay_fraction=0.5)  # not a cosine schedule's setting
    assert resumed_schedule(record, same, "check", "x", 4) == saved
    assert schedule_changes(saved, dataclasses.replace(same, kind="wsd")) == [
        "--lr-schedule cosine -> wsd", "--wsd-decay-fraction 0.2 -> 0.5"]


def test_optimizer_settings_a_resume_keeps_are_named():
    groups = [{"weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}, {"weight_decay": 0.0, "betas": (0.9, 0.95),
                                                                         "eps": 1e-8}]
    assert kept_optimizer_settings(groups, 0.1, (0.9, 0.95), 1e-8) == []
    assert kept_optimizer_settings(groups, 0.5, (0.9, 0.99), 1e-8) == [
        "--weight-decay 0.1 (command line 0.5)", "--adam-beta2 0.95 (command line 0.99)"]


@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_a_resume_on_another_layout_keeps_the_checkpoints_optimizer_settings(weight_decay):
    """DeepSpeed's universal load gives every parameter group the checkpoint's first group's settings; the repair
    then put back the command line's on every group, so a resume on another world size, --tp or --ep trained with
    another --weight-decay, --adam-beta2 or --adam-eps without a word (found 2026-12-07), where a resume on the
    same layout keeps the checkpoint's with a warning. Now both keep them, and name the difference."""
    model = MythosLM(get_preset("tiny", **TINY_OVERRIDES))
    optimizer = torch.optim.AdamW(adamw_param_groups(model, weight_decay), lr=1e-3, betas=(0.9, 0.99), eps=1e-6)
    before = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    saved_first = {**before[0], "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}  # the run that saved
    for group in optimizer.param_groups:  # what DeepSpeed 0.19.8's ZeRO-3 universal load does
        group.update(saved_first)
    repair_universal_optimizer(optimizer, before)
    groups = optimizer.param_groups
    assert [(g["name"], g["weight_decay"], g["betas"], g["eps"]) for g in groups] == [
        ("params-0", 0.1, (0.9, 0.95), 1e-8), ("params-1", 0.0, (0.9, 0.95), 1e-8)]
    assert kept_optimizer_settings(groups, weight_decay, (0.9, 0.99), 1e-6) == [
        f"--weight-decay 0.1 (command line {weight_decay:g})", "--adam-beta2 0.95 (command line 0.99)",
        "--adam-eps 1e-08 (command line 1e-06)"]


@pytest.mark.launch
def test_resume_with_another_schedule_is_refused_or_follows_the_one_asked_for(corpus, tmp_path):
    """A run of 4 steps resumed to 8 with another --lr: refused in one line; with --use-checkpoint-lr-schedule the
    saved schedule goes on (its floor, 0.001); with --override-lr-schedule the new cosine from step 5. Before,
    the checkpoint's schedule won without a word. Another --weight-decay is kept from the checkpoint, with a
    warning."""
    save = tmp_path / "ckpt"
    base = ["--save", str(save), "--eval-interval", "0"]
    first = run_single([*tiny_args(corpus, 4), *base], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.copytree(save, tmp_path / "saved")
    resumed = {}
    for choice in ("", "--use-checkpoint-lr-schedule", "--override-lr-schedule"):
        shutil.rmtree(save)
        shutil.copytree(tmp_path / "saved", save)
        extra = ["--load", str(save), "--lr", "0.002", *([choice] if choice else []), "--weight-decay", "0.5"]
        out = run_single([*tiny_args(corpus, 8), *base, *extra], tmp_path)
        resumed[choice] = (out.returncode, [float(lr) for lr in re.findall(r"learning rate: ([0-9.e-]+)", out.stderr)],
                           out.stderr)
    code, lrs, stderr = resumed[""]
    assert code == 2 and not lrs and one_error_line(stderr).startswith(
        f"error: the command line changes the LR schedule saved in {save / 'iter_0000004'} (--lr 0.01 -> 0.002, "
        "steps 4 -> 8)"), stderr[-3000:]
    assert stderr.count("changes the LR schedule saved in") == 1, stderr[-3000:]  # not logged a second time
    assert resumed["--use-checkpoint-lr-schedule"][:2] == (0, [0.001] * 4)
    # weight decay, betas and eps come back with the optimizer state: kept, and said so
    assert "resuming with the checkpoint's optimizer settings, restored with its state: --weight-decay 0.1 " \
           "(command line 0.5)" in resumed["--use-checkpoint-lr-schedule"][2]
    code, lrs, _ = resumed["--override-lr-schedule"]
    new = LRSchedule(lr=0.002, min_lr=0.001, warmup=1, total=8)
    assert code == 0 and lrs == pytest.approx([new.learning_rate(step) for step in range(4, 8)], rel=1e-5)


@pytest.mark.launch
def test_exit_interval_stops_at_every_multiple_as_megatron_does(corpus, tmp_path):
    """``--exit-interval 3`` chunks a job: each launch of the same command stops at the next multiple of 3. Found
    2026-12-06: it stopped only at iteration 3 itself, so a resumed launch trained to the end, past its job's time
    limit, without a word. On per-split data (Megatron's --train-data-path ...) a launch resumes on the samples it
    would have read, and one that stops early leaves the test data alone (Megatron exits before its
    end-of-training evaluation). A stop at the last iteration is the run's end: it evaluates the test data (found
    2026-12-06: a run chunked so never did, and its relaunch had nothing to do)."""
    save = tmp_path / "ckpt"
    args = tiny_args(corpus, 9)
    at = args.index("--data-path")
    args[at:at + 4] = ["--train-data-path", corpus_prefix(corpus), "--test-data-path", "1", corpus_prefix(corpus)]
    args += ["--save", str(save), "--load", str(save), "--exit-interval", "3", "--eval-interval", "0"]
    for stop in (3, 6, 9):
        result = run_single(args, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert read_latest(save) == f"iter_{stop:07d}", result.stderr[-3000:]
        assert ("test at iteration 9 |" in result.stderr) == (stop == 9), result.stderr[-3000:]
        assert "sample order" not in result.stderr, result.stderr[-3000:]  # the resume: neither warning


def test_a_run_without_save_is_told_it_checkpoints_nothing():
    """The planner's printed multi-node command (and a bare ``python -m megamythos.training.pretrain``) passes no
    --save, and such a run trained to its end saving nothing, without a word (found 2026-12-07 planning a bigger
    run); with --save but no --save-interval a long run is told what a crash costs, as before."""
    from megamythos.training.pretrain import checkpointing_warning

    assert checkpointing_warning(None, 100, 50).startswith("no --save: this run writes no checkpoint")
    assert checkpointing_warning(None, 0, 0) is None  # nothing left to train
    assert checkpointing_warning("ckpt", 0, 1001).startswith("1001 steps to go without --save-interval")
    assert checkpointing_warning("ckpt", 0, 1000) is None and checkpointing_warning("ckpt", 100, 5000) is None


def test_a_longer_context_trained_at_the_default_length_is_told_so():
    """Found 2026-12-08 (context length): ``--finetune --load SRC --override max_seq_len=4096`` without
    ``--seq-length`` trained on samples of the default 256 tokens, without a word; the start now says so."""
    assert parse_args(["--override", "max_seq_len=4096"]).context_warning() == (
        "--override max_seq_len=4096 with --seq-length 256: this run trains on samples of 256 tokens, not 4096; "
        "pass --seq-length 4096 to train at the longer context")
    assert parse_args(["--override", "max_seq_len=4096", "--seq-length", "4096"]).context_warning() is None
    assert parse_args(["--seq-length", "128"]).context_warning() is None  # the preset's context: nothing to say


@pytest.mark.launch
def test_a_long_run_without_periodic_checkpoints_is_told_what_a_crash_costs(corpus, tmp_path):
    """Found 2026-12-06: a GPU launch saves only at the end and on a signal by default, without a word; a crash at
    hour 40 lost every step."""
    save = tmp_path / "ckpt"
    result = run_single([*tiny_args(corpus, 1001), "--save", str(save), "--exit-interval", "1", "--eval-interval",
                         "0", "--warmup", "1001", "--profile-dir", str(tmp_path / "prof"), "--profile-step-start",
                         "2000", "--profile-step-end", "2001"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("1001 steps to go without --save-interval: checkpoints only at the end and on a signal, so a crash or a "
            "hang loses every step since the start; pass --save-interval N") in result.stderr
    # settings that could not take effect passed silently (found 2026-12-06)
    assert "--warmup 1001 is not below the run's 1001 steps: the LR rises for the whole run" in result.stderr
    assert "--profile-step-start 2000 is past the run's 1001 steps: nothing will be profiled" in result.stderr
    assert read_latest(save) == "iter_0000001"


@pytest.mark.launch
def test_a_validation_that_reads_samples_twice_says_so(corpus, tmp_path):
    """``--eval-iters`` x global batch beyond the validation split's samples reads some of them more than once at
    every validation: said once at start-up, with the --eval-iters that reads each once (found 2026-12-06: unsaid
    by the trainer, where ``evaluate`` said it)."""
    out = run_single([*tiny_args(corpus, 1), "--split", "29,1,0", "--eval-interval", "1", "--eval-iters", "20",
                      "--micro-batch-size", "64", "--global-batch-size", "64"], tmp_path)  # 1 validation document
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stderr.splitlines() if "a validation reads" in line)
    held_out = int(re.search(r"the validation split holds (\d+) samples of 32 tokens", line)[1])
    assert 0 < held_out < 1280 and "--eval-iters 20 x global batch 64 = 1280 samples" in line
    assert f"pass --eval-iters {max(1, held_out // 64)} or fewer" in line


@pytest.mark.launch
def test_a_resume_with_a_smaller_global_batch_on_a_small_training_set_trains_on(corpus, tmp_path):
    """The training set was sized for total steps x the new global batch, fewer samples than the run had already
    consumed: a ValueError traceback from the sampler, and the launcher said the same command would resume (found
    2026-12-06). It now holds the consumed samples and those of the steps left."""
    save = tmp_path / "ckpt"
    small = ["--split", "5,100,0", "--save", str(save), "--load", str(save), "--eval-interval", "0"]  # 1 document
    first = run_single([*tiny_args(corpus, 12), *small, "--micro-batch-size", "16", "--global-batch-size", "16"],
                       tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_single([*tiny_args(corpus, 14), *small, "--micro-batch-size", "2", "--global-batch-size", "2",
                         "--override-lr-schedule"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert read_latest(save) == "iter_0000014"


@pytest.mark.launch
def test_a_resume_that_rebuilds_the_training_order_says_so(corpus, tmp_path):
    """A longer --train-iters (or another global batch) rebuilds the training set over another number of epochs,
    each shuffled anew (Megatron's rule): the consumed-sample count then points into another order. Found
    2026-12-06: no word, while a changed seed or split was named. A resume on the same settings stays quiet."""
    small = ["--split", "10,100,0", "--eval-interval", "0", "--micro-batch-size", "16", "--global-batch-size", "16"]
    same, longer = tmp_path / "same", tmp_path / "longer"  # 2 documents: 126 samples of 32 tokens an epoch
    for launch in ([*tiny_args(corpus, 4), "--exit-interval", "2"], tiny_args(corpus, 4)):  # 64 samples: 1 epoch
        result = run_single([*launch, *small, "--save", str(same), "--load", str(same)], tmp_path)
        assert result.returncode == 0 and "another sample order" not in result.stderr, result.stderr[-3000:]
    shutil.copytree(same, longer)
    result = run_single([*tiny_args(corpus, 8), *small, "--save", str(longer), "--load", str(longer),
                         "--override-lr-schedule"], tmp_path)  # 128 samples: 2 epochs
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the training set was built again for 8 steps of 16 samples and reads another sample order from " \
           "iteration 4 on" in result.stderr, result.stderr[-3000:]


@pytest.mark.launch
def test_a_resume_under_another_preset_default_names_the_loop_setting_it_changes(corpus, tmp_path):
    """A checkpoint trained with backprop_loops 0 (the tiny preset's before 2026-12-01), resumed with a command line
    that leaves it to the preset (2 since): the run trained on with truncated backprop without a word (found
    2026-12-08). It now warns, naming the override that trains on as the checkpoint did."""
    save = tmp_path / "ckpt"
    args = [*tiny_args(corpus, 4), "--save", str(save), "--load", str(save), "--eval-interval", "0"]
    first = run_single([*args, "--exit-interval", "2", "--backprop-loops", "0"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_single(args, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "other loop settings than it trained with (backprop_loops 0 -> 2; " in second.stderr, second.stderr[-3000:]
    assert "pass --override backprop_loops=0 (in place of a flag that sets it)" in second.stderr


@pytest.mark.launch
def test_train_tokens_counts_the_tokens_a_resumed_run_consumed(corpus, tmp_path):
    """``--train-tokens`` on a resume with another global batch: the length came from the new batch alone, so a run
    that had trained half its tokens stopped as "already finished" (found 2026-12-06). It now trains the tokens
    left, recorded in each checkpoint's train_args.json. Without --peak-tflops, the resume divides MFU by the peak
    the first launch measured (found 2026-12-06: measured again at each launch, MFU stepped at every resume)."""
    save = tmp_path / "ckpt"
    args = tiny_args(corpus, 1)
    del args[args.index("--train-iters"):args.index("--train-iters") + 2]
    del args[args.index("--peak-tflops"):args.index("--peak-tflops") + 2]
    common = [*args, "--train-tokens", "1024", "--save", str(save), "--load", str(save), "--eval-interval", "0"]
    first = run_single([*common, "--micro-batch-size", "4", "--global-batch-size", "4", "--exit-interval", "4",
                        "--override", "sample_depth=false"],
                       tmp_path)  # 8 steps of 4 x 32 tokens; stops after 4 (512 tokens)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.findall(r"loops: (\d+)", first.stderr) == ["3"] * 4  # fixed depth: --mean-loops every step
    record = json.loads((save / "iter_0000004" / "train_args.json").read_text())
    assert (record["iteration"], record["consumed_train_samples"], record["consumed_tokens"],
            record["trained_tokens"]) == (4, 16, 512, 512)
    second = run_single([*common, "--micro-batch-size", "8", "--global-batch-size", "8", "--override-lr-schedule"],
                        tmp_path)  # 512 tokens left: 2 steps of 8 x 32
    assert second.returncode == 0, second.stderr[-3000:]
    assert read_latest(save) == "iter_0000006", second.stderr[-3000:]
    # the device's name may hold brackets of its own: "Intel(R) Xeon(R) Processor, 1 threads, torch.float32"
    measured = re.findall(r"peak matmul rate for MFU: (\S+) TFLOP/s \((.*)\), measured now", first.stderr)
    assert len(measured) == 1 and "threads, torch.float32" in measured[0][1], first.stderr[-3000:]
    assert f"peak matmul rate this run measured at its start: {measured[0][0]} TFLOP/s ({measured[0][1]})" in \
        second.stderr and "measured now" not in second.stderr, second.stderr[-3000:]


def test_train_tokens_counts_the_tokens_trained_not_the_samples_skipped(tmp_path):
    """A rollback or the non-finite guard skips samples: the data position (consumed tokens) runs ahead of the
    tokens trained. The length came from the data position, so the same command relaunched found a shorter run
    than its saved schedule and was refused (found 2026-12-06: 1000 steps -> 995 after 40 skipped samples)."""
    tag = tmp_path / "iter_0000600"
    tag.mkdir()
    (tmp_path / "latest").write_text(tag.name)
    samples, seq = 8, 32
    record = {"iteration": 600, "consumed_train_samples": 600 * samples + 40,
              "consumed_tokens": (600 * samples + 40) * seq}
    (tag / "train_args.json").write_text(json.dumps({**record, "trained_tokens": 600 * samples * seq}))
    args = parse_args(["--train-tokens", str(1000 * samples * seq), "--seq-length", str(seq)])
    assert args.total_iters(samples, saved_progress(tmp_path)) == 1000
    (tag / "train_args.json").write_text(json.dumps(record))  # a tag saved before it recorded the tokens trained
    assert args.total_iters(samples, saved_progress(tmp_path)) == 995


@pytest.mark.parametrize("iteration", [None, "600x", -1, 6.5])
def test_saved_progress_refuses_a_train_record_without_a_whole_iteration(tmp_path, iteration):
    """A train record with the tokens consumed but no iteration, or a garbled one, is one CheckpointError naming
    the record (found 2026-12-07: a KeyError or ValueError traceback at start-up)."""
    tag = tmp_path / "iter_0000600"
    tag.mkdir()
    (tmp_path / "latest").write_text(tag.name)
    record = {"consumed_tokens": 4096, **({} if iteration is None else {"iteration": iteration})}
    (tag / "train_args.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"iter_0000600/train_args\.json holds the iteration"):
        saved_progress(tmp_path)


@pytest.mark.launch
def test_finetune_starts_a_new_run_from_the_weights_and_a_relaunch_resumes_it(corpus, tmp_path):
    """--finetune --load RUN: a 2-rank ZeRO-3 AutoEP run starts at iteration 1 from the 1-rank run's weights
    (unchanged by a step at LR 1e-9 but for the expert biases' own update), with a loss far below a scratch
    start; the same command relaunched resumes the fine-tuning run; an export serves as a source too; a model of
    other shape is refused. Its --split 80,20,0 validates on documents the source run (90,10,0) trained on: one
    warning says so (found 2026-12-07: nothing did, and the fine-tuned run's validation loss was no held-out one)."""
    source, tuned = tmp_path / "source", tmp_path / "tuned"
    first = run_single([*tiny_args(corpus, 6), "--save", str(source), "--eval-interval", "0"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"lm loss: ([0-9.e-]+)", first.stderr)]
    finetune = ["--zero", "3", "--ep", "2", "--micro-batch-size", "1", "--global-batch-size", "2", "--save", str(tuned),
                "--load", str(source), "--finetune", "--eval-interval", "0", "--lr", "1e-9", "--min-lr", "1e-10",
                "--split", "80,20,0"]
    text = run(2, [*tiny_args(corpus, 1), *finetune], tmp_path / "tuned.txt")
    assert f"--finetune: starting from the weights of {source / 'iter_0000006'}" in text
    prefix = os.path.realpath(corpus_prefix(corpus))
    assert re.search(rf"--finetune: its validation split holds \d+ documents of {re.escape(prefix)} that "
                     rf"{re.escape(str(source))} trained on \(.* under --split 90,10,0\)", text), text[-3000:]
    assert float(re.findall(r"lm loss: ([0-9.e-]+)", text)[0]) < losses[0] - 0.5  # a scratch start: ~ln(384)
    _, before = load_checkpoint_weights(source / "iter_0000006", tmp_path / "w0")
    _, after = load_checkpoint_weights(tuned / "iter_0000001", tmp_path / "w1")
    assert set(before) == set(after)
    for name, weight in before.items():
        bound = 2e-3 if "e_score_correction_bias" in name else 1e-6  # the bias moves by its update rate (1e-3)
        assert (weight - after[name].view(weight.shape)).abs().max() <= bound, name
    again = run(2, [*tiny_args(corpus, 2), *finetune, "--use-checkpoint-lr-schedule"], tmp_path / "again.txt")
    assert f"loaded checkpoint {tuned / 'iter_0000001'}" in again and "--finetune: starting from" not in again
    assert read_latest(tuned) == "iter_0000002"
    assert export_main([str(source), str(tmp_path / "export")]) == 0  # an export's weights serve as well
    exported = run_single([*tiny_args(corpus, 1), "--save", str(tmp_path / "from-export"), "--load",
                           str(tmp_path / "export"), "--finetune", "--eval-interval", "0"], tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert f"--finetune: starting from the weights of {tmp_path / 'export'}" in exported.stderr
    assert float(re.findall(r"lm loss: ([0-9.e-]+)", exported.stderr)[0]) < losses[0] - 0.5
    other = run_single([*tiny_args(corpus, 1), "--save", str(tmp_path / "other"), "--load", str(source),
                        "--finetune", "--override", "n_experts=8"], tmp_path)
    assert other.returncode == 2 and "different model (n_experts: checkpoint 4 vs run 8)" in one_error_line(
        other.stderr), other.stderr[-3000:]


# ----------------------------------------------------------------------------------------------- guards
def test_nonfinite_guard_skips_counts_and_aborts(caplog):
    """A non-finite loss costs its micro-batch (the next one takes its place), a non-finite gradient the step; the
    log said "step skipped" for both (found 2026-12-06). They are counted apart: ``skipped_steps`` (the metrics'
    ``skipped-steps``) is Megatron's skipped iterations, optimizer steps discarded, and the micro-batches have their
    own count; found 2026-12-07: one count of both was logged as ``skipped-steps``. A streak mixes both."""
    guard = NonFiniteGuard(max_consecutive=3)
    assert not guard.skip(torch.tensor(2.0), 1)
    assert guard.skip(torch.tensor(float("nan")), 2) and guard.record(True, 2)
    assert [r.getMessage() for r in caplog.records] == [
        "iteration 2: non-finite loss, micro-batch skipped, the next takes its place (1 in a row, 1 in total)",
        "iteration 2: non-finite gradient, step skipped (2 in a row, 2 in total)"]
    assert not guard.skip(torch.tensor(1.0), 3) and guard.consecutive == 2  # finite loss: step not done yet
    assert not guard.record(False, 3)  # a completed good step ends the streak
    assert (guard.skipped_steps, guard.skipped_micro_batches, guard.consecutive) == (1, 1, 0)
    guard.skip(torch.tensor(float("inf")), 4)
    guard.skip(torch.tensor(float("nan")), 4)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss or gradient"):
        guard.record(True, 4)
    assert (guard.skipped_steps, guard.skipped_micro_batches) == (2, 3)


class _Engine:
    """What ``Trainer.train_step`` asks of a DeepSpeed engine, on a plain model: one micro-batch a step, no update."""

    skipped_steps = 0

    def __init__(self, model: MythosLM) -> None:
        self.module, self.optimizer = model, types.SimpleNamespace()

    def __call__(self, tokens: torch.Tensor, **kwargs: object):
        return self.module(tokens, **kwargs)

    def get_lr(self) -> list[float]:
        return [1e-3]

    def is_gradient_accumulation_boundary(self) -> bool:
        return True

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        pass


def test_a_step_draws_its_noise_from_the_seed_and_iteration_whatever_rng_a_rank_resumed_with():
    """Tensor-parallel ranks compute the same replicated state, so under ``state_init=noise`` they must draw the same
    initial noise. Found 2026-12-07: a step drew it from the RNG each rank restored, and a resume on a larger world
    (1 rank -> 2 TP ranks) restores rank 0's file on rank 0 while rank 1 has none ("rng_rank1.pt missing"): the TP
    peers drew different noise for the same batch from then on (seen in a real 2-rank TP run), silently. Each
    step now seeds from (seed, iteration), as the loop count is drawn."""
    from megamythos.training.pretrain import Trainer

    config = dataclasses.replace(get_preset("tiny"), **TINY_OVERRIDES, state_init="noise")
    tokens = torch.randint(config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for restored, dp_rank in ((11, 0), (12, 0), (11, 1)):  # the RNG each rank resumed with; its data-parallel rank
        torch.manual_seed(7)
        model = MythosLM(config).train()
        torch.manual_seed(restored)
        trainer = types.SimpleNamespace(
            config=config, args=types.SimpleNamespace(seed=7, log_params_norm=False), iteration=4, consumed=0,
            comm=types.SimpleNamespace(reset=lambda: None, scalars=dict, seconds=0.0), engine=_Engine(model),
            on_device=lambda batch: batch, layout=types.SimpleNamespace(micro_batch_size=1), dp_rank=dp_rank, dp_size=2,
            documents=None, guard=NonFiniteGuard(3), own_grad_norm=False, world_mean=lambda values: values,
            idle_experts=None)
        losses.append(Trainer.train_step(trainer, iter([(tokens, tokens)]))["lm_loss"])
    assert losses[0] == losses[1] != losses[2]  # a tensor-parallel peer draws alike, another data-parallel rank not


class _AccumulatingEngine(_Engine):
    """:class:`_Engine` whose step ends at every second micro-batch (gradient accumulation 2)."""

    def __init__(self, model: MythosLM) -> None:
        super().__init__(model)
        self.calls = 0

    def is_gradient_accumulation_boundary(self) -> bool:
        self.calls += 1
        return self.calls % 2 == 0

    def eval(self) -> None:
        self.module.eval()

    def train(self) -> None:
        self.module.train()


def _eod_trainer(model: MythosLM, engine: _Engine, eod: int) -> types.SimpleNamespace:
    """The attributes of a one-rank ``Trainer`` that ``train_step`` and ``evaluate`` read, under --eod-mask-loss."""
    from megamythos.model.row_layout import PackedDocuments

    return types.SimpleNamespace(
        config=model.config, args=types.SimpleNamespace(seed=7, log_params_norm=False, eval_iters=1), iteration=0,
        consumed=0, comm=types.SimpleNamespace(reset=lambda: None, scalars=dict, seconds=0.0), engine=engine,
        on_device=lambda batch: batch, layout=types.SimpleNamespace(micro_batch_size=1, grad_accum=2), dp_rank=0,
        dp_size=1, rank=0, documents=PackedDocuments(eod, eod_mask_loss=True), guard=NonFiniteGuard(3),
        own_grad_norm=False, world_mean=lambda values: values, idle_experts=None)


def test_a_micro_batch_that_scores_no_token_adds_nothing_and_is_no_non_finite_step():
    """Under --eod-mask-loss a micro-batch of end-of-document tokens alone (empty documents in a row) scores no
    label: its loss is 0 with no gradient, the step's lm loss is that of the micro-batches that score, the guard
    counts nothing, and a validation's mean is theirs too. Found 2026-12-07: PyTorch's mean over no label is NaN,
    so the micro-batch was skipped as non-finite by every rank (enough in a row stop the run as diverged, a
    rollback with --on-divergence rollback) and a validation holding one logged NaN."""
    from megamythos.training.pretrain import Trainer

    config = dataclasses.replace(get_preset("tiny"), **TINY_OVERRIDES)
    eod = 2
    empty = torch.full((1, 16), eod)
    text = torch.randint(3, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    model = MythosLM(config).train()
    out = model(empty, labels=empty, documents=_eod_trainer(model, _Engine(model), eod).documents)
    out.loss.backward()
    assert out.loss.item() == 0.0 and all(not p.grad.any() for p in model.parameters() if p.grad is not None)
    model.zero_grad()
    alone = model(text, labels=text).loss.item()

    trainer = _eod_trainer(model, _AccumulatingEngine(model), eod)
    step = Trainer.train_step(trainer, iter([(empty, empty), (text, text)]))
    assert step["lm_loss"] == pytest.approx(alone) and trainer.consumed == 2
    assert trainer.guard.skipped_micro_batches == trainer.guard.skipped_steps == 0

    held_out = [{"tokens": np.full(17, eod)}, {"tokens": np.arange(3, 20)}]
    signals = types.SimpleNamespace(should_exit=lambda: False)
    with torch.no_grad():
        expected = model.eval()(torch.arange(3, 19)[None], labels=torch.arange(4, 20)[None],
                                exit_threshold=0.0).loss.item()
    assert Trainer.evaluate(trainer, held_out, signals) == pytest.approx(expected)
    assert Trainer.evaluate(trainer, held_out[:1] * 2, signals) is None  # no token scored: nothing to report


@pytest.fixture(scope="module")
def gloo_group_of_one():
    """A torch.distributed group of this process alone, with the environment ``deepspeed.initialize`` reads; one
    for the module, since DeepSpeed keeps the groups of its first engine for every later one."""
    import torch.distributed as dist

    from tests.helpers import free_port

    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, value in {**launch_env(), "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
            monkeypatch.setenv(name, value)
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


def test_a_step_the_trainer_discards_leaves_the_lr_schedule_where_zero_leaves_it(gloo_group_of_one):
    """ZeRO-0 in fp32 (DeepSpeed's plain optimizer) has no discard of its own: the trainer leaves the update out.
    Before 2026-12-06 the LR scheduler still stepped there, so `--zero 0 --no-bf16` moved its warmup on through
    every discarded step while ZeRO's and Megatron's stay (LR 0.002, 0.004, 0.006 ... against 0.002, 0.002 ...)."""
    import deepspeed

    from megamythos.training.pretrain import optimizer_update_left_out
    from megamythos.training.schedules import build_scheduler

    model = torch.nn.Linear(4, 1)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), optimizer=torch.optim.AdamW(model.parameters(), lr=1.0),
        config={"train_batch_size": 1, "zero_optimization": {"stage": 0}, "gradient_clipping": 1.0},
        lr_scheduler=build_scheduler(LRSchedule(1.0, 0.1, warmup=5, total=10)))
    assert not hasattr(engine.optimizer, "_global_grad_norm")  # the case the trainer discards itself
    for scale in (1.0, float("inf"), 1.0):
        lr, skipped, weight = engine.get_lr()[0], engine.skipped_steps, model.weight.detach().clone()
        engine.backward(model(torch.ones(1, 4)).sum() * scale)
        with optimizer_update_left_out(engine.optimizer, left_out=scale != 1.0):
            engine.step()
        if scale != 1.0:  # as ZeRO's discard: no update, no scheduler step, counted as skipped
            assert engine.get_lr()[0] == lr and engine.skipped_steps == skipped + 1
            assert torch.equal(model.weight, weight) and not hasattr(engine.optimizer, "overflow")
        else:
            assert engine.get_lr()[0] == pytest.approx(lr + 0.2) and not torch.equal(model.weight, weight)
    assert hasattr(engine.optimizer.step, "_wrapped_by_lr_sched")  # the scheduler's wrapper is back


def test_zero0_in_bf16_takes_the_steps_zero1_takes(gloo_group_of_one):
    """DeepSpeed's ZeRO-0 bf16 optimizer steps AdamW once on zero gradients while it is built. Before 2026-12-06
    that step stayed: Adam's bias correction ran one step behind (the first update 0.73x of ZeRO-1's) and the
    fp32 masters were decayed once, so `--zero 0` trained other losses than `--zero 1/2/3` (5.8247 against 5.8041
    at the second step of the test model)."""
    import deepspeed

    from megamythos.training.optimizers import undo_state_initialising_step

    weights = {}
    for stage in (0, 1):
        model = torch.nn.Linear(8, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.linspace(-1, 1, 8))
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(),
            optimizer=torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.95), weight_decay=0.1),
            config={"train_batch_size": 1, "zero_optimization": {"stage": stage}, "bf16": {"enabled": True}})
        assert undo_state_initialising_step(engine.optimizer) == (stage == 0)
        for x in torch.linspace(0.5, 2.0, 16).to(torch.bfloat16).view(2, 1, 8):
            engine.backward(engine(x).float().sum())
            engine.step()
        weights[stage] = [p.detach().float().clone() for p in engine.optimizer.optimizer.param_groups[0]["params"]]
    assert torch.allclose(weights[0][0].flatten(), weights[1][0].flatten(), rtol=0, atol=1e-6), weights


def test_bf16_zero2_and_zero3_sum_the_micro_batches_gradients_in_fp32(gloo_group_of_one, caplog):
    """Found 2026-12-07: DeepSpeed 0.19 sums the micro-batches' gradients in the weights' dtype unless
    ``data_types.grad_accum_dtype`` says fp32, so every bf16 run with accumulation summed them in bf16 (0.45% off
    their fp32 sum here at 16 micro-batches; the multi-node and 1t templates accumulate 8 and more). The trainer's
    ds_config now asks for fp32 under ZeRO-2/3: the engine's gradient is the exact fp32 sum of the micro-batches'
    bf16 gradients. ZeRO-0/1 (which DeepSpeed cannot switch) are told at start."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    micro, steps = 16, 4
    inputs = torch.randn(micro, steps, 256, generator=torch.Generator().manual_seed(0))

    def model() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))

    def loss(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net(x.to(torch.bfloat16)).float().pow(2).mean()

    reference = model().to(torch.bfloat16)
    fp32_sum = torch.zeros(512, 256)
    for x in inputs:  # each micro-batch's bf16 gradient (DeepSpeed scales the loss by 1/16 first), summed in fp32
        reference.zero_grad()
        (loss(reference, x) / micro).backward()
        fp32_sum += reference[0].weight.grad.float()
    template = {"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}, "bf16": {"enabled": True}}
    for stage in (2, 3):
        args = parse_args(["--zero", str(stage), "--micro-batch-size", str(steps), "--global-batch-size",
                           str(steps * micro)])
        layout = resolve_layout(template, args, 1)
        assert accumulation_warning(layout, True) is None
        ds = build_ds_config(template, args, layout, get_preset("tiny"))
        engine, *_ = deepspeed.initialize(model=model(), model_parameters=None, config=ds)
        for x in inputs:
            engine.backward(loss(engine, x))
            if engine.is_gradient_accumulation_boundary():  # the step's gradient, before step() applies it
                grad = safe_get_full_grad(engine.module[0].weight).float()
            engine.step()
        assert torch.equal(grad, fp32_sum), (stage, ((grad - fp32_sum).norm() / fp32_sum.norm()).item())
    single = parse_args(["--zero", "3", "--micro-batch-size", "4"])  # one micro-batch: nothing to sum (default run)
    assert "data_types" not in build_ds_config(template, single, resolve_layout(template, single, 1),
                                               get_preset("tiny"))
    zero1 = resolve_layout(template, parse_args(["--zero", "1", "--micro-batch-size", "4", "--global-batch-size",
                                                 "64"]), 1)
    assert "data_types" not in build_ds_config(template, parse_args(["--zero", "1"]), zero1, get_preset("tiny"))
    assert accumulation_warning(zero1, True).startswith("ZeRO-1 in bf16 sums the gradients of the 16 micro-batches")
    assert accumulation_warning(zero1, False) is None


def test_bf16_gradients_are_summed_across_ranks_in_fp32(gloo_group_of_one):
    """Found 2026-12-07: DeepSpeed 0.19 reduces gradients across ranks in the weights' dtype unless
    ``communication_data_type`` says otherwise, so every bf16 run on more than two ranks summed them in bf16: a ring
    over n ranks rounds n - 1 partial sums (0.9% off the exact mean at 64 ranks, 2.2% at 512, in a torch emulation;
    Megatron and torchtitan reduce in fp32). The trainer's ds_config now asks for fp32 wherever the sum would be
    rounded more than once, or is kept in fp32 (two ranks summing micro-batches into fp32 partitions), and
    DeepSpeed's engine and ZeRO optimizer take it; not where two ranks' bf16 sum is rounded once either way (the
    2-process default run: the same losses, without the doubled bytes), in fp32 runs, or with ZeRO++'s quantised
    gradients."""
    import deepspeed

    template = {"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}, "bf16": {"enabled": True}}

    def comm_dtype(argv: list[str], world: int, zeropp: dict | None = None) -> str | None:
        args = parse_args(argv)
        tpl = {**template, "zero_optimization": zeropp or {}}
        return build_ds_config(tpl, args, resolve_layout(tpl, args, world), get_preset("tiny")).get(
            "communication_data_type")

    accumulating = ["--micro-batch-size", "4", "--global-batch-size", "16"]
    for stage in ("0", "1", "2", "3"):
        assert comm_dtype(["--zero", stage], 4) == "fp32", stage
        assert comm_dtype(["--zero", stage], 2) is None and comm_dtype(["--zero", stage, "--no-bf16"], 4) is None
        # two ranks summing micro-batches into fp32 partitions (ZeRO-2/3) keep their sum unrounded
        assert comm_dtype(["--zero", stage, *accumulating], 2) == ("fp32" if stage in "23" else None), stage
    assert comm_dtype(["--zero", "3", "--tp", "2", "--ep", "2"], 4) is None  # dp = edp = 2, one micro-batch
    assert comm_dtype(["--zero", "3", "--tp", "2"], 8) == "fp32"  # dp 4
    assert comm_dtype(["--zero", "2"], 4, {"zero_quantized_gradients": True}) is None
    for stage in (2, 3):  # the engine and its ZeRO optimizer reduce in what the trainer's config says
        args = parse_args(["--zero", str(stage), "--micro-batch-size", "2"])
        ds = build_ds_config(template, args, resolve_layout(template, args, 4), get_preset("tiny"))
        engine, *_ = deepspeed.initialize(model=torch.nn.Linear(8, 8), model_parameters=None, config=ds)
        assert engine.communication_data_type == engine.optimizer.communication_data_type == torch.float32, stage


def test_memory_usage_on_cpu_follows_the_resident_set():
    """A 512 MiB tensor, touched, raises the resident set by about that much, and the peak with it."""
    before = memory_usage(torch.device("cpu"))
    block = torch.ones(1 << 27)  # 128 Mi float32 = 0.5 GiB
    after = memory_usage(torch.device("cpu"))
    assert 0.4 < after["memory/rss-GiB"] - before["memory/rss-GiB"] < 0.6, (before, after)
    assert 0.4 < after["memory/anon-GiB"] - before["memory/anon-GiB"] < 0.6, (before, after)
    assert after["memory/max-rss-GiB"] > before["memory/rss-GiB"] + 0.4 and float(block[-1]) == 1.0


def test_the_memory_a_cpu_run_logs_leaves_out_the_data_it_has_read(tmp_path):
    """Found 2026-12-06 (long-run audit): the resident set also holds the pages of the memory-mapped dataset and index
    files a run has read (reading the default corpus's 17 MB .bin once added 17 MB), so on a large corpus it rose
    with the steps for the whole run, nothing leaking, and a real leak hid in it. ``memory/anon-GiB`` (the console's
    memory on CPU) leaves those pages out."""
    path = tmp_path / "tokens.bin"
    np.arange(1 << 24, dtype=np.int32).tofile(path)  # 64 MiB
    before = memory_usage(torch.device("cpu"))
    tokens = np.memmap(path, dtype=np.int32, mode="r")
    assert int(tokens[::1024].astype(np.int64).sum()) == sum(range(0, 1 << 24, 1024))  # a read on every page
    after = memory_usage(torch.device("cpu"))
    assert after["memory/rss-GiB"] - before["memory/rss-GiB"] > 48 / 1024, (before, after)
    assert after["memory/anon-GiB"] - before["memory/anon-GiB"] < 8 / 1024, (before, after)


def test_every_rank_gathers_as_many_memory_values_when_one_cannot_read_its_anonymous_part(monkeypatch):
    """Each step all-gathers every rank's memory values in one collective, which needs rows of one length. Found
    2026-12-07: a rank that could not read /proc/self/status (out of file descriptors, say) left
    ``memory/anon-GiB`` out, and in a real 2-rank run gloo aborted that rank ("Received data size doesn't match
    expected size") while rank 0 read garbage into its row. Now the value is NaN there and the peak is the other
    ranks'; a value that no rank could read is left out, as on a system without it."""
    from megamythos.training import monitor
    from megamythos.training.monitor import peak_memory

    readable = memory_usage(torch.device("cpu"))
    monkeypatch.setattr(monitor, "anonymous_resident_bytes", lambda: None)
    unreadable = memory_usage(torch.device("cpu"))
    assert list(unreadable) == list(readable)
    keys = list(readable)
    peaks = peak_memory(keys, torch.tensor([list(readable.values()), list(unreadable.values())], dtype=torch.float64))
    assert peaks["memory/anon-GiB"] == readable["memory/anon-GiB"]
    assert peaks["memory/rss-GiB"] == max(readable["memory/rss-GiB"], unreadable["memory/rss-GiB"])
    assert list(peak_memory(keys, torch.tensor([list(unreadable.values())], dtype=torch.float64))) == [
        "memory/rss-GiB", "memory/max-rss-GiB"]


def test_exit_duration_counts_from_the_process_start():
    """``--exit-duration-in-mins``: past once this process has run that long (start-up included), never at 0. Half
    this process's age is past at once, where a clock started with the run would wait that long."""
    half_age = (time.time() - psutil.Process().create_time()) / 2 / 60
    for minutes, past in ((0.0, False), (1e-6, True), (half_age, True), (600.0, False)):
        signals = GracefulExit(minutes)
        try:
            assert signals.should_exit() == past
            assert (signals.reason or "").startswith(f"--exit-duration-in-mins {minutes:g} reached") == past
        finally:
            signals.restore()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1],
                         ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_is_recorded_for_a_checkpoint_not_fatal(signum):
    """Each signal a job is stopped with is recorded (the loop then saves and exits 0). Found 2026-12-07: SIGUSR1,
    the warning a scheduler sends before a time limit or preemption (SLURM's ``--signal=USR1@120``), had its
    default action: the rank died at once, every step since the last checkpoint lost, without a line."""
    signals = GracefulExit()
    try:
        assert signal.getsignal(signum) == signals._handle  # checked first: the default action would end pytest
        os.kill(os.getpid(), signum)
        assert signals.should_exit()
        assert signals.reason == f"received {signal.Signals(signum).name}"
    finally:
        signals.restore()
    assert signal.getsignal(signum) != signals._handle


def test_a_second_ctrl_c_ends_the_process_at_once():
    """The first Ctrl-C asks for a checkpoint and says that a second one ends the process; the second does, at
    once (SIGINT's default action, which also ends a save or a collective that does not return). Found 2026-12-07:
    every Ctrl-C after the first was swallowed without a word, so a run stuck in a save or a collective could only
    be ended by finding its processes and killing them."""
    code = ("import os, signal, time\n"
            "from megamythos.training.signals import GracefulExit\n"
            "signals = GracefulExit()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "assert signals.should_exit()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(30)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=launch_env(), cwd=REPO,
                         timeout=300)
    assert out.returncode == -signal.SIGINT, out.stderr[-3000:]
    assert "received SIGINT: will save a checkpoint and exit after this iteration" in out.stderr
    assert "Ctrl-C again ends this process at once, without a checkpoint" in out.stderr


def test_a_signal_during_the_end_of_run_evaluation_says_no_checkpoint_follows(caplog):
    """A signal during the end-of-run evaluation abandons it and saves nothing (training is over and saved); its
    line says so. Found 2026-12-07: it said `will save a checkpoint and exit after this iteration`, as during
    training."""
    from megamythos.training.pretrain import Trainer

    signals = GracefulExit()
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(eval_interval=100), iteration=20,
                                    last_good=Path("ckpt", "iter_0000020"),
                                    validate=lambda *args: os.kill(os.getpid(), signal.SIGTERM))
    try:
        with caplog.at_level(logging.WARNING, logger="megamythos.training.signals"):
            Trainer.evaluate_at_end(trainer, "validation set", None, signals)
    finally:
        signals.restore()
    assert signals.reason == "received SIGTERM"
    assert caplog.messages == ["received SIGTERM: training is over: the end-of-run evaluation stops and the process "
                               f"exits without another checkpoint (latest: {Path('ckpt', 'iter_0000020')})"]


@pytest.mark.parametrize("stop_during_the_save", ["SIGTERM", "--exit-duration-in-mins"])
def test_a_stop_that_comes_during_a_periodic_save_ends_the_run_with_that_checkpoint(stop_during_the_save):
    """A signal or the time limit that comes while a ``--save-interval`` checkpoint is written stops the run with
    it, as Megatron's loop (which checks both after its periodic save) does. Found 2026-12-07: the run trained one
    more step and wrote a second whole checkpoint, a step and a save past a preemption's grace period or the time
    limit that ``--exit-duration-in-mins`` leaves for one save."""
    from megamythos.training.pretrain import Trainer

    signals = GracefulExit(600.0)  # a limit far off, until the save below moves it to now
    saves = []

    def save_unless_spiking() -> bool:
        saves.append(trainer.iteration)
        if stop_during_the_save == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            signals._deadline = time.monotonic()
        return True

    trainer = types.SimpleNamespace(args=types.SimpleNamespace(exit_interval=0), iteration=20,
                                    save_unless_spiking=save_unless_spiking)
    try:
        assert Trainer.save_or_stop(trainer, signals, save_due=True) == (True, True, True)
    finally:
        signals.restore()
    assert saves == [20]


def test_a_rank_records_the_checkpoint_it_stops_with(tmp_path, monkeypatch):
    """A signal after the save that a rank stops with (during the end-of-run evaluation, which it abandons, or
    just after a periodic save) saves nothing more; found 2026-12-07: the supervisor then said `no checkpoint was
    saved after the signal`, exit 1. The rank now records the tag that `latest` names (``<pid>.saved``) before
    the evaluation and when it stops after a save; nothing without a checkpoint."""
    from megamythos.training.pretrain import Trainer

    monkeypatch.setenv(EXIT_RECORDS_ENV, str(tmp_path))
    Trainer.record_saved(types.SimpleNamespace(last_good=None))
    assert list(tmp_path.iterdir()) == []
    Trainer.record_saved(types.SimpleNamespace(last_good=tmp_path.parent / "ckpt" / "iter_0000020"))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {f"{os.getpid()}.saved": "iter_0000020"}


@pytest.mark.launch
def test_profile_dir_holds_a_trace_and_an_op_table_of_the_steps_asked_for(corpus, tmp_path):
    profiles = tmp_path / "profile"
    out = run_single([*tiny_args(corpus, 3), "--eval-interval", "0", "--profile-dir", str(profiles),
                      "--profile-step-start", "2", "--profile-step-end", "3"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in profiles.iterdir()) == ["steps_2-3_rank_0.json", "steps_2-3_rank_0.txt"]
    trace = json.loads((profiles / "steps_2-3_rank_0.json").read_text())
    assert any(event.get("name") == "aten::mm" for event in trace["traceEvents"])
    assert "aten::mm" in (profiles / "steps_2-3_rank_0.txt").read_text()
    assert f"profile of steps 2-3: {profiles / 'steps_2-3_rank_0'}.json" in out.stderr


@pytest.mark.launch
def test_exit_duration_stops_a_long_run_with_a_checkpoint(corpus, tmp_path):
    """A run of 100,000 steps given 0.15 minutes (start-up included) saves the step it reached and exits 0."""
    save = tmp_path / "ckpt"
    out = run_single([*tiny_args(corpus, 100_000), "--exit-duration-in-mins", "0.15", "--eval-interval", "0",
                      "--save", str(save)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--exit-duration-in-mins 0.15 reached" in out.stderr
    reached = int(re.search(r"stopping at iteration (\d+)", out.stderr).group(1))
    assert 0 < reached < 100_000 and read_latest(save) == f"iter_{reached:07d}"


# ------------------------------------------------------------------------------------------ checkpoint files
WATCHING_RANK = """
import sys, time
from pathlib import Path
from megamythos.training.signals import LauncherWatch
watch = LauncherWatch(lambda reason: Path(sys.argv[1]).write_text(reason), interval=0.1)
Path(sys.argv[1] + ".part").write_text(" ".join(str(p.pid) for p in watch.watched))
Path(sys.argv[1] + ".part").rename(sys.argv[1] + ".ready")  # whole: the test reads it as soon as it exists
time.sleep(60)
"""


@pytest.mark.parametrize("marker", ["deepspeed/launcher/launch.py", "nohup"])
def test_launcher_watch_reports_the_end_of_a_launcher_only(marker, tmp_path):
    """A rank whose launcher (by command line) is killed with kill -9 is told within a second; the end of an
    ancestor that is not a launcher (the user's shell, nohup) says nothing."""
    assert (marker in " ".join(LAUNCHER_MARKERS)) == (marker != "nohup")
    launcher = tmp_path / marker
    launcher.parent.mkdir(parents=True, exist_ok=True)
    rank = tmp_path / "rank.py"
    rank.write_text(WATCHING_RANK)
    launcher.write_text(f"import subprocess, sys\nsubprocess.run([sys.executable, {str(rank)!r}, sys.argv[1]])\n")
    report = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(launcher), str(report)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{report}.ready").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        watched = Path(f"{report}.ready").read_text().split()
        assert watched == ([str(proc.pid)] if marker != "nohup" else [])
        proc.kill()
        proc.wait()
        time.sleep(1.0)
        assert report.exists() == (marker != "nohup")
        if report.exists():
            assert report.read_text() == f"launcher process {proc.pid} ended"
    finally:
        proc.kill()
        for child in psutil.process_iter(["cmdline"]):
            if str(rank) in " ".join(child.info["cmdline"] or []):
                child.kill()


def test_latest_pointer_is_atomic_and_validated(tmp_path):
    assert read_latest(tmp_path) is None
    write_atomic(tmp_path / "latest", "iter_0000002")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_latest(tmp_path)
    (tmp_path / "iter_0000002").mkdir()
    assert read_latest(tmp_path) == "iter_0000002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000002", "latest"]  # no temp file left


def test_a_temporary_of_latest_left_by_a_killed_save_is_removed_by_the_next_write(tmp_path):
    """A save killed (kill -9, the node lost) during its write of ``latest`` left the hidden temporary for good
    (found 2026-12-06). The next write of ``latest`` removes those of this host's dead processes; a live
    process's (a save in progress) stays."""
    dead = tmp_path / f"latest.tmp.{socket.gethostname()}.{dead_pid()}"
    live = tmp_path / f"latest.tmp.{socket.gethostname()}.{os.getppid()}"
    for leftover in (dead, live):
        leftover.write_text("iter_00")
    write_atomic(tmp_path / "latest", "iter_0000002")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["latest", live.name])


def saved_tags(save_dir: Path, *iterations: int, partial: tuple[int, ...] = ()) -> None:
    """Tags of ``save_dir`` as saves leave them: complete (with ``checksums.json``), or ``partial`` (a killed save)."""
    for i in (*iterations, *partial):
        (save_dir / f"iter_{i:07d}").mkdir()
        if i not in partial:
            (save_dir / f"iter_{i:07d}" / CHECKSUMS_FILE).write_text("{}")


def test_keep_last_k_prunes_oldest_and_never_the_current(tmp_path):
    saved_tags(tmp_path, 2, 4, 6, 8)
    (tmp_path / "unrelated").mkdir()
    CheckpointManager(tmp_path, keep_last=2)._prune(keep="iter_0000008")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000006", "iter_0000008", "unrelated"]


def test_keep_last_keeps_complete_tags_not_a_killed_save(tmp_path):
    """A save killed at iteration 37 (at a job's time limit) left a partial iter_37; resumed from 30, the run saves
    40: iter_37 counted among the newest 3 and the complete iter_20 was pruned, leaving 2 checkpoints to go back
    to (found 2026-12-06). Only complete tags count; a partial one goes once older than the kept ones."""
    saved_tags(tmp_path, 20, 30, 40, partial=(37,))
    CheckpointManager(tmp_path, keep_last=3)._prune(keep="iter_0000040")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"iter_{i:07d}" for i in (20, 30, 37, 40)]
    saved_tags(tmp_path, 50)
    CheckpointManager(tmp_path, keep_last=3)._prune(keep="iter_0000050")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"iter_{i:07d}" for i in (30, 37, 40, 50)]
    saved_tags(tmp_path, 60)
    CheckpointManager(tmp_path, keep_last=3)._prune(keep="iter_0000060")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"iter_{i:07d}" for i in (40, 50, 60)]


def test_a_resume_in_another_precision_names_the_flag(tmp_path):
    """``--no-bf16`` on the resume of a bf16 run: DeepSpeed looked for fp32 shard names and the run stopped with
    "could not load checkpoint ...: FileNotFoundError", as if the checkpoint were damaged (found 2026-12-06)."""
    tag = tmp_path / "iter_0000020"
    tag.mkdir()
    write_atomic(tmp_path / "latest", tag.name)
    (tag / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    check_saved_precision(tmp_path, bf16=True)
    with pytest.raises(CheckpointError, match=r"written with bf16 weights; this run uses fp32: resume it with --bf16,"):
        check_saved_precision(tmp_path, bf16=False)
    (tag / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").rename(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    check_saved_precision(tmp_path, bf16=False)
    with pytest.raises(CheckpointError, match=r"written with fp32 weights; this run uses bf16: resume it with --no-bf"):
        check_saved_precision(tmp_path, bf16=True)
    # ZeRO-0 with AutoEP: DeepSpeed's expp_rank_* optimizer files have one name in any precision; a bf16 run was
    # refused its own resume as "written with fp32 weights" (found 2026-12-06)
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").rename(tag / "expp_rank_0_mp_rank_00_optim_states.pt")
    check_saved_precision(tmp_path, bf16=True)
    # a ZeRO-0 run's optimizer of one precision cannot read the other's state (KeyError 'param_groups', found
    # 2026-12-07): its train record says the precision it trained in, which wins over the files' names
    (tag / "train_args.json").write_text(json.dumps({"zero_stage": 0, PRECISION_KEY: False}))
    check_saved_precision(tmp_path, bf16=False)
    with pytest.raises(CheckpointError, match=r"written with fp32 weights; this run uses bf16: resume it with --no-bf"):
        check_saved_precision(tmp_path, bf16=True)


def test_keep_last_counts_no_tag_newer_than_the_one_saved(tmp_path):
    """A run resumed from iter_20 (iter_40 was bad) saves 35 and 37: iter_40 counted among the newest 2 and the good
    iter_35 was pruned (found 2026-12-06). Tags past the one just saved are left alone and not counted."""
    saved_tags(tmp_path, 20, 35, 37, 40)
    CheckpointManager(tmp_path, keep_last=2)._prune(keep="iter_0000037")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000035", "iter_0000037", "iter_0000040"]


def test_checkpoint_of_another_preset_is_refused():
    small = get_preset("small")
    trained = small.replace(max_loops=32)
    check_model_config(trained.to_dict(), trained.replace(mean_loops=16, checkpoint_loops=True), "x")  # run-time
    # max_loops 0 means 2 x mean_loops: the rows of the per-loop tables, a shape (found 2026-12-06: a size mismatch)
    with pytest.raises(CheckpointError, match=r"max_loops \(default 2 x --mean-loops\): checkpoint 8 vs run 12\); .*"
                                              r"to change --mean-loops, pass --override max_loops=8 too"):
        check_model_config(small.replace(mean_loops=4).to_dict(), small.replace(mean_loops=6), "x")
    check_model_config(small.replace(mean_loops=4).to_dict(), small.replace(mean_loops=6, max_loops=8), "x")
    with pytest.raises(CheckpointError, match=r"different model \(.*dim: checkpoint 768 vs run 2048"):
        check_model_config(small.to_dict(), get_preset("1b"), "ckpt/iter_0000010")
    written_before = {k: v for k, v in small.to_dict().items() if k != "capacity_router"}  # a field added later
    check_model_config(written_before, small, "x")  # its default is what the network did then
    with pytest.raises(CheckpointError, match="capacity_router: checkpoint 'change' vs run 'learned'"):
        check_model_config(written_before, small.replace(capacity_router="learned"), "x")


def test_a_resume_that_changes_how_the_loops_train_names_each_setting():
    """A tiny run saved before 2026-12-01 (backprop_loops 0, the preset's then) and resumed with its own command line
    trained on with truncated backprop through 2 loops, today's preset, without a word (found 2026-12-08). The
    loop settings a resume changes are named with the overrides that keep the checkpoint's; a field the checkpoint
    lacks (added since) reads as its default, and the activation checkpointing fields are no change."""
    tiny = get_preset("tiny")
    written_before = {k: v for k, v in tiny.replace(backprop_loops=0).to_dict().items() if k != "sample_depth"}
    line = training_change(written_before, tiny, "runs/tiny/checkpoints/iter_0000400")
    assert line and "checkpoint runs/tiny/checkpoints/iter_0000400 with other loop settings" in line
    assert "(backprop_loops 0 -> 2; " in line and "pass --override backprop_loops=0 (in place of a flag" in line
    assert training_change(written_before, tiny.replace(backprop_loops=0), "x") is None
    assert training_change(tiny.to_dict(), tiny.replace(checkpoint_loops=True, max_loops=8), "x") is None
    fixed = tiny.replace(sample_depth=False, loop_capacity=(1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25))
    line = training_change(fixed.to_dict(), tiny, "x")
    assert "(sample_depth false -> true, loop_capacity 1.0,1.0,0.5,0.5,0.5,0.5,0.25,0.25 -> (empty); " in line
    overrides = re.findall(r"--override (\S+)", line)
    assert parse_args([f"--override={o}" for o in overrides]).model_config() == fixed  # they give it back


def test_a_resume_of_another_model_names_a_new_run_folder_too():
    """A user who trained the default run and then trains on their own data without a new folder resumed
    runs/tiny and was told only to repeat its --preset/--override (found 2026-12-07, a new user's first hour): the
    refusal also names the new-run way out. A ``--finetune`` source must match the shapes, so it says no more."""
    trained = get_preset("tiny")
    new_run = trained.replace(vocab_size=2000)
    with pytest.raises(CheckpointError, match=r"vocab_size: checkpoint 8192 vs run 2000\); use the same "
                                              r"--preset/--override as the run that wrote it, or start a new run in "
                                              r"another folder \(--save DIR; the launchers' RUN_DIR=runs/NAME\)$"):
        check_model_config(trained.to_dict(), new_run, "runs/tiny/checkpoints/iter_0000400")
    with pytest.raises(CheckpointError, match=r"as the run that wrote it$"):
        check_model_config(trained.to_dict(), new_run, "runs/tiny/checkpoints", finetune=True)


def test_finetune_may_set_the_context_and_how_it_trains_anew_but_no_shape(tmp_path):
    """``--finetune`` starts a new run from the weights: a long-context phase (longer ``max_seq_len``, another RoPE
    base) or other balance-loss coefficients are its own settings. Before 2026-12-06 they were refused as "a
    different model" (`--finetune ... --seq-length 1024 --override max_seq_len=1024` could not start); a resume
    still refuses them, and a fine-tuning run any field that shapes a weight."""
    from safetensors.torch import save_model

    from megamythos.checkpoint.reader import CONFIG_FILE, MODEL_FILE, load_state
    from megamythos.model.lm import MythosLM
    from megamythos.training.checkpointing import pretrained_state
    from tests.helpers import small_config

    trained = small_config()
    source = tmp_path / "export"
    source.mkdir()
    original = MythosLM(trained)
    save_model(original, str(source / MODEL_FILE))
    trained.to_json(source / CONFIG_FILE)
    new_run = trained.replace(max_seq_len=1024, rope_theta=5e5, expert_bias_update_rate=0.0, seq_aux_loss_coef=0.0,
                              router_z_loss_coef=1e-3, init_std=0.01, exit_threshold=0.1)
    model = load_state(MythosLM(new_run), pretrained_state(str(source), new_run, None), source)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))
    with pytest.raises(CheckpointError, match=r"max_seq_len: checkpoint 64 vs run 1024"):
        check_model_config(trained.to_dict(), new_run, "x")  # a resume continues the run it names
    for shape in (dict(n_experts=4), dict(capacity_router="learned"), dict(attn_type="gqa"), dict(lora_rank=2)):
        with pytest.raises(CheckpointError, match=f"{next(iter(shape))}: checkpoint"):
            pretrained_state(str(source), trained.replace(**shape), None)

# ------------------------------------------------------------------------------------------------ dry run
def test_1t_dry_run_validates_layout_and_prints_plan_and_command():
    """The plan, then the refusal: the trainer builds the whole model on every rank (3.3 TiB each in fp32) and
    moves each rank's share to the GPU whole (94.6 GiB) before ZeRO-3 partitions it."""
    cmd = ["bash", str(REPO / "launchers" / "pretrain_1t.sh"), "--data-path", "/data/x_text_document", "--dry-run"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=launch_env(), cwd=REPO)  # --dry-run anywhere
    assert out.returncode == 2
    assert "8 rank(s) of a node (--host-memory-gb 2048)" in one_error_line(out.stderr)
    larger = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                            env={**launch_env(), "HOST_MEMORY_GB": "30000", "GPU_MEMORY_GB": "141"})
    assert larger.returncode == 0, larger.stderr
    assert json.loads(larger.stdout) == json.loads(out.stdout)
    plan = json.loads(out.stdout)
    assert plan["layout"]["world_size"] == 1024 and plan["layout"]["dp"] == 1024 and plan["layout"]["tp"] == 1
    assert plan["layout"]["experts_per_ep_rank"] == 2 and plan["layout"]["hpz"] == 1  # AutoEP refuses hpZ
    from megamythos.model.params import count
    assert plan["total"] == count(get_preset("1t")).total
    assert 80e9 / 2**30 < plan["memory_plan"]["startup_device_gib"] < plan["memory_plan"]["total_gib"] < 141e9 / 2**30
    assert plan["fits"] == {"141 GB": True}
    assert plan["step_plan"]["step_seconds"] > plan["step_plan"]["compute_seconds"] > 0
    assert plan["command"].startswith("deepspeed --hostfile hostfile --num_nodes 128 --num_gpus 8 --module "
                                      "megamythos.training.launch --preset 1t")
    run_dir = REPO / "runs" / "1t"  # the run keeps and resumes its checkpoints there unless --save is given
    assert plan["command"].endswith(f"--data-path /data/x_text_document --save {run_dir}/checkpoints --load "
                                    f"{run_dir}/checkpoints --tensorboard-dir {run_dir}/tensorboard --metrics-file "
                                    f"{run_dir}/metrics.jsonl")
    # found 2026-12-07: without --save, the run folder's four flags were added after the user's, so the user's own
    # --load or --metrics-file was replaced by the run folder's (the last one wins)
    own = subprocess.run([*cmd, "--load", "/data/other", "--metrics-file", "/tmp/m.jsonl"], capture_output=True,
                         text=True, cwd=REPO, env={**launch_env(), "HOST_MEMORY_GB": "30000"})
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["command"].endswith(
        f"--load /data/other --metrics-file /tmp/m.jsonl --save {run_dir}/checkpoints --tensorboard-dir "
        f"{run_dir}/tensorboard")
    for args in (cmd[:2] + ["--dry-run"], cmd[:4]):  # without --dry-run the refusal comes before any launch
        bad = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env={**launch_env(), "EP": "3"})
        assert bad.returncode == 2 and "not divisible by expert-parallel size ep=3" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    # found 2026-12-06: abc was bash's "abc: unbound variable"; found 2026-12-07 (bad-input sweep): 0 was refused as
    # the planner's "argument --gpus: must be >= 1", a flag the user never gave, and 08 as bash's octal
    for name, value in (("NODES", "abc"), ("NODES", "0"), ("NODES", "08"), ("GPUS_PER_NODE", "0")):
        word = subprocess.run(cmd[:2] + ["--dry-run"], capture_output=True, text=True, cwd=REPO,
                              env={**launch_env(), name: value})
        assert word.returncode == 2 and word.stderr == f"error: {name}={value}: give a whole number >= 1\n", word.stderr
    nowhere = subprocess.run(cmd[:4], capture_output=True, text=True, cwd=REPO,
                             env={**launch_env(), "HOSTFILE": str(REPO / "no-such-hostfile"),
                                  "HOST_MEMORY_GB": "30000", "GPU_MEMORY_GB": "141"})
    assert nowhere.returncode == 2 and nowhere.stderr.startswith("error: hostfile "), nowhere.stderr  # not DeepSpeed's
    tight = subprocess.run(cmd[:2] + ["--dry-run"], capture_output=True, text=True, cwd=REPO,
                           env={**launch_env(), "EP": "8", "TP": "1", "HOST_MEMORY_GB": "30000"})
    assert tight.returncode != 0 and "does not fit" in tight.stderr


def test_1t_run_starts_its_ranks_as_the_other_launchers_do(tmp_path: Path) -> None:
    """Found 2026-12-07 (read; no cluster here): the 1t launcher ran the trainer module on each rank, without
    launchers/pretrain.sh's rank start-up (PYTHONPATH, TORCH_EXTENSIONS_DIR, OpenMP threads), and no
    TORCH_NCCL_* or CUDA_DEVICE_MAX_CONNECTIONS reached the other nodes (slurm.sbatch's DS_ENV_FILE). A stand-in
    deepspeed prints its command and the environment file every node gets."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "deepspeed").write_text('#!/bin/sh\necho deepspeed "$@"\ncat "$DS_ENV_FILE"\n')
    (tmp_path / "bin" / "deepspeed").chmod(0o755)
    (tmp_path / "hostfile").write_text("".join(f"n{i} slots=8\n" for i in range(128)))
    (tmp_path / ".deepspeed_env").write_text("NCCL_IB_HCA=mlx5\n")
    env = {key: value for key, value in launch_env().items() if "NCCL" not in key}
    env.update(PATH=f"{tmp_path / 'bin'}:{env['PATH']}", HOME=str(tmp_path), HOSTFILE=str(tmp_path / "hostfile"),
               HOST_MEMORY_GB="30000", RUN_DIR=str(tmp_path / "run"), TORCH_NCCL_BLOCKING_WAIT="1")
    out = subprocess.run(["bash", str(REPO / "launchers" / "pretrain_1t.sh"), "--data-path", "/data/x"], env=env,
                         capture_output=True, text=True, cwd=tmp_path / "bin", timeout=120)
    assert out.returncode == 0, out.stderr
    command, *node_env = out.stdout.splitlines()[1:]  # the script prints the command, then runs it
    assert command.startswith("deepspeed --hostfile ") and " --module megamythos.training.launch " in command
    assert node_env[:4] == ["NCCL_IB_HCA=mlx5", "OMP_NUM_THREADS=1", f"RUN_DIR={tmp_path / 'run'}",
                            "TORCH_NCCL_BLOCKING_WAIT=1"]  # launch_env's thread count, set in this shell
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in node_env and "CUDA_DEVICE_MAX_CONNECTIONS=1" in node_env


# --------------------------------------------------------------------------------- bad input, before training
@pytest.mark.parametrize("extra, message", [
    (["--data-path", "{prefix}", "--override", "vocab_size=300"],
     "tokenized with a 384-token vocabulary but the model has vocab_size=300; pass --override vocab_size=384 (or "
     "more: a padded vocabulary)"),
    (["--data-path", "/nonexistent/corpus_text_document"], "dataset '/nonexistent/corpus_text_document' not found"),
    (["--ep", "3"], "world size 1 is not divisible by expert-parallel size ep=3"),
])
@pytest.mark.launch
def test_bad_input_is_a_clear_error_before_training(extra, message, corpus, tmp_path):
    prefix = corpus_prefix(corpus)
    out = run_single([*tiny_args(corpus, 2), *(a.replace("{prefix}", prefix) for a in extra)], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.launch
@pytest.mark.parametrize("precision", [["--zero", "3"], ["--zero", "0", "--no-bf16"]], ids=["zero3", "zero0-fp32"])
def test_diverged_run_skips_nonfinite_steps_then_aborts_with_a_message(corpus, tmp_path, precision):
    """Weights of scale 1e30: the RMS-normed loss stays finite but every gradient norm overflows; ZeRO-3
    discards each step, the guard counts them and aborts at the third in a row. No checkpoint is taken inside the
    streak: before 2026-12-06 every save went on, and pruned the good checkpoints from before the streak. ZeRO-0
    in fp32 has no such discard in DeepSpeed (its plain optimizer applied the non-finite gradient, found
    2026-12-06): the trainer discards the step itself."""
    out = run_single([*tiny_args(corpus, 5), "--override", "init_std=1e30", "--max-nonfinite", "3", *precision,
                      "--save", str(tmp_path / "ckpt"), "--save-interval", "1"], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "iteration 1: non-finite gradient, step skipped (1 in a row, 1 in total)" in out.stderr
    assert "iteration 2: checkpoint withheld during a run of non-finite steps; latest stays on none" in out.stderr
    assert "3 consecutive steps had a non-finite loss or gradient (last at iteration 3)" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "ckpt" / "latest").exists()


def test_shm_buffers_own_released_and_those_of_dead_runs_removed(monkeypatch, tmp_path):
    """DeepSpeed's CPU shm allreduce never removes its 66 MB /dev/shm buffer: the trainer unlinks its rank's at
    exit, and a launch removes this user's buffers that no live process maps (ranks killed with -9)."""
    import mmap

    from megamythos.training.shm import SHM, release_own_buffer, remove_stale_buffers

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")  # a port no real run uses
    monkeypatch.setenv("RANK", "7")
    monkeypatch.setenv("LOCAL_RANK", "7")
    if not SHM.is_dir():
        pytest.skip("no /dev/shm")
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_1_"
    mine, live, dead, fresh = (SHM / f"{name}{rank}" for rank in (7, 6, 5, 4))
    with socket.socket() as store:  # a live job's rank 0 listens on the port its buffers' names carry
        store.bind(("127.0.0.1", 0))
        store.listen()
        starting = SHM / f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{store.getsockname()[1]}_1"
        paths = (mine, live, dead, fresh, starting)
        for path in paths:
            path.write_bytes(b"x" * 4096)
        old = time.time() - 3600
        for path in (mine, live, dead, starting):
            os.utime(path, (old, old))
        try:
            release_own_buffer()
            assert not mine.exists() and live.exists()
            with open(live, "r+b") as f, mmap.mmap(f.fileno(), 4096):  # a live rank maps its buffer
                # a buffer being written (not mapped yet) is young, and one of a job whose store listens is kept
                removed = remove_stale_buffers()  # and any other dead run's buffers on this machine
                assert dead.name in removed and not {p.name for p in (live, fresh, starting)} & set(removed)
                assert live.exists() and fresh.exists() and starting.exists() and not dead.exists()
        finally:
            for path in paths:
                path.unlink(missing_ok=True)


def test_a_long_first_step_says_what_it_is_doing(caplog):
    """Under --compile the first step compiles for about a minute: the trainer logs a line every 10 s of it."""
    from megamythos.training.monitor import still_working

    caplog.set_level("INFO", logger="megamythos.training.monitor")
    with still_working("compiling the first step", every=0.05):
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("still compiling the first step")]
    assert len(lines) >= 3, lines
    caplog.clear()
    time.sleep(0.15)
    assert not caplog.records  # it stops with the block


def test_only_the_first_step_of_a_launch_is_announced_as_compiling(monkeypatch):
    """Under --compile only a launch's first step compiles: the steps after its periodic saves do not, and must
    not be announced as "compiling the first step" (at a large model's minutes per step, a line every 10 s after
    each save). The trainer's loop runs for real; the step, the saves and the engine are stand-ins."""
    from contextlib import nullcontext

    from megamythos.training import pretrain
    from megamythos.training.divergence import DivergenceGuard
    from megamythos.training.signals import NonFiniteGuard

    trainer = pretrain.Trainer.__new__(pretrain.Trainer)
    trainer.args = parse_args(["--compile", "--save-interval", "2", "--eval-interval", "0"])
    trainer.iteration, trainer.consumed, trainer.total_iters, trainer.rank, trainer.saved_order = 0, 0, 6, 0, None
    trainer.last_good = None  # no --save
    trainer.layout = types.SimpleNamespace(micro_batch_size=1)
    trainer.dp_rank, trainer.dp_size = 0, 1
    trainer.schedule = types.SimpleNamespace(warmup_warning=lambda: None)
    trainer.engine = types.SimpleNamespace(train=lambda: None)
    trainer.monitor = types.SimpleNamespace(close=lambda: None)
    trainer.guard, trainer.divergence = NonFiniteGuard(5), DivergenceGuard(97, 0, 0, 1, 1)
    saved = []
    trainer.datasets = lambda: (None, None, None)
    trainer.evaluate_at_end = lambda *args: None

    def train_step(data):
        trainer.iteration += 1
        return {"lm_loss": 1.0}

    trainer.train_step, trainer.log_step = train_step, lambda step, seconds: None
    trainer.save_or_stop = lambda signals, due: (due and not saved.append(trainer.iteration), False, False)
    announced = []  # the steps run inside still_working

    def still_working(what):
        announced.append(trainer.iteration + 1)
        return nullcontext()

    monkeypatch.setattr(pretrain, "still_working", still_working)
    monkeypatch.setattr(pretrain, "batches", lambda *args: iter(()))
    monkeypatch.setattr(pretrain, "GracefulExit", lambda minutes: types.SimpleNamespace(restore=lambda: None))
    assert trainer.run() == 0
    assert saved == [2, 4, 6] and announced == [1]


def test_a_persistently_slow_rank_is_named_once_with_its_host(caplog):
    """Megatron's straggler detector names the slow rank and its host. Min and max over ranks of the step compute
    time, the rank of the max; a warning once the same rank stays 1.25x the fastest for 10 steps in a row, and
    only once per rank: a streak broken by a fast step or by another slowest rank starts again."""
    from megamythos.training.monitor import STRAGGLER_STEPS, StragglerWatch, rank_timers

    assert rank_timers([0.2, 0.5, 0.3]) == {"timers/step-compute-min": 0.2, "timers/step-compute-max": 0.5,
                                            "timers/slowest-rank": 1.0}
    caplog.set_level("WARNING", logger="megamythos.training.monitor")
    watch = StragglerWatch(["node-a", "node-b"])
    steps = ([[0.1, 0.2]] * (STRAGGLER_STEPS - 1) + [[0.1, 0.11]]  # a step within 1.25x breaks the streak
             + [[0.1, 0.2]] * (STRAGGLER_STEPS - 1) + [[0.2, 0.1]]  # so does another slowest rank
             + [[0.1, 0.2]] * (STRAGGLER_STEPS - 1))
    for iteration, compute in enumerate(steps, 1):
        watch.observe(rank_timers(compute), iteration)
    assert not caplog.records
    for iteration in range(len(steps) + 1, len(steps) + 30):  # a streak, a fast step, then another streak
        watch.observe(rank_timers([0.1, 0.1 if iteration == len(steps) + 15 else 0.2]), iteration)
    assert [r.getMessage()[:71] for r in caplog.records] == [
        "rank 1 on host node-b is a straggler: its step compute time was 1.25x t"]
    assert f"iteration {len(steps) + 1}: 200.0 ms against 100.0 ms" in caplog.records[0].getMessage()


def test_an_idle_expert_is_named_once_after_one_over_rate_steps(caplog):
    """An expert no token reached for ceil(1 / rate) steps in a row (its bias has risen by more than any router score
    difference) is named once per launch; a step with a token breaks its streak, a step that routed no token at
    all (every micro-batch skipped) neither counts nor breaks it."""
    from megamythos.training.monitor import IDLE_EXPERT_STEPS, IdleExpertWatch

    assert IdleExpertWatch(4, 0.0).steps == IDLE_EXPERT_STEPS and IdleExpertWatch(4, 1e-3).steps == 1000
    caplog.set_level("WARNING", logger="megamythos.training.monitor")
    watch = IdleExpertWatch(4, 0.25)
    steps = [(2,)] * 3 + [()] + [(2, 3)] * 2 + [(0, 1, 2, 3)] + [(2, 3)] * 2 + [(3,)] * 5
    for iteration, idle in enumerate(steps, 1):
        watch.observe(idle, iteration)
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(
        "routed expert(s) 2, 3 of 4 received no token for 4 steps in a row (iterations 5-9), although the aux")
    assert "raised their selection bias by 0.25 per step, 1 in all" in caplog.records[0].getMessage()


def test_a_resumed_run_logs_each_iteration_once(tmp_path):
    """A launch killed after its last checkpoint had logged iterations the resumed run logs again: metrics.jsonl
    held them twice and TensorBoard overlapped (found 2026-12-06). Records after the resume point are dropped
    (a cut last line too) and TensorBoard purges them, on the iteration and the samples axis each."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megamythos.training.monitor import TrainingMonitor

    metrics_file, tb = tmp_path / "metrics.jsonl", tmp_path / "tb"
    first = TrainingMonitor(True, str(tb), str(metrics_file))
    first.record({"iteration": 7, "rollback": 1})  # history a rollback left behind it stays
    for iteration in range(1, 6):
        first.scalars({"lm loss": 10.0 - iteration}, iteration, iteration * 4)
        first.record({"iteration": iteration, "lm loss": 10.0 - iteration})
    first.close()
    with open(metrics_file, "a") as handle:
        handle.write('{"iteration": 6, "lm lo')  # killed mid-line
    resumed = TrainingMonitor(True, str(tb), str(metrics_file), start_iteration=3, start_samples=12)
    resumed.scalars({"lm loss": 0.5}, 4, 16)
    resumed.record({"iteration": 4, "lm loss": 0.5})
    resumed.close()
    lines = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [7, 1, 2, 3, 4] and lines[-1]["lm loss"] == 0.5
    events = EventAccumulator(str(tb))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lm loss")] == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 0.5)]
    # the twins on the samples axis keep every point up to the resume (found 2026-12-06: the iteration purge
    # removed those past sample 4, here all but the first)
    samples = EventAccumulator(str(tb / "samples"))
    samples.Reload()
    assert [(e.step, e.value) for e in samples.Scalars("lm loss vs samples")] == [(4, 9.0), (8, 8.0), (12, 7.0),
                                                                                   (16, 0.5)]


def test_records_after_the_resume_point_are_cut_from_the_end_of_a_long_metrics_file(tmp_path):
    """Found 2026-12-06: every resume read the whole metrics file into memory and wrote it again (1.7 s and 600 MB
    for 200k records). It is now read from its end, a growing tail at a time, and truncated: here the records to
    drop fill more than the first 1 MiB tail, and the bytes kept are the same bytes."""
    from megamythos.training.monitor import drop_records_after

    path = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps({"iteration": i, "lm loss": 1.0 / i}) + "\n" for i in range(1, 40001))
    path.write_text(text + '{"iteration": 40001, "lm')
    kept = text[:text.index('{"iteration": 10001,')]
    assert drop_records_after(path, 10000) == 30001 and path.read_text() == kept
    assert drop_records_after(path, 10000) == 0 and path.read_text() == kept


def test_an_event_file_with_nothing_past_the_resume_point_is_read_from_its_end_only(tmp_path, monkeypatch):
    """Found 2026-12-07: every resume (and rollback) parsed every TensorBoard event the run had ever logged to find
    what to cut, a resume time that grows with the run (2.2 KB and 59 us per step of the tiny preset: a minute per
    1M steps). An earlier launch's file whose last summary is at or before the resume point has nothing to drop
    and is read from its end only; a file with steps past it is still cut there, and a cut last record (a killed
    writer) still sends its file through the whole scan."""
    from tensorboard.compat.proto.event_pb2 import Event

    from megamythos.training.monitor import TrainingMonitor, drop_events_after, last_event

    tb = tmp_path / "tb"
    for steps in (range(1, 101), range(101, 121)):  # an earlier launch's file, then the killed launch's
        monitor = TrainingMonitor(True, str(tb), None, start_iteration=steps[0] - 1)
        for iteration in steps:
            monitor.scalars({"lm loss": 1.0}, iteration, iteration)
        monitor.close()
    earlier, killed = sorted(tb.glob("events.out.tfevents.*"), key=lambda path: int(path.name.rsplit(".", 1)[1]))
    kept = earlier.read_bytes()
    parsed = []
    parse = Event.FromString
    monkeypatch.setattr(Event, "FromString", staticmethod(lambda data: parsed.append(len(data)) or parse(data)))
    assert drop_events_after(tb, 110) > 0
    assert earlier.read_bytes() == kept and len(parsed) < 40  # the killed launch's 21 records, 1 of the earlier's
    with open(killed, "rb") as handle:
        assert last_event(handle).step == 110
    at = 0
    while at < len(kept):  # TFRecord: u64 length, u32 CRC, data, u32 CRC
        last, at = at, at + 16 + int.from_bytes(kept[at:at + 8], "little")
    with open(earlier, "ab") as handle:
        handle.write(kept[last:last + 20])  # a record cut by a killed writer
    with open(earlier, "rb") as handle:
        assert last_event(handle) is None
    assert drop_events_after(tb, 50) > 0 and earlier.stat().st_size < len(kept)


def test_tensorboard_shows_each_step_once_after_a_fresh_start_or_a_rollback(tmp_path):
    """Found 2026-12-06: a fresh run in a folder where an earlier launch had logged (and saved nothing) showed
    both curves over the same steps, and a rollback's retrained steps were drawn backwards over the ones it
    undid. A fresh start purges what TensorBoard holds there; a rollback, the steps after the tag it reloaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megamythos.training.monitor import TrainingMonitor

    tb = tmp_path / "tb"
    earlier = TrainingMonitor(True, str(tb), None)
    for iteration in range(1, 6):
        earlier.scalars({"lm loss": 20.0}, iteration, iteration)
    earlier.close()
    fresh = TrainingMonitor(True, str(tb), None)
    for iteration in range(1, 5):
        fresh.scalars({"lm loss": 10.0 - iteration}, iteration, iteration)
    fresh.rolled_back(2)  # the checkpoint of iteration 2 reloaded; 3 and 4 taken again
    for iteration in range(3, 5):
        fresh.scalars({"lm loss": 1.0}, iteration, iteration + 2)
    fresh.close()
    events = EventAccumulator(str(tb))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lm loss")] == [(1, 9.0), (2, 8.0), (3, 1.0), (4, 1.0)]


@pytest.mark.parametrize("ahead", [0, 1], ids=["same second", "another host's clock 1 s ahead"])
def test_a_writer_made_in_the_same_second_as_the_last_one_sorts_after_it(tmp_path, ahead):
    """Found 2026-12-07: TensorBoard reads a folder's event files in name order, and a name holds the second, the
    pid and the writer's number. A rollback's writer made in the same second as the last one, with a number of more
    digits (``...pid.10`` after ``...pid.9``), sorted before it: the earlier file, read last, purged the steps taken
    again from the curve. The new writer now waits for the next second where it would share one, and for the second
    after the last one's where that is later (a resume whose rank 0 is on a host with a clock behind the earlier
    one's: the steps taken again were lost from the curve, found 2026-12-07)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megamythos.training.monitor import TrainingMonitor

    tb = tmp_path / "tb"
    earlier = TrainingMonitor(True, str(tb), None)
    for iteration in range(1, 5):
        earlier.scalars({"lm loss": 10.0 - iteration}, iteration, iteration)
    earlier.close()
    [path] = tb.glob("events.out.tfevents.*")
    path.rename(tb / f"events.out.tfevents.{int(time.time()) + ahead:010d}.{socket.gethostname()}.{os.getpid()}.99999")
    resumed = TrainingMonitor(True, str(tb), None, start_iteration=2)
    for iteration in range(3, 5):
        resumed.scalars({"lm loss": 1.0}, iteration, iteration + 2)
    resumed.close()
    events = EventAccumulator(str(tb))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lm loss")] == [(1, 9.0), (2, 8.0), (3, 1.0), (4, 1.0)]


def test_an_event_file_stamped_far_past_the_clock_is_a_warning_not_a_long_wait(tmp_path, caplog):
    """A new writer waits for the clock to pass the newest event file's second, but not for an hour where the folder
    holds a file an hour ahead: it warns that TensorBoard will show that file's steps, and goes on."""
    from megamythos.training.monitor import MAX_STAMP_WAIT_S, wait_for_a_later_event_stamp

    (tmp_path / f"events.out.tfevents.{int(time.time()) + 3600:010d}.host.1.0").write_bytes(b"")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="megamythos.training.monitor"):
        wait_for_a_later_event_stamp(tmp_path)
    assert time.monotonic() - start < MAX_STAMP_WAIT_S
    assert re.search(r"holds an event file stamped 3[56]\d\d s past this host's clock", caplog.text), caplog.text


def test_a_fresh_start_keeps_the_earlier_events_as_a_run_of_their_own(tmp_path):
    """Found 2026-12-06: a fresh start only hid an earlier launch's events with ``purge_step``, which TensorBoard's
    default loader (RustBoard) ignores: a validation the earlier launch logged at step 10 stayed on the new run's
    curve, where the new run validated at 20 only. They now move into ``before-<UTC time>/``, as the metrics file
    is renamed aside."""
    from megamythos.training.monitor import TrainingMonitor

    tb = tmp_path / "tb"
    earlier = TrainingMonitor(True, str(tb), None)
    earlier.scalars({"lm loss": 20.0}, 1, 4)
    earlier.scalars({"lm loss validation": 20.0}, 10, 40)
    earlier.close()
    fresh = TrainingMonitor(True, str(tb), None)
    fresh.scalars({"lm loss validation": 5.0}, 20, 80)
    fresh.close()
    assert every_logged_step(tb, "lm loss validation") == [20]
    assert every_logged_step(tb / "samples", "lm loss validation vs samples") == [80]
    [kept] = tb.glob("before-*")
    assert every_logged_step(kept, "lm loss validation") == [10] and every_logged_step(kept, "lm loss") == [1]
    [kept_twins] = (tb / "samples").glob("before-*")
    assert every_logged_step(kept_twins, "lm loss validation vs samples") == [40]


def every_logged_step(log_dir: Path, tag: str) -> list[int]:
    """The steps of ``tag`` in every event file of ``log_dir``, in file order: what TensorBoard's default loader
    (RustBoard) draws for a tag that is not logged again at a step it already holds, ``purge_step`` or not."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    def written(path: Path) -> tuple[int, int]:  # events.out.tfevents.TIME.HOST.PID.N: N counts a process's writers
        return int(path.name.split(".")[3]), int(path.name.rsplit(".", 1)[1])

    return [event.step for path in sorted(log_dir.glob("events.out.tfevents.*"), key=written)
            for event in EventFileLoader(str(path)).Load()
            if any(value.tag == tag for value in event.summary.value)]


def test_tensorboard_files_hold_no_step_past_the_resume_point_or_a_rollback(tmp_path):
    """Found 2026-12-06: a launch killed at step 27 (checkpoint 20, a validation every 5 steps) resumed with
    ``--eval-interval 10`` showed the validation at 25 in TensorBoard's default view (``tensorboard --logdir``,
    RustBoard), which ignores the writer's ``purge_step``: only the Python loader hid it, and the metrics file had
    dropped it. The event files are now cut past the resume point (each axis) and past a rollback's tag."""
    from megamythos.training.monitor import TrainingMonitor

    tb = tmp_path / "tb"
    killed = TrainingMonitor(True, str(tb), None)
    for iteration in range(1, 8):
        killed.scalars({"lm loss": 1.0}, iteration, iteration * 4)
        if iteration % 5 == 0:
            killed.scalars({"lm loss validation": 1.0}, iteration, iteration * 4)
    killed.close()
    resumed = TrainingMonitor(True, str(tb), None, start_iteration=2, start_samples=8)
    for iteration in range(3, 7):
        resumed.scalars({"lm loss": 2.0}, iteration, iteration * 4)
    resumed.rolled_back(4)  # iterations 5 and 6 undone, then logged again
    resumed.scalars({"rollbacks": 1.0}, 6, 124)  # as the trainer logs it: at the step that diverged
    for iteration in range(5, 11):
        resumed.scalars({"lm loss": 3.0}, iteration, 100 + iteration * 4)
        if iteration % 10 == 0:
            resumed.scalars({"lm loss validation": 3.0}, iteration, 100 + iteration * 4)
    resumed.close()
    again = TrainingMonitor(True, str(tb), None, start_iteration=8, start_samples=132)  # killed after step 10
    again.scalars({"lm loss": 4.0}, 9, 136)
    again.close()
    assert every_logged_step(tb, "rollbacks") == [6]
    assert every_logged_step(tb, "lm loss") == list(range(1, 10))
    assert every_logged_step(tb, "lm loss validation") == []
    assert every_logged_step(tb / "samples", "lm loss validation vs samples") == []
    assert every_logged_step(tb / "samples", "lm loss vs samples") == [4, 8, 12, 16, 20, 24, 120, 124, 128, 132,
                                                                        136]


def test_a_non_finite_value_is_null_in_the_metrics_file(tmp_path):
    """Found 2026-12-07: the grad-norm of a step discarded for its non-finite gradient went into metrics.jsonl as a
    bare ``NaN`` token, which is no JSON: strict readers (JavaScript's JSON.parse, Go, serde_json) refused the
    line. TensorBoard leaves such values out; the metrics file writes null."""
    from megamythos.training.monitor import TrainingMonitor

    def strict(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    monitor = TrainingMonitor(True, None, str(tmp_path / "metrics.jsonl"))
    monitor.record({"iteration": 1, "lm loss": 5.0, "grad-norm": float("nan"), "mfu": float("inf"),
                    "recurrent/exit-share": [0.5, float("-inf")]})
    monitor.close()
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line, parse_constant=strict) == {"iteration": 1, "lm loss": 5.0, "grad-norm": None, "mfu": None,
                                                       "recurrent/exit-share": [0.5, None]}


def test_every_megatron_tag_has_its_vs_samples_twin(tmp_path):
    """Found 2026-12-06: ``batch-size`` and ``world-size`` had no ``vs samples`` twin, which Megatron-LM's
    training_log writes for both (and docs/training.md promised for each Megatron tag): a batch ramp or an elastic
    resume could not be read against the data consumed."""
    from megamythos.training.monitor import TrainingMonitor

    megatron = ("lm loss", "learning-rate", "grad-norm", "params-norm", "loss-scale", "batch-size", "world-size",
                "lm loss validation", "lm loss validation ppl")
    monitor = TrainingMonitor(True, str(tmp_path / "tb"), None)
    monitor.scalars(dict.fromkeys(megatron, 1.0), 1, 8)
    monitor.close()
    for tag in megatron:
        assert every_logged_step(tmp_path / "tb" / "samples", f"{tag} vs samples") == [8], tag


def test_a_run_from_scratch_keeps_the_records_it_finds_and_a_run_folder_is_not_saved_over(tmp_path):
    """Found 2026-12-06: ``--save x`` where x is another run's run folder (x/checkpoints/latest) trained on, shared
    its TensorBoard folder and cut its metrics.jsonl to nothing, "logged by a launch that ended after its last
    checkpoint" (a run from scratch dropped every record it found)."""
    from megamythos.training.checkpointing import check_run_dirs
    from megamythos.training.monitor import TrainingMonitor

    metrics_file = tmp_path / "metrics.jsonl"
    metrics_file.write_text('{"iteration": 1, "lm loss": 9.0}\n{"iteration": 2, "lm loss": 8.0}\n')
    fresh = TrainingMonitor(True, None, str(metrics_file))
    fresh.record({"iteration": 1, "lm loss": 7.0})
    fresh.close()
    assert [json.loads(line)["lm loss"] for line in metrics_file.read_text().splitlines()] == [7.0]
    kept = list(tmp_path.glob("metrics.jsonl.before-*"))
    assert len(kept) == 1 and kept[0].read_text().count("iteration") == 2
    (tmp_path / "checkpoints" / "iter_0000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("iter_0000004")
    with pytest.raises(CheckpointError, match=f"--save {tmp_path} is the run folder of another run, whose "
                                              "checkpoints are in .*checkpoints \\(latest iter_0000004\\)"):
        check_run_dirs(str(tmp_path), str(tmp_path), verify=False)
    check_run_dirs(str(tmp_path / "checkpoints"), str(tmp_path / "checkpoints"), verify=False)  # resuming it


def test_telemetry_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    """A full disk under the metrics file was an OSError traceback on rank 0 and, on the other ranks, a line that
    only said rank 0 ended (found 2026-12-06)."""
    from megamythos.data.atomic import OutputError
    from megamythos.training.monitor import TrainingMonitor

    monitor = TrainingMonitor(True, None, str(tmp_path / "metrics.jsonl"))
    monitor.metrics.close()
    monitor.metrics = open("/dev/full", "w")  # every flush fails with ENOSPC
    with pytest.raises(OutputError, match=r"^cannot write the metrics file /dev/full \(the disk is full\); free"):
        monitor.record({"iteration": 1})
    monitor.close()  # logs, does not raise


def test_a_tensorboard_write_that_fails_is_one_line_without_a_thread_traceback(tmp_path, monkeypatch):
    """TensorBoard writes from a thread of its own, which printed its traceback of a failed write (a full disk, a
    folder turned read-only) before the run's one-line error (found 2026-12-05)."""
    import threading

    from megamythos.data.atomic import OutputError
    from megamythos.training.monitor import TrainingMonitor

    reached_the_hook = []
    monkeypatch.setattr(threading, "excepthook", reached_the_hook.append)
    monitor = TrainingMonitor(True, str(tmp_path / "tb"), None)
    events = monitor.writer.file_writer.event_writer._async_writer
    events._writer._writer = open("/dev/full", "wb", buffering=0)  # every write of the event file: ENOSPC
    monitor.writer.add_scalar("lm loss", 1.0, 1)
    events._worker.join(timeout=30)  # the writer thread fails on it, and ends
    assert not events._worker.is_alive()
    with pytest.raises(OutputError, match=r"^cannot write TensorBoard \(the disk is full\); free"):
        monitor.scalars({"lm loss": 1.0}, 2, 2)
    assert reached_the_hook == []
    threading.excepthook(types.SimpleNamespace(exc_value=ValueError("x"), thread=threading.current_thread()))
    assert len(reached_the_hook) == 1  # other threads' errors still reach the hook installed before
    monitor.close()


def test_the_validation_samples_do_not_depend_on_the_run_length_or_interval(corpus):
    """Every validation reads the first eval_iters global batches of the validation set; the set was sized for
    every validation of the run, so a longer --train-iters or another --eval-interval on resume rebuilt it over
    more epochs and the validation curve jumped to other samples (found 2026-12-06: 0 of 32 samples the same)."""
    from megamythos.data.pretraining import DataSources, batches, build_datasets
    from megamythos.training.arguments import parse_args

    def first_validation(iters: int, interval: int) -> torch.Tensor:
        args = parse_args([*tiny_args(corpus, iters), "--split", "100,3,0", "--eval-interval", str(interval),
                           "--eval-iters", "4"])
        _, valid, _ = build_datasets(args.data_recipe(), DataSources([corpus_prefix(corpus)]), iters, 8)
        return torch.cat([next(it)[0] for it in [batches(valid, 0, 8, 0, 1)] for _ in range(4)])

    reference = first_validation(400, 100)
    for iters, interval in ((20000, 100), (400, 5)):
        assert torch.equal(first_validation(iters, interval), reference), (iters, interval)


def test_a_resume_that_changes_the_sample_order_is_named():
    """A resume with another --seed, --split, --seq-length or data path reads another sample order at the same
    consumed-sample count; it trained on without a word (found 2026-12-06)."""
    from megamythos.data.pretraining import DataRecipe, DataSources, recipe_change

    saved = {"split": "969,30,1", "seq_length": 256, "seed": 1234, "eval_interval": 0}
    same = DataRecipe(split="969,30,1", seq_length=256, seed=1234, eval_interval=100)  # not an order setting
    assert recipe_change(saved, DataSources(["/d/a"]), same, DataSources(["/d/a"]), "ckpt") is None
    other = DataRecipe(split="900,90,10", seq_length=64, seed=7)
    assert recipe_change(saved, DataSources(["/d/a"]), other, DataSources(["0.5", "/d/a", "0.5", "/d/b"]),
                         "ckpt") == (
        "the data settings differ from ckpt's: split 969,30,1 -> 900,90,10, seq_length 256 -> 64, seed 1234 -> 7, "
        "data path /d/a -> 0.5 /d/a 0.5 /d/b")
    assert recipe_change({}, None, other, DataSources(["/d/a"]), "ckpt") is None  # a record from before these were kept


def test_the_run_s_datasets_at_other_paths_are_no_change_of_sample_order():
    """A run resumed on another machine, its data copied under another prefix (the same .bin and .idx), reads the
    same sample order: found 2026-12-07, the resume warned that it read another one and to resume with the saved
    data path, and switched off the check of its next samples' tokens. Datasets of other shapes or weights at the
    new paths are still a change of order."""
    from megamythos.data.pretraining import DataRecipe, DataSources, data_moved, recipe_change

    saved = {"split": "969,30,1", "seq_length": 256, "seed": 1234}
    recipe = DataRecipe(split="969,30,1", seq_length=256, seed=1234)
    before = DataSources(["0.3", "/old/a", "0.7", "/old/b"])
    shapes = {"/old/a": {"sequences": 5, "documents": 5, "tokens": 90}, "/old/b": {"sequences": 2, "documents": 2,
                                                                                   "tokens": 30}}
    copied = DataSources(["0.3", "/new/a", "0.7", "/new/b"])
    found = {path.replace("old", "new"): shape for path, shape in shapes.items()}
    moved = data_moved(before, shapes, copied, found, "ckpt")
    assert moved == ("the data path changed since ckpt was saved: 0.3 /old/a 0.7 /old/b -> 0.3 /new/a 0.7 /new/b, "
                     "datasets of the sequences, documents and tokens it recorded")
    assert recipe_change(saved, before, recipe, copied, "ckpt", moved=True) is None
    assert data_moved(before, shapes, before, shapes, "ckpt") is None  # the same paths: nothing moved
    swapped = dict(reversed(found.items()))  # other datasets under the blend's weights
    reweighted = DataSources(["0.5", "/new/a", "0.5", "/new/b"])
    grown = {**found, "/new/b": {"sequences": 4, "documents": 4, "tokens": 60}}
    for sources, now in ((copied, swapped), (reweighted, found), (copied, grown), (DataSources(["/new/a"]), found)):
        assert data_moved(before, shapes, sources, now, "ckpt") is None, (sources, now)
        assert recipe_change(saved, before, recipe, sources, "ckpt").startswith(
            "the data settings differ from ckpt's: data path 0.3 /old/a 0.7 /old/b -> ")
    assert data_moved(before, {}, copied, found, "ckpt") is None  # a checkpoint that recorded no shapes


def test_a_blend_whose_samples_the_new_rule_changed_is_not_blamed_on_the_data():
    """A checkpoint saved before blends followed Megatron-LM (no "sample_rule": rule 1) and resumed with an unweighted
    blend, a single weighted --data-path or 8 weights reads other samples from its checkpoint on. Found 2026-12-07:
    the warning said the datasets held other tokens (restore the data), which they did not. Forms whose samples the
    rule did not change keep the reasons of the test below."""
    from megamythos.data.gpt_dataset import SAMPLE_RULE, samples_changed_with_rule
    from megamythos.data.pretraining import order_change

    assert SAMPLE_RULE == 2
    changed = [["A", "B"], ["1.0", "A"], [x for i in range(8) for x in ("0.1", f"D{i}")]]
    same = [["A"], ["A", "A"], ["0.3", "A", "0.7", "B"]]
    assert all(samples_changed_with_rule(p) for p in changed) and not any(samples_changed_with_rule(p) for p in same)
    assert not samples_changed_with_rule(["1.0", "A"], one_weighted=False)  # a per-split path reads it as A
    rule = order_change(None, True, 2, 8, 4, rule_changed=True)
    assert rule.startswith("the checkpoint was saved by an earlier megamythos, which blended this run's datasets by "
                           "another rule; this one builds the samples Megatron-LM builds from them"), rule
    assert "from iteration 2 on the run reads those" in rule and "other tokens" not in rule


def test_other_tokens_under_the_run_s_data_paths_are_not_blamed_on_its_length():
    """The samples after a checkpoint differ from those it recorded (its order fingerprint) for one of two reasons:
    the training set spans another number of epochs, or the data holds other tokens of the same shapes (rebuilt under
    the same prefix with its documents in another order; the copy at a new path of :func:`data_moved`). Found
    2026-12-07: the same command on reordered data was told to resume with the saved --train-iters and
    --global-batch-size, which it had. A checkpoint records the samples its training set was asked for; the same count
    over the same documents and seed is the same order, so a difference there is the data."""
    from megamythos.data.pretraining import order_change

    data = order_change(None, True, 2, 8, 4)
    assert data.startswith("the datasets hold other tokens than when the checkpoint was saved, as many sequences, "
                           "documents and tokens"), data
    assert data.endswith("the samples from iteration 2 on are not those the run would have read; restore the data it "
                         "read"), data
    for same in (False, None):  # another order, or not known (a checkpoint saved before it recorded its count)
        assert order_change(None, same, 2, 8, 4).startswith(
            "the training set was built again for 8 steps of 4 samples and reads another sample order from iteration "
            "2 on")
    moved = order_change("the data path changed since ckpt was saved: /a -> /b, ...", True, 2, 8, 4)
    assert moved.startswith("the data path changed since ckpt was saved: /a -> /b, ..., but they hold other tokens")


def test_a_moved_run_resumed_for_more_epochs_is_not_told_its_copy_holds_other_tokens(tmp_path: Path) -> None:
    """Found 2026-12-07 (review): a run folder resumed on an exact copy of its data at another path, with a
    --train-iters whose training set spans more epochs (200000 steps: 54), was told that the copy holds other tokens
    and to give --data-path a copy of the data it read, which it had. The training set's epochs for the checkpoint's
    sample count tell the two causes apart for one dataset: a count of the same epochs (a few more steps) reads the
    same order, so a difference there is the data."""
    from megamythos.data.pretraining import DataRecipe, DataSources, build_datasets, order_change, same_sample_order

    prefix = make_dataset(tmp_path / "P", 50)
    train, _, _ = build_datasets(DataRecipe(split="90,5,5", seq_length=16, seed=1), DataSources([prefix]), 4, 2,
                                 with_valid=False)
    asked = train.num_samples
    assert same_sample_order(train, asked + 1, asked) is True  # a few samples more: the same epochs
    per_epoch = train.tokens_per_epoch // 16
    assert same_sample_order(train, 10 * per_epoch, asked) is False and same_sample_order(train, None, asked) is None
    moved = "the data path changed since ckpt was saved: /a -> /b, ..."
    assert order_change(moved, False, 2, 8, 4).startswith(
        "the training set was built again for 8 steps of 4 samples and reads another sample order from iteration 2 on")
    assert order_change(moved, None, 2, 8, 4).startswith(f"{moved}, but they hold other tokens")
