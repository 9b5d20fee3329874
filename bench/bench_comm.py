"""ZeRO-3 communication per training step at a loop count that changes between steps (2 CPU ranks).

    PYTHONPATH=. python bench/bench_comm.py --out bench/results/comm.json

Runs the real trainer (``megamythos.training.pretrain``, tiny preset, default corpus, sequence 64, micro batch
1 per rank, fp32) under the ``deepspeed`` launcher on 2 processes, once per variant: ZeRO-3 with the recurrent
block partitioned and gathered per use (``--no-replicate-core``, DeepSpeed's default, "before"), ZeRO-3 with the
recurrent core replicated (``--replicate-core``, "after"), both on the default ds_config without its leaf modules
(DeepSpeed's hooks on every submodule); ZeRO-3 on the default ds_config, whose leaf modules gather the recurrent
core and the dense blocks once per forward and backward (what ``make pretrain`` runs); and ZeRO-2 (the whole
model replicated) for reference. The sampled loop count is replaced by a fixed schedule in which T alternates
between 1, 4 and 8, so every step but the repeat at the end runs a T different from the previous step's.
Calls and bytes of every collective per step come from the trainer's own accounting (``comm/...`` in its
metrics file, rank 0); the report gives the median per T over the steps after the first (which records
DeepSpeed's trace). Trainer flags after ``--`` go to every run (e.g. ``-- --override dim=128 --data-path PREFIX``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from megamythos.runtime.locations import DEFAULT_DS_CONFIG

REPO = Path(__file__).resolve().parents[1]
# T of each step: every change of T occurs for every value; the last two steps repeat T (trace unchanged).
SCHEDULE = (4, 1, 4, 8, 1, 8, 4, 1, 8, 4, 8, 1, 8, 8)
# name: (trainer flags, whether the ds_config drops its leaf modules)
VARIANTS = {
    "zero3-per-use": (["--zero", "3", "--no-replicate-core"], True),
    "zero3-replicated-core": (["--zero", "3", "--replicate-core"], True),
    "zero3-leaf-modules": (["--zero", "3"], False),
    "zero2": (["--zero", "2"], False),
}
KINDS = ("all-gather", "reduce-scatter", "all-to-all", "all-reduce")


def worker(argv: Sequence[str]) -> int:
    """One rank: the trainer with its loop count taken from ``--loops`` (indexed by iteration)."""
    p = argparse.ArgumentParser()
    p.add_argument("--loops", required=True)
    known, rest = p.parse_known_args(argv)
    schedule = [int(t) for t in known.loops.split(",")]
    from megamythos.training import pretrain

    pretrain.sample_loop_count = lambda *_args: schedule[_args[-1]]  # (mean, sigma, max, seed, iteration)
    return pretrain.main(rest)


def without_leaf_modules(out: Path) -> Path:
    """The default ds_config without ``zero_optimization.leaf_module``, written into ``out``; returns its path."""
    config = json.loads(DEFAULT_DS_CONFIG.read_text())
    del config["zero_optimization"]["leaf_module"]
    path = out / "ds_config_without_leaf_modules.json"
    path.write_text(json.dumps(config))
    return path


def launch(name: str, data_dir: Path, out: Path, port: int, trainer: list[str]) -> list[dict[str, Any]]:
    """2-rank run of variant ``name``, ``trainer`` flags added; returns its metrics records (one per step)."""
    flags, plain = VARIANTS[name]
    variant = [*flags, "--ds-config", str(without_leaf_modules(out))] if plain else flags
    metrics = out / "metrics.jsonl"
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), str(Path(__file__).resolve()), "--worker",
           "--loops", ",".join(map(str, SCHEDULE)), "--preset", "tiny", "--seq-length", "64",
           "--micro-batch-size", "1", "--global-batch-size", "2", "--train-iters", str(len(SCHEDULE)),
           "--mean-loops", "4", "--override", "max_loops=8", "--default-data-dir", str(data_dir),
           "--default-data-max-files", "30", "--split", "90,10,0", "--peak-tflops", "1", "--no-bf16",
           "--save", str(out / "ckpt"), "--metrics-file", str(metrics), *trainer, *variant]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log = out / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read_text()[-4000:]}")
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median calls and MiB of each collective per step, by loop count, for steps whose T changed (the first
    step excluded) and for steps that repeat the previous T."""
    steps = [r for r in records if "comm/all-gather-bytes" in r]
    groups: dict[str, list[dict[str, Any]]] = {}
    for prev, step in zip(steps, steps[1:]):
        t = int(step["recurrent/loop-count"])
        key = f"T={t} changed" if t != int(prev["recurrent/loop-count"]) else f"T={t} unchanged"
        groups.setdefault(key, []).append(step)
    return {key: {"steps": len(group), **{
        f"{kind} {unit}": statistics.median(s[f"comm/{kind}-{field}"] / scale for s in group)
        for kind in KINDS for unit, field, scale in (("calls", "calls", 1), ("MiB", "bytes", 2 ** 20))}}
        for key, group in sorted(groups.items())}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "comm.json"))
    p.add_argument("--data-dir", default=str(REPO / "data" / "default"))
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--port", type=int, default=29631)
    p.add_argument("trainer", nargs="*", help="trainer flags for every run, after --")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"schedule": list(SCHEDULE), "trainer_flags": args.trainer, "environment": {
        "python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}}
    for i, name in enumerate(args.variants):
        with tempfile.TemporaryDirectory() as tmp:
            records = launch(name, Path(args.data_dir), Path(tmp), args.port + i, args.trainer)
        results[name] = {"per_T": summarise(records), "steps": [
            {k: v for k, v in r.items() if k.startswith("comm/") or k in ("iteration", "recurrent/loop-count",
                                                                           "iteration-time")} for r in records]}
        print(name, json.dumps(results[name]["per_T"], indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker([a for a in sys.argv[1:] if a != "--worker"]))
    sys.exit(main())
