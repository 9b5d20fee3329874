"""Held-out loss and perplexity as a function of the loop count (depth extrapolation), with and without ACT exit.

Library part: :func:`evaluate_loops` runs a fixed list of token batches through the model at each loop count;
:func:`write_results` stores a CSV, a JSON and a PNG plot (perplexity vs loops, trained depth marked).
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from megamythos.model import MythosLM

logger = logging.getLogger(__name__)


@dataclass
class LoopEval:
    """Mean next-token loss over ``tokens`` predicted tokens at ``loops`` iterations."""

    loops: int
    act_exit: bool
    loss: float
    perplexity: float
    mean_steps: float
    tokens: int


@torch.no_grad()
def evaluate_loops(model: MythosLM, batches: Sequence[torch.Tensor], loops: Sequence[int],
                   act_exit: bool = False) -> list[LoopEval]:
    """Evaluate ``batches`` (each [B, S + 1] token ids: inputs [:, :-1], targets [:, 1:]) at each loop count.

    ``mean_steps`` is the mean number of iterations a token used: ``loops`` without ACT exit, the ACT
    step count with it. Deterministic for a fixed model and batch list (the model is put in eval mode).
    """
    was_training = model.training
    model.eval()
    results = []
    try:
        for n_loops in loops:
            total_loss, total_tokens, total_steps = 0.0, 0, 0.0
            for batch in batches:
                inputs, targets = batch[:, :-1], batch[:, 1:]
                out = model(inputs, n_loops=n_loops, act_exit=act_exit)
                total_loss += F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(),
                                              reduction="sum").item()
                steps = out.stats.get("act_mean_steps", out.stats["n_loops"]) if act_exit else out.stats["n_loops"]
                total_steps += float(steps) * targets.numel()
                total_tokens += targets.numel()
            loss = total_loss / total_tokens
            results.append(LoopEval(n_loops, act_exit, loss, math.exp(min(loss, 50.0)), total_steps / total_tokens,
                                    total_tokens))
            logger.info("loops %d%s: loss %.4f ppl %.2f", n_loops, " (ACT exit)" if act_exit else "", loss,
                        results[-1].perplexity)
    finally:
        model.train(was_training)
    return results


def write_results(results: Sequence[LoopEval], out_dir: str | Path, trained_loops: int,
                  stem: str = "depth_eval") -> dict[str, Path]:
    """Write ``stem``.csv/.json/.png into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    paths = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(json.dumps({"trained_loops": trained_loops, "results": rows}, indent=2) + "\n")
    _plot(results, trained_loops, paths["png"])
    return paths


def _plot(results: Sequence[LoopEval], trained_loops: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for act_exit in sorted({r.act_exit for r in results}):
        subset = [r for r in results if r.act_exit == act_exit]
        ax.plot([r.loops for r in subset], [r.perplexity for r in subset], marker="o",
                label="ACT early exit" if act_exit else "all loops")
    ax.axvline(trained_loops, color="grey", linestyle="--", label=f"trained mean depth ({trained_loops})")
    ax.set_xlabel("loop iterations at inference")
    ax.set_ylabel("perplexity")
    ax.set_xscale("log", base=2)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
