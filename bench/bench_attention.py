"""Causal attention on CPU: the two kernels :func:`megamythos.model.attention.attend` chooses between, timed side
by side per shape and dtype, to place its switches ``_CAUSAL_MATMUL_MAX_SCORES`` and ``_MATMUL_ATTENTION_MAX_SCORES``.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_attention.py --out bench/results/attention_cpu.json

* ``matmul``: :func:`megamythos.model.attention.matmul_attention` (two batched matmuls, fp32 scores and softmax;
  causal, in query blocks of ``_CAUSAL_QUERY_BLOCK`` from S = 512 on);
* ``sdpa``: :func:`megamythos.model.attention.sdpa_attention`, PyTorch's ``scaled_dot_product_attention`` as ``attend``
  calls it (v zero-padded to the q/k width), which on CPU runs the blocked flash kernel and never materialises the
  S x S scores.

Shapes: the heads of the presets' MLA as ``attend`` sees them (tiny: 8 heads, q/k 48 = nope 32 + rope 16, v 32;
small: 12 heads, q/k 96, v 64) in bf16 and fp32. Training: forward + backward of a causal sequence, batch x
sequence = 2048 tokens, sequence 128..2048 (``--seq-lens``; the default run trains at 4 x 128, the model benchmark
at 1 x 512). Decode: forward of one query against L = 128, 512, 2048 cached keys (``--decode-lens``), batch 1,
without gradient (the non-absorbed cached path).
Each cell: 2 untimed calls, then the median of ``--reps`` (training) or ``--decode-reps`` (decode) calls, the two
kernels alternating. The process keeps freed memory as the CPU trainer does
(:func:`megamythos.runtime.host_memory.keep_freed_memory`; ``--glibc-defaults`` to leave glibc's settings).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from megamythos.model.attention import matmul_attention, sdpa_attention
from megamythos.runtime.device import cpu_model
from megamythos.runtime.host_memory import keep_freed_memory

PRESET_HEADS = {"tiny": (8, 48, 32), "small": (12, 96, 64)}  # (heads, q/k width, v width)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SEQ_LENS = [128, 256, 512, 1024, 2048]
DECODE_LENS = [128, 512, 2048]
TOKENS = 2048


def median_ms(kernels: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median milliseconds of a call per kernel: 2 untimed calls each, then ``reps`` rounds, kernels alternating."""
    for kernel in kernels.values():
        for _ in range(2):
            kernel()
    seconds: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(reps):
        for name, kernel in kernels.items():
            start = time.perf_counter()
            kernel()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) * 1e3 for name, s in seconds.items()}


def row(preset: str, dtype: str, phase: str, batch: int, q_len: int, kv_len: int, ms: dict[str, float]) -> dict:
    heads, qk_dim, v_dim = PRESET_HEADS[preset]
    return {"preset": preset, "dtype": dtype, "phase": phase, "heads": heads, "qk_dim": qk_dim, "v_dim": v_dim,
            "batch": batch, "q_len": q_len, "kv_len": kv_len, **{f"{k}_ms": round(v, 4) for k, v in ms.items()},
            "matmul_over_sdpa": round(ms["matmul"] / ms["sdpa"], 3)}


def fwd_bwd(kernel: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            scale: float) -> None:
    """Causal ``kernel`` on q, k [B, S, h, dq], v [B, S, h, dv], then backward of the output's sum."""
    kernel(q, k, v, None, True, scale).sum().backward()


def training_row(preset: str, dtype: str, seq: int, reps: int) -> dict:
    """Forward + backward (of the output's sum) of causal attention over TOKENS // seq sequences of ``seq``."""
    heads, qk_dim, v_dim = PRESET_HEADS[preset]
    q, k, v = (torch.randn(TOKENS // seq, seq, heads, d, dtype=DTYPES[dtype], requires_grad=True)
               for d in (qk_dim, qk_dim, v_dim))
    kernels = {name: partial(fwd_bwd, fn, q, k, v, qk_dim ** -0.5)
               for name, fn in (("matmul", matmul_attention), ("sdpa", sdpa_attention))}
    return row(preset, dtype, "train_fwd_bwd", TOKENS // seq, seq, seq, median_ms(kernels, reps))


@torch.no_grad()
def decode_row(preset: str, dtype: str, kv_len: int, reps: int) -> dict:
    """Forward of one query [1, 1, h, dq] against ``kv_len`` cached keys/values (no mask: every key is past)."""
    heads, qk_dim, v_dim = PRESET_HEADS[preset]
    q, k, v = (torch.randn(1, length, heads, d, dtype=DTYPES[dtype])
               for length, d in ((1, qk_dim), (kv_len, qk_dim), (kv_len, v_dim)))
    kernels = {name: partial(fn, q, k, v, None, False, qk_dim ** -0.5)
               for name, fn in (("matmul", matmul_attention), ("sdpa", sdpa_attention))}
    return row(preset, dtype, "decode", 1, 1, kv_len, median_ms(kernels, reps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--decode-reps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=SEQ_LENS, help="training sequence lengths")
    parser.add_argument("--decode-lens", type=int, nargs="+", default=DECODE_LENS, help="decode cache lengths")
    parser.add_argument("--glibc-defaults", action="store_true", help="leave glibc malloc's settings as they are")
    parser.add_argument("--out", default="bench/results/attention_cpu.json")
    args = parser.parse_args(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the work, not after it
    torch.set_num_threads(args.threads)
    host_memory = "glibc defaults" if args.glibc_defaults else keep_freed_memory()
    rows = []
    for preset in PRESET_HEADS:
        for dtype in DTYPES:
            rows += [training_row(preset, dtype, seq, args.reps) for seq in args.seq_lens]
            rows += [decode_row(preset, dtype, kv_len, args.decode_reps) for kv_len in args.decode_lens]
            for r in rows[-len(args.seq_lens) - len(args.decode_lens):]:
                print(json.dumps(r), flush=True)
    environment = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
                   "threads": args.threads, "host_memory": host_memory, "load_avg": os.getloadavg(),
                   "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).write_text(json.dumps({"environment": environment, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
