"""Numerical checks of the fused paths against plain references, and the summary of a short training run.

    python bench/gpu_check.py numerics --device cuda --out bench/results/gpu_check.json
    python bench/gpu_check.py summarize --metrics RUN/metrics.jsonl --out bench/results/gpu_check.json

``numerics`` compares, forward and backward, in bf16:
  * ``attend`` (flash-attn on CUDA when installed, else SDPA; on CPU the bf16 matmul path) with an fp32
    softmax(q k^T) v written out, causal, MLA shapes (v narrower than q);
  * the MoE layer (sorted dispatch, torch._grouped_mm) with a per-expert Python loop in fp32;
  * RMSNorm (apex's fused kernel on CUDA when installed) with the fp32 formula.
Each check records the largest error relative to the reference's largest value and passes below ``TOL``.
``summarize`` reads a trainer's metrics file: median tokens/s, TFLOP/s and MFU over the steps after the
first ``--warmup`` (compilation). Both merge their part into the JSON at ``--out``. bench/gpu_check.sh runs both.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from megamythos.errors import UserError, run_cli
from megamythos.model.attention import attend
from megamythos.model.config import ModelConfig
from megamythos.model.layers import RMSNorm
from megamythos.model.moe import MoE, route
from megamythos.runtime.device import resolve_device

TOL = 3e-2  # bf16 has 8 mantissa bits: relative rounding 4e-3 per op, a few ops deep


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def compare(fused: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
            inputs: list[torch.Tensor], dtype: torch.dtype) -> dict[str, float]:
    """Output and input-gradient errors of ``fused`` on ``dtype`` copies of ``inputs`` against ``reference``
    on fp32 copies, for the same random output gradient."""
    low = [x.detach().to(dtype).requires_grad_() for x in inputs]
    high = [x.detach().float().requires_grad_() for x in inputs]
    out_low, out_high = fused(*low), reference(*high)
    grad = torch.randn_like(out_high)
    out_low.backward(grad.to(out_low.dtype))
    out_high.backward(grad)
    errors = {"output": relative_error(out_low, out_high)}
    errors.update({f"grad_{i}": relative_error(a.grad, b.grad) for i, (a, b) in enumerate(zip(low, high))})
    return errors


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal softmax(q k^T * scale) v in fp32, [B, S, h, d] layout."""
    scores = torch.einsum("bshd,blhd->bhsl", q, k) * scale
    seq = q.shape[1]
    scores = scores.masked_fill(~torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return torch.einsum("bhsl,blhd->bshd", scores.softmax(dim=-1), v)


def check_attention(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """MLA shapes: 8 heads, q/k width 48 (nope 32 + rope 16), v width 32, 2 x 256 tokens, causal."""
    q, k = (torch.randn(2, 256, 8, 48, device=device) for _ in range(2))
    v = torch.randn(2, 256, 8, 32, device=device)
    scale = 48 ** -0.5
    return compare(lambda *t: attend(*t, None, True, scale), lambda *t: reference_attention(*t, scale),
                   [q, k, v], dtype)


def reference_moe(moe: MoE, x: torch.Tensor, expert_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The MoE's routed + shared output with a Python loop over experts, in x's dtype; ``expert_ids`` [T, K]:
    route to these experts (weighted by this model's own scores) instead of its own top-k."""
    bsz, seq, dim = x.shape
    flat = x.reshape(-1, dim)
    weights, own_ids, scores = route(moe.gate(flat), moe.gate.e_score_correction_bias, moe.top_k, moe.score_func,
                                     moe.route_norm)
    expert_ids = own_ids if expert_ids is None else expert_ids
    if expert_ids is not own_ids:
        weights = scores.gather(1, expert_ids)
        if moe.route_norm:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    out = torch.zeros_like(flat)
    hidden = moe.experts.hidden_dim
    for e in range(moe.experts.gate_up_proj.shape[0]):
        rows, slot = (expert_ids == e).nonzero(as_tuple=True)
        gate, up = (flat[rows] @ moe.experts.gate_up_proj[e].t()).split(hidden, dim=-1)
        out.index_add_(0, rows, (F.silu(gate) * up) @ moe.experts.down_proj[e].t() * weights[rows, slot, None])
    out = out.view(bsz, seq, dim)
    return out + moe.shared_experts(x) if moe.shared_experts is not None else out


def check_moe(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """16 experts top-2 of width 256, one shared SwiGLU, dim 256, 2 x 256 tokens; bf16 weights against the
    same weights in fp32, the reference routed to the experts the bf16 model chose (a near-tie of two scores can
    fall either way in bf16, which would compare two different expert mixes)."""
    torch.manual_seed(0)
    config = ModelConfig(dim=256, n_experts=16, num_experts_per_tok=2, expert_dim=256, n_shared_experts=1)
    moe32 = MoE(config).to(device)
    for param in moe32.parameters():
        torch.nn.init.normal_(param, std=0.05)
    moe_low = MoE(config).to(device=device, dtype=dtype)
    moe_low.load_state_dict(moe32.state_dict())
    x = torch.randn(2, 256, 256, device=device)
    x = x.to(dtype).float()
    with torch.no_grad():
        _, low_ids, _ = route(moe_low.gate(x.to(dtype).reshape(-1, 256)), moe_low.gate.e_score_correction_bias,
                              moe_low.top_k, moe_low.score_func, moe_low.route_norm)
    return compare(lambda t: moe_low(t).hidden, lambda t: reference_moe(moe32, t, low_ids), [x], dtype)


def check_rms_norm(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    norm = RMSNorm(256).to(device=device, dtype=dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.1)
    weight = norm.weight.detach().float()

    def reference(x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * weight

    return compare(norm, reference, [torch.randn(512, 256, device=device)], dtype)


def numerics(device: torch.device) -> dict[str, Any]:
    checks = {"attention": check_attention, "moe": check_moe, "rms_norm": check_rms_norm}
    results = {name: check(device, torch.bfloat16) for name, check in checks.items()}
    return {"device": str(device), "dtype": "bfloat16", "tolerance": TOL, "errors": results,
            "passed": all(err <= TOL for errors in results.values() for err in errors.values())}


def summarize(metrics: Path, warmup: int) -> dict[str, Any]:
    if not metrics.is_file():
        raise UserError(f"--metrics {metrics}: no such file; pass the trainer's --metrics-file of the run")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "lm loss" in r]  # not the validation and test records
    steady = [r for r in steps if r.get("iteration", 0) > warmup and "tokens-per-sec" in r]
    if not steady:
        raise SystemExit(f"no training steps after iteration {warmup} in {metrics}")
    keys = {"tokens_per_sec": "tokens-per-sec", "tflops": "tflops", "mfu": "mfu", "iteration_s": "iteration-time"}
    memory = [r[key] for r in records for key in ("memory/max-allocated-GiB", "memory/max-rss-GiB") if key in r]
    return {"steps": len(steps), "warmup_excluded": warmup, "lm_loss_last": steps[-1]["lm loss"],
            **{f"{name}_median": statistics.median(r[key] for r in steady) for name, key in keys.items()},
            "peak_memory_gib": max(memory, default=None)}


def merge(out: Path, key: str, value: dict[str, Any]) -> None:
    data = json.loads(out.read_text()) if out.is_file() else {}
    data[key] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    num = sub.add_parser("numerics")
    num.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    summ = sub.add_parser("summarize")
    summ.add_argument("--metrics", type=Path, required=True)
    summ.add_argument("--warmup", type=int, default=5)
    for p in (num, summ):
        p.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"))
    args = parser.parse_args(argv)
    if args.command == "numerics":
        result = numerics(resolve_device(args.device))
        merge(args.out, "numerics", result)
        print(json.dumps(result, indent=2))
        return 0 if result["passed"] else 1
    result = summarize(args.metrics, args.warmup)
    merge(args.out, "train_small_bf16_compile", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, log_format=None))
