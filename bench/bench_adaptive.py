"""Adaptive depth at inference on CPU: what the exit rule saves in wall time, compacted and masked, against the
FLOP-ideal speedup.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_adaptive.py --load runs/tiny/checkpoints \
        --fixed-depth-steps 400 --out bench/results/adaptive.json

For each model — the default run's (``--load``) and, with ``--fixed-depth-steps N``, the depth study's model
trained N steps at fixed depth 4 on the stdlib corpus (:mod:`megamythos.research.study`) — and each (exit
threshold, loops) row, three tasks are timed on held-out text of the model's own tokenizer (the source of
Python's ``argparse`` and ``inspect`` modules):

* ``forward``: one batched forward of 8 x 128 tokens (prefill, ``evaluate``, lm-eval scoring);
* ``decode8`` / ``decode1``: greedy generation of 32 tokens (``--decode-tokens``) after a 16-token prompt at batch
  8 and 1 (cached, MLA absorbed decode).

Each task runs in three modes: ``every`` (threshold 0, every token runs every loop), ``masked`` (the exit rule
without compaction: exited tokens are frozen but still computed, a patch of
:func:`megamythos.model.recurrent.still_active`) and ``compact`` (the library: only active tokens computed).
Modes alternate within each repetition (order rotating); figures are medians. Speedups are against ``every``;
the FLOP-ideal speedup is F(loops) / F(mean executed loops, mean frozen loops) with F = :func:`megamythos.model.
params.forward_flops_per_token`, and ``share_of_ideal`` = speedup / ideal. Frozen loops (``frozen_loops``) are the
iterations an exited token spends while its batch runs on, in each of which compaction still computes its
keys/values; they are counted for the forward, while decode's ideal counts the executed loops alone (its cache
entries at the loop indices a token skipped are left out).

``training``: one training step (forward, loss, backward, AdamW) of the tiny preset in bf16 weights on 4 x 128
tokens with the trainer's model settings (``parse_args([]).model_config()``: backprop through the last 2 loops,
no recomputation of them), for the default recipe at its mean depth (4 loops) against loop capacity at the same
mean depth (6 loops, capacities 1, 1, 1, 0.5, 0.25, 0.25), alternating; tokens/s over all repetitions, and the
training FLOPs per token of :func:`megamythos.model.params.count`.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import torch

import megamythos.model.recurrent as recurrent
from megamythos.errors import run_cli
from megamythos.inference.generate import SamplingConfig, generate
from megamythos.inference.loading import load_model
from megamythos.model.lm import MythosLM
from megamythos.model.params import count, forward_flops_per_token
from megamythos.runtime.device import cpu_model
from megamythos.training.arguments import parse_args

CAPACITY = (1.0, 1.0, 1.0, 0.5, 0.25, 0.25)
ROWS = [(0.2, 4), (0.2, 8), (0.1, 8), (0.05, 8)]  # (exit threshold, loops)
MODES = ("every", "masked", "compact")


def held_out_ids(encode: Callable[[str], list[int]], n_tokens: int) -> torch.Tensor:
    """n_tokens ids of Python source text (not the training corpus's order) -> [n_tokens]."""
    text = inspect.getsource(argparse) + inspect.getsource(inspect)
    ids = encode(text)
    if len(ids) < n_tokens:
        raise SystemExit(f"only {len(ids)} tokens of held-out text, {n_tokens} needed")
    return torch.tensor(ids[:n_tokens])


def run_task(model: MythosLM, task: str, ids: torch.Tensor, loops: int, threshold: float, mode: str,
             decode_tokens: int) -> tuple[float, float, float]:
    """(seconds, mean executed loops per token, mean frozen loops per token under compaction) of one task in one
    mode; frozen loops (:func:`megamythos.model.recurrent.computed_iterations`) are counted for the forward only."""
    exit_threshold = 0.0 if mode == "every" else threshold
    patch = (mock.patch.object(recurrent, "still_active", lambda active: None) if mode == "masked"
             else mock.patch.object(recurrent, "still_active", recurrent.still_active))
    with patch, torch.no_grad():
        start = time.perf_counter()
        if task == "forward":
            out = model(ids[:8 * 128].view(8, 128), n_loops=loops, exit_threshold=exit_threshold)
            depth = float(out.stats["mean_depth"])
            tokens = out.stats["depth"]
            frozen = recurrent.computed_iterations(tokens, int(out.stats["n_loops"]))[1] / tokens.numel()
        else:
            batch = 8 if task == "decode8" else 1
            prompt = ids[:batch * 16].view(batch, 16)
            _, stats = generate(model, prompt, SamplingConfig(max_new_tokens=decode_tokens, temperature=0,
                                                             n_loops=loops, exit_threshold=exit_threshold))
            depth, frozen = stats.mean_loops, 0.0
        return time.perf_counter() - start, depth, frozen


def bench_model(model: MythosLM, ids: torch.Tensor, reps: int, decode_tokens: int) -> list[dict]:
    rows = []
    for threshold, loops in ROWS:
        for task in ("forward", "decode8", "decode1"):
            seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
            depth: dict[str, tuple[float, float]] = {}
            for mode in MODES:  # warm-up
                run_task(model, task, ids, loops, threshold, mode, decode_tokens)
            for rep in range(reps):
                for mode in MODES[rep % 3:] + MODES[:rep % 3]:
                    elapsed, executed, frozen = run_task(model, task, ids, loops, threshold, mode,
                                                       decode_tokens)
                    seconds[mode].append(elapsed)
                    depth[mode] = (executed, frozen)
            median = {mode: statistics.median(s) for mode, s in seconds.items()}
            seq = 128 if task == "forward" else 16 + decode_tokens
            executed, frozen = depth["compact"]
            ideal = (forward_flops_per_token(model.config, seq, loops)
                     / forward_flops_per_token(model.config, seq, executed, frozen))
            row = {"exit_threshold": threshold, "loops": loops, "task": task, "mean_loops": round(executed, 3),
                   "frozen_loops": round(frozen, 3),
                   **{f"{mode}_ms": round(1e3 * median[mode], 1) for mode in MODES},
                   "masked_speedup": round(median["every"] / median["masked"], 3),
                   "compact_speedup": round(median["every"] / median["compact"], 3),
                   "flop_ideal": round(ideal, 3),
                   "share_of_ideal": round(median["every"] / median["compact"] / ideal, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def bench_training(reps: int) -> dict:
    """Training tokens/s and FLOPs per token: the default recipe against loop capacity at mean depth 4."""
    base = parse_args([]).model_config()  # the default run's model, as the trainer configures it
    recipes = {"default": (base, [base.mean_loops] * (reps + 1)),
               "capacity": (base.replace(mean_loops=6, max_loops=6, loop_capacity=CAPACITY), [6] * (reps + 1))}
    ids = torch.randint(0, base.vocab_size, (4, 129))
    steps = {}
    for name, (config, _) in recipes.items():
        torch.manual_seed(0)
        model = MythosLM(config).to(torch.bfloat16).train()
        steps[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    seconds: dict[str, float] = dict.fromkeys(recipes, 0.0)
    for rep in range(reps + 1):  # the first round warms up
        for name in (list(recipes) if rep % 2 else list(recipes)[::-1]):
            model, optimizer = steps[name]
            start = time.perf_counter()
            out = model(ids[:, :-1], labels=ids[:, 1:], n_loops=recipes[name][1][rep])
            (out.loss + out.aux_loss).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if rep:
                seconds[name] += time.perf_counter() - start
    result = {}
    for name, (config, loops) in recipes.items():
        flops = statistics.mean(count(config, 128, n).train_flops_per_token for n in loops[1:])
        result[name] = {"tokens_per_s": round(reps * ids[:, :-1].numel() / seconds[name], 1),
                        "mean_depth": statistics.mean(sum(config.loop_capacity[:n]) if config.loop_capacity else n
                                                      for n in loops[1:]),
                        "train_flops_per_token": flops, "loop_capacity": list(config.loop_capacity)}
    result["capacity_over_default"] = {
        "tokens_per_s": round(result["capacity"]["tokens_per_s"] / result["default"]["tokens_per_s"], 3),
        "train_flops_per_token": round(result["capacity"]["train_flops_per_token"]
                                       / result["default"]["train_flops_per_token"], 3)}
    print(json.dumps(result), flush=True)
    return result


def fixed_depth_model(steps: int) -> tuple[MythosLM, Callable[[str], list[int]]]:
    """The depth study's fixed-depth run (mean_loops 4, full backprop) trained ``steps`` steps on stdlib."""
    from megamythos.data.default_corpus import ensure_default_dataset
    from megamythos.data.tokenizer import Tokenizer
    from megamythos.research import study

    settings = study.StudySettings(steps=steps)
    prefix = study.prepare_corpus("stdlib", "data/study", None)  # == ensure_default_dataset(..., 4096)[0]
    batch_at, valid, vocab = study.token_batches(prefix, settings)
    config = study.base_config(vocab, settings)
    spec = next(s for s in study.EXPERIMENTS["depth"] if s.name == "fixed_depth")
    torch.manual_seed(settings.seed)
    model, _ = study.build_model(spec, config, settings)
    study.train_steps(model.train(), spec, config, settings, batch_at)
    tokenizer = Tokenizer(ensure_default_dataset("data/study", vocab_size=4096)[1])
    return model.eval(), tokenizer.encode_one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", required=True, help="the default run's checkpoint (or --save) directory")
    parser.add_argument("--fixed-depth-steps", type=int, default=0, help="also bench a fixed-depth study model")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--train-reps", type=int, default=16)
    parser.add_argument("--decode-tokens", type=int, default=32, help="tokens each decode task generates")
    parser.add_argument("--out", default="bench/results/adaptive.json")
    args = parser.parse_args(argv)
    loaded = load_model(args.load)  # a missing or unreadable --load: one error line (run_cli), no --out folder
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the work, not after it
    torch.set_num_threads(1)
    models = {"default_run": (loaded.model.eval(), loaded.tokenizer.encode_one)}
    if args.fixed_depth_steps:
        models["fixed_depth_study"] = fixed_depth_model(args.fixed_depth_steps)
    results = {}
    for name, (model, encode) in models.items():
        print(f"# {name}", flush=True)
        results[name] = bench_model(model, held_out_ids(encode, 8 * 128), args.reps, args.decode_tokens)
    training = bench_training(args.train_reps)
    environment = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "torch": torch.__version__,
                   "python": platform.python_version(), "cpu": cpu_model(), "threads": 1,
                   "load_avg": os.getloadavg(), "load": args.load, "fixed_depth_steps": args.fixed_depth_steps,
                   "decode_tokens": args.decode_tokens}
    Path(args.out).write_text(json.dumps({"environment": environment, "models": results, "training": training},
                                         indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, log_format=None))
