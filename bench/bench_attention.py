"""bf16 causal attention on CPU, forward + backward: the two kernels :func:`megamythos.model.attention.attend` chooses
between, timed side by side per shape, to place its switch ``_MATMUL_ATTENTION_MAX_SCORES``.

    PYTHONPATH=. python bench/bench_attention.py --out bench/results/attention_cpu_bf16.json

* ``matmul``: :func:`megamythos.model.attention.matmul_attention` (two batched matmuls, fp32 scores and softmax);
* ``sdpa``: :func:`megamythos.model.attention.sdpa_attention`, PyTorch's ``scaled_dot_product_attention`` as ``attend``
  calls it (causal), which on CPU runs the blocked flash kernel and never materialises the S x S scores.

Shapes: the tiny (8 heads, q/k 48, v 32), small (12 x 64) and a 128-wide head layout, batch x sequence = 2048
tokens, sequence 128..2048. Each cell: 2 untimed calls, then the median of ``--reps`` (the two kernels alternate).
"""
from __future__ import annotations

import argparse
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
from megamythos.training.monitor import cpu_model

HEADS = [(8, 48, 32), (12, 64, 64), (16, 128, 128)]  # (heads, q/k width, v width)
SEQ_LENS = [128, 256, 512, 1024, 2048]
TOKENS = 2048


def fwd_bwd_ms(kernels: dict[str, Callable[[], torch.Tensor]], reps: int) -> dict[str, float]:
    """Median milliseconds of forward + backward (of the output's sum) per kernel, the kernels alternating."""
    for kernel in kernels.values():
        for _ in range(2):
            kernel().sum().backward()
    seconds: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(reps):
        for name, kernel in kernels.items():
            start = time.perf_counter()
            kernel().sum().backward()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) * 1e3 for name, s in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/attention_cpu_bf16.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for heads, qk_dim, v_dim in HEADS:
        for seq in SEQ_LENS:
            q, k, v = (torch.randn(TOKENS // seq, seq, heads, d, dtype=torch.bfloat16, requires_grad=True)
                       for d in (qk_dim, qk_dim, v_dim))
            scale = qk_dim ** -0.5
            ms = fwd_bwd_ms({"matmul": partial(matmul_attention, q, k, v, None, True, scale),
                             "sdpa": partial(sdpa_attention, q, k, v, None, True, scale)}, args.reps)
            rows.append({"heads": heads, "qk_dim": qk_dim, "v_dim": v_dim, "batch": TOKENS // seq, "seq": seq,
                         **{f"{name}_ms": round(value, 2) for name, value in ms.items()},
                         "matmul_over_sdpa": round(ms["matmul"] / ms["sdpa"], 3)})
            print(json.dumps(rows[-1]), flush=True)
    environment = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
                   "threads": args.threads, "load_avg": os.getloadavg()}
    Path(args.out).write_text(json.dumps({"environment": environment, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
