"""Training benchmarks on CPU.

    PYTHONPATH=. python bench/bench_train.py memory     --out bench/results/train.json
    PYTHONPATH=. python bench/bench_train.py throughput --out bench/results/train.json

``memory``: peak memory increase of one training step (forward + loss + backward) of the tiny preset at loop
counts 4, 8, 16, 32 (``--loops``), with per-iteration activation checkpointing, with two-level checkpointing
(segments of sqrt(T) iterations checkpointed again) and without (``--modes``); the step's wall time is recorded
too, and each mode's peak at the most loops over its peak at the fewest (``ratio_T32_over_T4`` by default). Each
measurement runs in a fresh process: build the model, run a 1-loop warm-up step (allocates gradients), return
freed heap to the OS (``malloc_trim``; ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB), reset the kernel's peak-RSS
counter (``/proc/self/clear_refs``), run the step, and report ``VmHWM - RSS before the step``: the activations kept
for backward plus the transient peak of the backward pass.

``throughput``: tokens/s of the default run (``launchers/pretrain.sh`` defaults: tiny preset, default corpus,
seq 128, micro batch 4 per process, ZeRO-3) with 1 and 2 processes (``--processes``), median over iterations
after a warm-up, for each ``--variant NAME=FLAGS`` (default: fp32, bf16, bf16 with --compile, and both of those
with ZeRO-2; FLAGS may start with ``VAR=value`` words, the launch's environment, and may name the data and the
model: ``--data-path``, ``--override``).
Results are merged into the JSON file given by ``--out``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOOPS = (4, 8, 16, 32)
# A fixed glibc mmap threshold: every large tensor is its own mapping, returned to the OS when freed, so RSS
# follows live tensor memory (the default dynamic threshold recycles freed tensors through a fragmented heap).
MMAP_THRESHOLD = 65536


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


MODES = {"per-iteration": dict(checkpoint_loops=True, loop_checkpoint_segment=1),
         "two-level": dict(checkpoint_loops=True, loop_checkpoint_segment=0),
         "none": dict(checkpoint_loops=False)}


def memory_child(loops: int, mode: str, batch: int, seq: int) -> dict[str, Any]:
    """One measurement (run in its own process): peak memory increase and wall time of one training step."""
    import time

    import torch

    from megamythos.model.config import get_preset
    from megamythos.model.lm import MythosLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = get_preset("tiny", max_loops=max(*LOOPS, loops), max_seq_len=seq, **MODES[mode])
    model = MythosLM(config).train()
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1))

    def step(n_loops: int) -> None:
        out = model(tokens[:, :-1], labels=tokens[:, 1:], n_loops=n_loops)
        (out.loss + out.aux_loss).backward()

    step(1)  # gradients exist from here on, as in training
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    step(loops)
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    return {"loops": loops, "mode": mode, "peak_step_mib": (peak - before) / 1024, "step_s": seconds}


def memory(batch: int, seq: int, loop_counts: list[int], modes: list[str]) -> dict[str, Any]:
    rows = []
    for mode in modes:
        for loops in loop_counts:
            cmd = [sys.executable, __file__, "_memory_child", "--loops", str(loops), "--mode", mode,
                   "--batch", str(batch), "--seq", str(seq)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO,
                                 env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                                      "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)})
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)

    def peak(mode: str, loops: int) -> float:
        return next(r["peak_step_mib"] for r in rows if r["loops"] == loops and r["mode"] == mode)

    most, fewest = max(loop_counts), min(loop_counts)
    return {"preset": "tiny", "batch": batch, "seq_length": seq, "rows": rows,
            f"ratio_T{most}_over_T{fewest}": {mode: peak(mode, most) / peak(mode, fewest) for mode in modes},
            "goal_ratio_with_checkpointing": 1.15}


ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")  # a leading environment assignment in a variant's flags
VARIANTS = {"fp32": "--no-bf16", "bf16": "--bf16", "bf16_compile": "--bf16 --compile",
            "bf16_zero2": "--bf16 --zero 2", "bf16_zero2_compile": "--bf16 --zero 2 --compile"}


def variant(text: str) -> tuple[str, str]:
    """``--variant NAME=FLAGS`` -> (NAME, FLAGS); argparse's error naming the flag when NAME is missing."""
    name, equals, flags = text.partition("=")
    if not name or not equals:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=FLAGS (e.g. fp32=--no-bf16)")
    return name, flags


def launch_throughput(nproc: int, flags: str, iters: int, warmup: int, env: dict[str, str]) -> dict[str, Any]:
    """One launch of the default run with ``flags``: medians over the iterations after ``warmup``. Leading
    ``VAR=value`` words of ``flags`` set the launch's environment, as in a shell."""
    words = flags.split()
    n_env = next((i for i, word in enumerate(words) if not ENV_WORD.match(word)), len(words))
    assignments, trainer_flags = words[:n_env], words[n_env:]
    env = {**env, **dict(word.split("=", 1) for word in assignments)}
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        cmd = ["bash", str(REPO / "launchers" / "pretrain.sh"), "--num-gpus", str(nproc),  # a free port
               "--train-iters", str(iters), "--save", f"{tmp}/ckpt", "--save-interval", "0", "--eval-interval", "0",
               "--metrics-file", str(metrics), *trainer_flags]
        subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
    records = [r for r in records if "lm loss" in r]  # the training steps, not the test evaluation at the end
    steady = [r for r in records if r["iteration"] > warmup and "tokens-per-sec" in r]
    return {"tokens_per_sec_median": statistics.median(r["tokens-per-sec"] for r in steady),
            "iteration_seconds_median": statistics.median(r["iteration-time"] for r in steady),
            "global_batch": records[-1]["consumed_samples"] // records[-1]["iteration"],
            "tflops_per_process_median": statistics.median(r["tflops"] for r in steady),
            "mfu_median": statistics.median(r["mfu"] for r in steady),
            "lm_loss_last": records[-1].get("lm loss"),
            "iterations": iters, "warmup_excluded": warmup, "command": " ".join([*assignments, *cmd])}


def throughput(iters: int, warmup: int, variants: dict[str, str], repeats: int = 1,
               threads: int | None = None, processes: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Every variant launched ``repeats`` times at each count of ``processes``, the variants alternating within each
    repeat (so slow drifts of the machine's load reach all of them); with repeats > 1 a variant's figures are the
    medians over its launches, each launch's own in ``launches``. ``threads``: OMP_NUM_THREADS of every rank
    (default: the launcher's, cores / processes; 1 keeps a shared machine from stalling OpenMP barriers)."""
    results: dict[str, Any] = {}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))}
    env.pop("OMP_NUM_THREADS", None)  # the launcher's default: cores / processes
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    for nproc in processes:
        launches: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, flags in variants.items():
                launches[name].append(launch_throughput(nproc, flags, iters, warmup, env))
                print(nproc, name, launches[name][-1], flush=True)
        for name, runs in launches.items():
            key = f"{nproc}_process" + ("" if name == "default" else f"_{name}")
            results[key] = runs[0] if repeats == 1 else {
                **{k: statistics.median(r[k] for r in runs) for k in ("tokens_per_sec_median",
                                                                       "iteration_seconds_median")},
                "launches": runs}
    return results


def environment() -> dict[str, Any]:
    import deepspeed
    import torch

    from megamythos.runtime.device import cpu_model

    return {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "cpus": os.cpu_count(), "machine": platform.machine(), "cpu": cpu_model(), "load_average": os.getloadavg()}


def merged_into(out: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The results already in ``out`` (``--out``; {} when there is none) that this run's are merged into;
    argparse's error naming the flag when ``out`` holds no JSON object."""
    try:
        data = json.loads(out.read_text()) if out.exists() else {}
    except (OSError, ValueError) as err:  # a folder, unreadable, not UTF-8 or not JSON
        parser.error(f"argument --out: {out} holds no results to merge into ({err}); move it away or pass another "
                     "--out")
    if not isinstance(data, dict):
        parser.error(f"argument --out: {out} holds JSON that is not an object of results; move it away or pass "
                     "another --out")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--batch", type=int, default=4)
    m.add_argument("--seq", type=int, default=256)
    m.add_argument("--loops", type=int, nargs="+", default=list(LOOPS), help="loop counts")
    m.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="checkpointing modes")
    t = sub.add_parser("throughput")
    t.add_argument("--iters", type=int, default=40)
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--repeats", type=int, default=1, help="launches per variant, the variants alternating")
    t.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per rank (default: the launcher's)")
    t.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="launch at each of these process counts")
    t.add_argument("--variant", type=variant, action="append", default=[], metavar="NAME=FLAGS",
                   help="trainer flags of one variant (repeatable); default: " + ", ".join(VARIANTS))
    for s in (m, t):
        s.add_argument("--out", default=str(REPO / "bench" / "results" / "train.json"))
    c = sub.add_parser("_memory_child")
    c.add_argument("--loops", type=int, required=True)
    c.add_argument("--mode", choices=list(MODES), required=True)
    c.add_argument("--batch", type=int, required=True)
    c.add_argument("--seq", type=int, required=True)
    args = p.parse_args(argv)
    if args.cmd == "throughput":  # before anything is launched
        names = [name for name, _ in args.variant]
        if len(set(names)) < len(names):
            t.error(f"argument --variant: the name {next(n for n in names if names.count(n) > 1)!r} is given twice; "
                    "each variant needs a name of its own")
        if args.warmup >= args.iters:
            t.error(f"argument --warmup: {args.warmup} leaves none of the {args.iters} --iters to time; pass a "
                    "--warmup below --iters")
    if args.cmd == "_memory_child":
        print(json.dumps(memory_child(args.loops, args.mode, args.batch, args.seq)))
        return 0
    out = Path(args.out)
    data = merged_into(out, p)  # before the work, not after it
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.cmd == "memory":
        result = memory(args.batch, args.seq, args.loops, args.modes)
    else:
        result = throughput(args.iters, args.warmup,
                            dict(args.variant) if args.variant else VARIANTS, args.repeats,
                            args.threads, tuple(args.processes))
    data[args.cmd] = {**result, "environment": environment()}
    out.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
