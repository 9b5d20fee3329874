"""Model benchmarks on CPU: megamythos against the OpenMythos 0.5.0 reference and a FLOP-matched dense GPT.

Runs in a bench environment that holds torch 2.13 (CPU), ``open-mythos==0.5.0 --no-deps`` and ``transformers``;
our package is imported from the checkout (``PYTHONPATH=.``), so both models are timed in one run. Without the
reference (the project's own environment) only the modes that leave it out run (``--modes`` without
``reference*``, ``--moe-expert-dims ''``); anything else is refused in one line, exit 2:

    PYTHONPATH=. python bench/bench_model.py speed  --out bench/results/model.json
    PYTHONPATH=. python bench/bench_model.py speed  --device cuda --modes ... --out ...   # on a GPU (gpu_session.sh)
    PYTHONPATH=. python bench/bench_model.py params --out bench/results/params.json

``speed`` times, with interleaved repetitions (the order rotates every round) and medians:
  * a full train step (forward, loss, backward, AdamW) of the tiny preset, ours against the reference at
    identical widths and exactly T executed loop iterations (counted with forward hooks on both models);
  * the MoE layer fwd+bwd at 64 experts top-4, ours against the reference's ``MoEFFN``;
  * the tiny preset against a dense pre-norm GPT whose training FLOPs per token equal ours.
By default the models share this process, whose allocator keeps freed memory as the CPU trainer does
(:func:`megamythos.runtime.host_memory.keep_freed_memory`; ``--glibc-defaults`` leaves glibc's dynamic mmap
threshold, under which each model's speed depends on what the other freed before it); ``--isolate`` runs each
train-step mode in a worker process of its own, under the same setting, the rounds still interleaved.
``params`` counts the reference presets on the meta device next to ours (analytic, ``megamythos.model.params``, which
tests/test_params.py checks part by part against our meta-device model).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from megamythos.errors import UserError, run_cli
from megamythos.model.config import ModelConfig, get_preset, parse_override
from megamythos.model.layers import weights_cast_once
from megamythos.model.lm import MythosLM, compile_blocks
from megamythos.model.moe import MoE, MoEOutput, update_expert_bias
from megamythos.model.params import count, parts
from megamythos.research.baselines import DenseLM, dense_params, dense_train_flops_per_token
from megamythos.runtime.device import cpu_model, resolve_device
from megamythos.runtime.host_memory import keep_freed_memory

om: ModuleType | None  # the reference, which lives only in the bench environment (bench/README.md, "Commands")
try:
    import open_mythos as om
except ImportError as err:
    om, REFERENCE_IMPORT_ERROR = None, str(err)

# A timed call: returns None (timed by the caller) or the seconds it measured itself (a worker process's step).
Step = Callable[[], Any]
# Issue 26's goals for the train step (ours' best mode against the reference's, and small's share of the ceiling);
# the MoE layer's and the dense comparison's are their own issues'.
GOALS = {"train_step_vs_reference": 1.5, "moe_vs_reference": 5.0, "vs_dense_equal_flops": 0.5,
         "share_of_bf16_matmul_ceiling": 0.6}
TRAIN_MODES = ["ours_matched", "ours_bf16", "ours_bf16_autocast", "ours_bf16_compiled", "reference",
               "reference_bf16_autocast", "ours_preset", "dense_gpt"]
PRESET_NAMES = ["1b", "3b", "10b", "50b", "100b", "500b", "1t"]


class BenchArgumentError(UserError):
    """A mode that does not exist, or one that needs the reference package where it is not importable."""


def is_reference(mode: str) -> bool:
    """Whether train-step ``mode`` runs the reference model."""
    return mode.startswith("reference")


# ------------------------------------------------------------------------------------------------ timing
def time_interleaved(steps: dict[str, Step], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of every step: ``warmup`` untimed calls each, then ``rounds`` rounds that call each step
    once, the order rotated by one every round so that no step always runs after the same neighbour. A step that
    returns a float reports its own seconds (a step in another process: without the round trip)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            measured = steps[name]()
            elapsed = time.perf_counter() - start
            seconds[name].append(measured if isinstance(measured, float) else elapsed)
    return seconds


def summarise(seconds: list[float], tokens: int, flops_per_token: float) -> dict[str, Any]:
    """Median step time, tokens/s and achieved GFLOP/s at that median, and the raw samples."""
    median = statistics.median(seconds)
    return {"median_s": median, "tokens_per_s": tokens / median,
            "gflops_per_s": flops_per_token * tokens / median / 1e9, "samples_s": seconds}


def synchronized(step: Step, device: str) -> Step:
    """``step`` followed by a wait for the device's queued work, so that a host clock around it times the work
    (a no-op on the CPU)."""
    if torch.device(device).type != "cuda":
        return step

    def run() -> Any:
        measured = step()
        torch.cuda.synchronize(device)
        return measured

    return run


def ceiling_size(device: str) -> int:
    """Side of the square matmul that measures the compute ceiling: 1024 on a CPU core, 8192 to fill a GPU."""
    return 8192 if torch.device(device).type == "cuda" else 1024


def matmul_step(n: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Step:
    """An n x n x n matmul on random data: the compute ceiling of the device in ``dtype`` under the same load."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return synchronized(lambda: torch.mm(a, b), device)


def aten_ops_per_call(step: Step) -> int:
    """ATen ops (nested calls included) one call of ``step`` dispatches, counted with the profiler, which
    unlike a dispatch mode leaves compiled code on its compiled path."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return sum(1 for event in prof.events() if event.name.startswith("aten::"))


class CallCounter:
    """Counts forward calls of a module (used to prove how many loop iterations really ran)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.calls += 1


def train_step(model: nn.Module, loss_of: Callable[[], torch.Tensor], after: Step | None = None) -> Step:
    """One optimizer step: loss_of() -> backward -> AdamW -> zero grads, then ``after`` (e.g. a bias update).
    Every model gets torch's fused AdamW, the CPU trainer's optimizer (``ds_configs/cpu-debug.json``)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        loss_of().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after is not None:
            after()

    return step


def ratio(numerator: dict[str, Any], denominator: dict[str, Any], goal_key: str) -> dict[str, Any]:
    """tokens/s ratio of two summaries (of medians) against its goal, and the median of the per-round ratios
    (both ran in the same round, so this one cancels load that drifts between rounds)."""
    value = numerator["tokens_per_s"] / denominator["tokens_per_s"]
    paired = statistics.median(d / n for n, d in zip(numerator["samples_s"], denominator["samples_s"]))
    return {"ratio": value, "paired_ratio": paired, "goal": GOALS[goal_key], "met": value >= GOALS[goal_key]}


# ------------------------------------------------------------------------------------------------ configs
def reference_shared_experts(config: ModelConfig) -> int:
    """Reference shared experts are each K * expert_dim wide; the count whose total width covers ours."""
    return -(-config.n_shared_experts // config.num_experts_per_tok)


def matched_configs(base: ModelConfig, seq: int, loops: int, with_reference: bool) -> tuple[ModelConfig, Any]:
    """Our preset and an OpenMythos config with identical layer widths and loop count (None without
    ``with_reference``: the reference package is needed only to build it).

    The reference hard-codes two widths that ours configures, so ours takes the reference's values: the dense
    prelude/coda SwiGLU is dim*4//3 wide, and each shared expert is K*expert_dim wide (ours: one SwiGLU of
    n_shared*expert_dim, so n_shared = K * reference count). The reference always adds a loop-index signal on
    dim//8 channels (ours switches it on) and always has an ACT halting head (ours has none: it exits by state
    convergence at inference, which costs nothing in training). All loops get gradients, no checkpointing.
    """
    ref_shared = reference_shared_experts(base)
    ours = base.replace(max_seq_len=max(seq, base.max_seq_len), mean_loops=loops, max_loops=loops,
                        backprop_loops=0, checkpoint_loops=False, loop_embedding=True,
                        loop_embedding_dim=base.dim // 8, ffn_dim=base.dim * 4 // 3,
                        n_shared_experts=ref_shared * base.num_experts_per_tok)
    if not with_reference:
        return ours, None
    reference = om.MythosConfig(
        vocab_size=ours.vocab_size, dim=ours.dim, n_heads=ours.n_heads, n_kv_heads=ours.n_kv_heads,
        max_seq_len=ours.max_seq_len, max_loop_iters=loops, prelude_layers=ours.prelude_layers,
        coda_layers=ours.coda_layers, attn_type="mla", kv_lora_rank=ours.kv_lora_rank,
        q_lora_rank=ours.q_lora_rank, qk_rope_head_dim=ours.qk_rope_head_dim,
        qk_nope_head_dim=ours.qk_nope_head_dim, v_head_dim=ours.v_head_dim, n_experts=ours.n_experts,
        n_shared_experts=ref_shared, n_experts_per_tok=ours.num_experts_per_tok, expert_dim=ours.expert_dim,
        rope_theta=ours.rope_theta, lora_rank=ours.lora_rank, dropout=0.0)
    return ours, reference


def dense_gpt_config(ours: ModelConfig, seq: int, loops: int) -> tuple[ModelConfig, int]:
    """A dense GPT as deep as ours runs (prelude + loops + coda layers), same width, full multi-head attention,
    with the SwiGLU width solved so that its training FLOPs per token equal ours at (seq, loops)."""
    n_layers = ours.prelude_layers + loops + ours.coda_layers
    target = count(ours, seq_len=seq, n_loops=loops).train_flops_per_token
    mha = ours.replace(attn_type="gqa", n_kv_heads=ours.n_heads, head_dim=0, ffn_dim=1)
    base = dense_train_flops_per_token(mha, n_layers, seq)
    per_unit_width = dense_train_flops_per_token(mha.replace(ffn_dim=2), n_layers, seq) - base
    return mha.replace(ffn_dim=1 + round((target - base) / per_unit_width)), n_layers


# ------------------------------------------------------------------------------------------------ benchmarks
def ours_step(model: MythosLM, ids: torch.Tensor, labels: torch.Tensor, loops: int, autocast: bool = False) -> Step:
    """Our training step: CE + aux loss (MoE balance), AdamW, aux-loss-free expert-bias update. A model in
    bf16 trains as under DeepSpeed's bf16 section: bf16 weights and activations (the optimizer here updates
    the bf16 weights; DeepSpeed's fp32 master copy adds one cast per step, not timed), fp32 LTI state. With
    ``autocast``: fp32 weights, the forward under bf16 autocast with each weight cast once per forward
    (``weights_cast_once``), as a user of the model class runs it."""
    def loss_of() -> torch.Tensor:
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast), weights_cast_once():
            out = model(ids, labels=labels, n_loops=loops)
        return out.loss + out.aux_loss

    return train_step(model, loss_of, lambda: update_expert_bias(model, model.config.expert_bias_update_rate))


def reference_step(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, loops: int,
                   autocast: bool = False) -> Step:
    """Reference training step (with ``autocast``: under bf16 autocast, its best mode). Passing a (fresh,
    empty) kv_cache is the reference's own switch that disables its ACT early exit, so every one of the
    ``loops`` iterations runs; the cache only stores detached latents."""
    def loss_of() -> torch.Tensor:
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(ids, n_loops=loops, kv_cache={})
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))

    return train_step(model, loss_of)


@dataclass(frozen=True)
class TrainSetup:
    """What every train-step mode is built from: the configs (``reference`` None when no reference mode is
    benchmarked), the batch shape and the loop count."""
    ours: ModelConfig
    reference: Any
    preset: ModelConfig
    dense: ModelConfig
    dense_layers: int
    batch: int
    seq: int
    loops: int
    device: str = "cpu"

    @classmethod
    def of(cls, preset: ModelConfig, batch: int, seq: int, loops: int, device: str, modes: list[str]) -> TrainSetup:
        ours, reference = matched_configs(preset, seq, loops, with_reference=any(map(is_reference, modes)))
        preset = preset.replace(max_seq_len=max(seq, preset.max_seq_len))
        dense, dense_layers = dense_gpt_config(preset, seq, loops)
        return cls(ours, reference, preset, dense, dense_layers, batch, seq, loops, device)


def build_train_modes(setup: TrainSetup, modes: list[str]) -> tuple[dict[str, nn.Module], dict[str, Step]]:
    """The models of ``modes`` (names in ``TRAIN_MODES``) and their train steps, all on one fixed random batch
    (seed 0, so every process that builds a mode trains it on the same tokens), on ``setup.device``; a step
    returns once the device has finished it. Each model but the dense GPT carries a :class:`CallCounter` on its
    recurrent block as ``model.block_calls``."""
    device = torch.device(setup.device)
    torch.manual_seed(0)
    ids = torch.randint(0, setup.ours.vocab_size, (setup.batch, setup.seq)).to(device)
    labels = torch.randint(0, setup.ours.vocab_size, (setup.batch, setup.seq)).to(device)
    builders: dict[str, Callable[[], nn.Module]] = {
        "ours_matched": lambda: MythosLM(setup.ours),
        "ours_bf16": lambda: MythosLM(setup.ours).bfloat16(),
        "ours_bf16_autocast": lambda: MythosLM(setup.ours),
        "ours_bf16_compiled": lambda: MythosLM(setup.ours).bfloat16(),
        "reference": lambda: om.OpenMythos(setup.reference),
        "reference_bf16_autocast": lambda: om.OpenMythos(setup.reference),
        "ours_preset": lambda: MythosLM(setup.preset),
        "dense_gpt": lambda: DenseLM(setup.dense, setup.dense_layers)}
    models = {name: builders[name]().to(device).train() for name in modes if name in builders}
    if "ours_bf16_compiled" in models:
        compile_blocks(models["ours_bf16_compiled"])
    steps: dict[str, Step] = {}
    for name, model in models.items():
        if name != "dense_gpt":
            model.block_calls = CallCounter(model.recurrent.block)
        if name.startswith("ours"):
            steps[name] = ours_step(model, ids, labels, setup.loops, autocast=name.endswith("autocast"))
        elif is_reference(name):
            steps[name] = reference_step(model, ids, labels, setup.loops, autocast=name.endswith("autocast"))
        else:
            steps[name] = train_step(model, lambda model=model: model(ids, labels).loss)
    return models, {name: synchronized(step, setup.device) for name, step in steps.items()}


def mode_report(name: str, model: nn.Module, step: Step) -> dict[str, Any]:
    """After the timed rounds: the recurrent block's forward calls so far, the reference's parameters as built
    (ours are counted analytically) and, for ours, the ATen ops one step dispatches (one more step)."""
    return {"block_calls": model.block_calls.calls if name != "dense_gpt" else None,
            "params": reference_params(model) if is_reference(name) else None,
            "aten_ops_per_step": aten_ops_per_call(step) if name.startswith("ours") else None}


def _serve_mode(conn: Connection, name: str, setup: TrainSetup, threads: int, glibc_defaults: bool) -> None:
    """Worker process of :class:`IsolatedStep`: builds one mode, then answers "step" with the seconds one train
    step took here and "report" with :func:`mode_report`, after which it exits."""
    torch.set_num_threads(threads)
    if not glibc_defaults:
        keep_freed_memory()
    models, steps = build_train_modes(setup, [name])
    conn.send("ready")
    while conn.recv() == "step":
        start = time.perf_counter()
        steps[name]()
        conn.send(time.perf_counter() - start)
    conn.send(mode_report(name, models[name], steps[name]))
    conn.close()


class IsolatedStep:
    """One train-step mode in a process of its own, as a user trains one model per process: its allocator,
    caches and compiled code are not shared with the other modes. Calling it runs one step there and returns
    the seconds the step took there (without the pipe's round trip)."""

    def __init__(self, name: str, setup: TrainSetup, threads: int, glibc_defaults: bool) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve_mode, args=(child, name, setup, threads, glibc_defaults),
                                       daemon=True)
        self.process.start()
        child.close()

    def wait_ready(self) -> None:
        if self.conn.recv() != "ready":
            raise RuntimeError("a benchmark worker did not start")

    def __call__(self) -> float:
        self.conn.send("step")
        return self.conn.recv()

    def report(self) -> dict[str, Any]:
        self.conn.send("report")
        report = self.conn.recv()
        self.process.join()
        return report


def bench_train(preset: ModelConfig, batch: int, seq: int, loops: int, rounds: int, warmup: int,
                modes: list[str], isolate: bool = False, threads: int = 1,
                glibc_defaults: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Train-step tokens/s of the ``modes`` (names below): ours vs the reference (matched widths) in fp32,
    bf16, bf16 autocast and bf16 compiled (ours) / bf16 autocast (reference), our preset vs a FLOP-matched dense
    GPT, and the fp32 and bf16 matmul ceilings of the device (:func:`ceiling_size`) in the same rounds. With
    ``isolate`` every mode runs in a process of its own (:class:`IsolatedStep`), the rounds still interleaved;
    else all share this process."""
    setup = TrainSetup.of(preset, batch, seq, loops, device, modes)
    steps: dict[str, Step]
    if isolate:
        workers = {name: IsolatedStep(name, setup, threads, glibc_defaults) for name in modes}
        for worker in workers.values():
            worker.wait_ready()
        steps = dict(workers)
    else:
        models, steps = build_train_modes(setup, modes)
    n = ceiling_size(device)
    fp32_ceiling, bf16_ceiling = f"matmul_{n}", f"matmul_{n}_bf16"
    steps[fp32_ceiling] = matmul_step(n, device=device)
    steps[bf16_ceiling] = matmul_step(n, torch.bfloat16, device)
    seconds = time_interleaved(steps, rounds, warmup)
    reports = {name: workers[name].report() if isolate else mode_report(name, models[name], steps[name])
               for name in modes}
    for name, report in reports.items():  # exactly `loops` block calls per step, no early exit, no recompute
        calls = report["block_calls"]
        assert calls is None or calls == loops * (rounds + warmup), f"{name}: {calls} block calls"
    matched_flops = count(setup.ours, seq_len=seq, n_loops=loops).train_flops_per_token
    preset_flops = count(setup.preset, seq_len=seq, n_loops=loops).train_flops_per_token
    flops = {name: preset_flops if name == "ours_preset" else matched_flops for name in modes}
    if "dense_gpt" in modes:
        flops["dense_gpt"] = dense_train_flops_per_token(setup.dense, setup.dense_layers, seq)
    params = {"ours_matched": count(setup.ours).total, "ours_preset": count(setup.preset).total,
              "dense_gpt": dense_params(setup.dense, setup.dense_layers)}
    results = {name: {**summarise(seconds[name], batch * seq, flops[name]),
                      "params": reports[name]["params"] or params.get(name, params["ours_matched"]),
                      "train_flops_per_token": flops[name]} for name in modes}
    for name in (fp32_ceiling, bf16_ceiling):
        matmul_s = statistics.median(seconds[name])
        results[name] = {"median_s": matmul_s, "gflops_per_s": 2.0 * n ** 3 / matmul_s / 1e9}
    out: dict[str, Any] = {
        "shape": {"batch": batch, "seq": seq, "loops": loops, "executed_loops_per_step": loops},
        "processes": "one per mode" if isolate else "one for all modes",
        "configs": {"ours": setup.ours.to_dict(),
                    **({"reference": vars(setup.reference)} if setup.reference is not None else {}),
                    "ours_preset": setup.preset.to_dict(),
                    "dense_gpt": {**setup.dense.to_dict(), "n_layers": setup.dense_layers}},
        "results": results,
        "aten_ops_per_step": {name: report["aten_ops_per_step"] for name, report in reports.items()
                              if name.startswith("ours")},
    }
    ours = [name for name in modes if name.startswith("ours_") and name != "ours_preset"]
    refs = [name for name in modes if is_reference(name)]
    if ours and refs:
        best_ours = max(ours, key=lambda name: results[name]["tokens_per_s"])
        best_ref = max(refs, key=lambda name: results[name]["tokens_per_s"])
        # At equal training FLOPs no implementation beats the reference by more than the bf16 matmul ceiling of
        # the core over the reference's achieved FLOP/s: the bound on this ratio, measured in the same rounds.
        out["train_step_vs_reference"] = {
            "ours": best_ours, "reference": best_ref,
            **ratio(results[best_ours], results[best_ref], "train_step_vs_reference"),
            "bound_at_bf16_ceiling": results[bf16_ceiling]["gflops_per_s"] / results[best_ref]["gflops_per_s"]}
        out["share_of_bf16_matmul_ceiling"] = {
            "ours": best_ours,
            "share": results[best_ours]["gflops_per_s"] / results[bf16_ceiling]["gflops_per_s"],
            "goal": GOALS["share_of_bf16_matmul_ceiling"]}
    if {"ours_preset", "dense_gpt"} <= set(modes):
        out["vs_dense_equal_flops"] = {**ratio(results["ours_preset"], results["dense_gpt"], "vs_dense_equal_flops"),
                                       "flops_ratio": flops["ours_preset"] / flops["dense_gpt"]}
    return out


def moe_pair(dim: int, expert_dim: int, n_experts: int, top_k: int, ref_shared: int) -> tuple[nn.Module, nn.Module]:
    """Our MoE and the reference MoEFFN at the same widths (ours: one shared SwiGLU of the same total width),
    all weights N(0, 0.02) so both route near-uniformly."""
    ours = MoE(ModelConfig(dim=dim, n_experts=n_experts, num_experts_per_tok=top_k, expert_dim=expert_dim,
                           n_shared_experts=ref_shared * top_k))
    reference = om.MoEFFN(om.MythosConfig(dim=dim, n_experts=n_experts, n_experts_per_tok=top_k,
                                          expert_dim=expert_dim, n_shared_experts=ref_shared))
    for module in (ours, reference):
        for param in module.parameters():
            nn.init.normal_(param, std=0.02)
    return ours.train(), reference.train()


def moe_train_flops(dim: int, expert_dim: int, n_experts: int, top_k: int, shared: bool) -> float:
    """fwd+bwd FLOPs per token of the MoE layer: router, K routed SwiGLUs, the K*F-wide shared SwiGLU if any."""
    width = top_k * expert_dim * (2 if shared else 1)
    return 6.0 * (dim * n_experts + 3 * dim * width)


def fwd_bwd_step(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Step:
    """Forward on the leaf x, backward of a fixed output gradient into x and the weights."""
    def step() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        out = module(x)
        (out.hidden if isinstance(out, MoEOutput) else out).backward(grad_out)  # ours also returns its balance loss

    return step


def bench_moe(dim: int, expert_dim: int, n_experts: int, top_k: int, tokens: int, rounds: int,
              warmup: int, device: str = "cpu") -> dict[str, Any]:
    """MoE layer fwd+bwd tokens/s (fp32, on ``device``), with one reference shared expert (K*F wide) and
    routed experts only."""
    torch.manual_seed(0)
    x = torch.randn(1, tokens, dim, device=device, requires_grad=True)
    grad_out = torch.randn(1, tokens, dim, device=device)
    steps: dict[str, Step] = {}
    flops: dict[str, float] = {}
    for ref_shared in (1, 0):
        ours, reference = moe_pair(dim, expert_dim, n_experts, top_k, ref_shared)
        for name, module in ((f"ours_shared{ref_shared}", ours), (f"reference_shared{ref_shared}", reference)):
            steps[name] = synchronized(fwd_bwd_step(module.to(device), x, grad_out), device)
            flops[name] = moe_train_flops(dim, expert_dim, n_experts, top_k, bool(ref_shared))
    seconds = time_interleaved(steps, rounds, warmup)
    results = {name: summarise(s, tokens, flops[name]) for name, s in seconds.items()}
    return {
        "shape": {"dim": dim, "expert_dim": expert_dim, "n_experts": n_experts, "top_k": top_k, "tokens": tokens,
                  "reference_shared_expert_width": top_k * expert_dim},
        "results": results,
        "moe_vs_reference": ratio(results["ours_shared1"], results["reference_shared1"], "moe_vs_reference"),
        "moe_routed_only_vs_reference": ratio(results["ours_shared0"], results["reference_shared0"],
                                              "moe_vs_reference"),
    }


# ------------------------------------------------------------------------------------------------ parameters
def reference_params(reference: nn.Module, *paths: str) -> int:
    """Parameters of the reference model, or of its sub-modules at the dotted ``paths``: it has no analytic
    counter, so it is counted as built (on the meta device); ours come from :mod:`megamythos.model.params`."""
    modules = [reference.get_submodule(path) for path in paths] or [reference]
    return sum(p.numel() for module in modules for p in module.parameters())


def dense_ffn_paths(n_prelude: int, n_coda: int) -> list[str]:
    """Module paths of the reference's prelude and coda FFNs."""
    return [f"prelude.{i}.ffn" for i in range(n_prelude)] + [f"coda.{i}.ffn" for i in range(n_coda)]


def compare_preset_params(name: str) -> dict[str, Any]:
    """Total parameters of the reference preset (meta device) and ours (analytic), with the difference split
    into dense prelude/coda FFNs, shared experts, recurrent attention and the rest; KV-cache values per token."""
    ref_cfg = getattr(om, f"mythos_{name}")()
    ours_cfg = get_preset(name)
    with torch.device("meta"):
        reference = om.OpenMythos(ref_cfg)
    report, ours = count(ours_cfg), parts(ours_cfg)
    ref_dense = dense_ffn_paths(ref_cfg.prelude_layers, ref_cfg.coda_layers)
    d_dense = ours.dense_ffn - reference_params(reference, *ref_dense)
    d_shared = ours.shared_experts - reference_params(reference, "recurrent.block.ffn.shared_experts")
    d_attn = ours.recurrent_attention - reference_params(reference, "recurrent.block.attn")
    ref_total = reference_params(reference)
    diff = report.total - ref_total
    n_attn_layers = ref_cfg.prelude_layers + ref_cfg.coda_layers + ref_cfg.max_loop_iters
    return {"preset": name, "reference": ref_total, "ours": report.total, "diff": diff,
            "diff_dense_ffn": d_dense, "diff_shared_experts": d_shared, "diff_recurrent_attention": d_attn,
            "diff_rest": diff - d_dense - d_shared - d_attn,
            "ffn_dim": {"reference": ref_cfg.dim * 4 // 3, "ours": ours_cfg.resolved_ffn_dim},
            "shared_width": {"reference": ref_cfg.n_shared_experts * ref_cfg.n_experts_per_tok * ref_cfg.expert_dim,
                             "ours": ours_cfg.n_shared_experts * ours_cfg.expert_dim},
            "kv_cache_values_per_token": {
                "reference": n_attn_layers * (ref_cfg.kv_lora_rank + ref_cfg.n_heads * ref_cfg.qk_rope_head_dim),
                "ours": report.kv_cache_bytes_per_token // 2}}


def params_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`compare_preset_params` rows (parameters in billions unless marked)."""
    lines = ["| preset | reference | ours | ours − ref | Δ dense FFN | Δ shared experts | Δ MLA | Δ rest "
             "| KV-cache values/token ref → ours |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pct = 100 * r["diff"] / r["reference"]
        kv = r["kv_cache_values_per_token"]
        lines.append(f"| {r['preset']} | {r['reference'] / 1e9:.3f}B | {r['ours'] / 1e9:.3f}B | "
                     f"{r['diff'] / 1e9:+.3f}B ({pct:+.1f}%) | {r['diff_dense_ffn'] / 1e9:+.3f}B | "
                     f"{r['diff_shared_experts'] / 1e9:+.3f}B | {r['diff_recurrent_attention']} | "
                     f"{r['diff_rest']:+,} | {kv['reference']:,} → {kv['ours']:,} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI
def environment(threads: int, device: str) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None
    return {"torch": torch.__version__, "open_mythos": om and getattr(om, "__version__", "0.5.0"),
            "python": platform.python_version(), "cpu": cpu_model(), "gpu": gpu,
            "cpu_count": os.cpu_count(), "threads": threads, "load_avg_start": os.getloadavg()}


def summary(train: dict[str, Any], moe: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures: tokens/s, GFLOP/s and every ratio against its goal."""
    def figures(part: dict[str, Any]) -> dict[str, Any]:
        return {name: {key: round(r[key], 2) for key in ("tokens_per_s", "gflops_per_s") if key in r}
                for name, r in part["results"].items()}

    out: dict[str, Any] = {"train": figures(train), "aten_ops_per_step": train["aten_ops_per_step"],
                           **{key: train[key] for key in ("train_step_vs_reference", "share_of_bf16_matmul_ceiling",
                                                          "vs_dense_equal_flops") if key in train}}
    for part in moe:
        out[f"moe_F{part['shape']['expert_dim']}"] = {**figures(part), "vs_reference": part["moe_vs_reference"],
                                                      "routed_only_vs_reference": part["moe_routed_only_vs_reference"]}
    return out


def write_json(path: str, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def check_args(args: argparse.Namespace) -> None:
    """Before anything is built: ``--modes`` split into a list of known modes, ``--device`` one this machine has,
    and the reference package importable where the command benchmarks the reference (else a
    :class:`BenchArgumentError` naming the flags that need it)."""
    needs_reference = ["params (it counts the reference's presets)"] if args.command == "params" else []
    if args.command == "speed":
        args.modes = args.modes.split(",")
        unknown = [mode for mode in args.modes if mode not in TRAIN_MODES]
        if unknown:
            raise BenchArgumentError(f"--modes: no mode {', '.join(map(repr, unknown))}; choose from "
                                     f"{','.join(TRAIN_MODES)}")
        args.device = str(resolve_device(args.device))
        references = [mode for mode in args.modes if is_reference(mode)]
        needs_reference += [f"--modes {','.join(references)}"] if references else []
        if any(args.moe_expert_dims.split(",")):
            needs_reference.append(f"--moe-expert-dims {args.moe_expert_dims} (the MoE layer against the reference's)")
    if needs_reference and om is None:
        remedy = ("" if args.command == "params" else
                  "; or leave the reference out: --modes without reference* and --moe-expert-dims ''")
        raise BenchArgumentError(f"{' and '.join(needs_reference)} need{'s' if len(needs_reference) == 1 else ''} "
                                 "the reference package open_mythos, which "
                                 f"is not importable here ({REFERENCE_IMPORT_ERROR}): run in the bench environment "
                                 f"(bench/README.md, \"Commands\"){remedy}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed", help="train-step, MoE and dense-GPT timings")
    speed.add_argument("--preset", default="tiny")
    speed.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a preset field (JSON value), e.g. --set n_experts=64")
    speed.add_argument("--batch", type=int, default=2)
    speed.add_argument("--seq", type=int, default=512)
    speed.add_argument("--loops", type=int, default=4)
    speed.add_argument("--rounds", type=int, default=7)
    speed.add_argument("--moe-tokens", type=int, default=2048)
    speed.add_argument("--moe-expert-dims", default="256,128,64",
                       help="comma-separated expert widths, '' for none; the first is the headline (tiny: 256)")
    speed.add_argument("--moe-rounds", type=int, default=9)
    speed.add_argument("--warmup", type=int, default=1)
    speed.add_argument("--modes", default=",".join(TRAIN_MODES), help="comma-separated train-step modes")
    speed.add_argument("--threads", type=int, default=1)
    speed.add_argument("--device", default="cpu", help="where the models run: cpu (default) or cuda")
    speed.add_argument("--glibc-defaults", action="store_true", help="leave glibc malloc's settings as they are")
    speed.add_argument("--isolate", action="store_true",
                       help="run every train-step mode in a process of its own (rounds still interleaved), as a "
                            "user trains one model per process; by default all modes share this process")
    speed.add_argument("--out", default="bench/results/model.json")
    params = sub.add_parser("params", help="parameter counts of the presets against the reference")
    params.add_argument("--out", default="bench/results/params.json")
    args = parser.parse_args(argv)
    check_args(args)
    if args.command == "params":
        rows = [compare_preset_params(name) for name in PRESET_NAMES]
        write_json(args.out, {"presets": rows})
        print(params_table(rows))
        return 0
    torch.set_num_threads(args.threads)
    env = environment(args.threads, args.device)
    env["host_memory"] = "glibc defaults" if args.glibc_defaults else keep_freed_memory()
    base = get_preset(args.preset, **dict(parse_override(item) for item in args.set))
    moe = [bench_moe(base.dim, int(f), 64, 4, args.moe_tokens, args.moe_rounds, args.warmup, args.device)
           for f in args.moe_expert_dims.split(",") if f]
    train = bench_train(base, args.batch, args.seq, args.loops, args.rounds, args.warmup, args.modes,
                        isolate=args.isolate, threads=args.threads, glibc_defaults=args.glibc_defaults,
                        device=args.device)
    env["load_avg_end"] = os.getloadavg()
    payload = {"command": shlex.join(["bench/bench_model.py", *(argv if argv is not None else sys.argv[1:])]),
               "environment": env, "train": train, "moe": moe}
    write_json(args.out, payload)
    print(json.dumps(summary(train, moe), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, log_format=None))
