"""Held-out loss and perplexity as a function of the loop count (depth extrapolation), with and without ACT exit.

    python -m megamythos.evaluate --load runs/tiny/checkpoints --loops 1,2,4,8,16,24,32 [--act-exit]
    python -m megamythos.evaluate --load exported/tiny --data-path data/x_text_document --split 969,30,1

The held-out data is the validation split of the training run: ``--data-path``, ``--split``, ``--seed`` and
``--seq-length`` default to the values the checkpoint recorded (``train_args.json``) and the samples come from
the dataset builder and batch order the trainer uses (:mod:`megamythos.data.pretraining`). An export records
no run, so it needs ``--data-path``; split and seed then default to the trainer's defaults and the sequence
length to the model's ``max_seq_len``. The dataset's tokenizer record must match the model's (a dataset without
one is accepted with a warning if its token ids fit the vocabulary).

Every loop count runs the same ``--eval-iters`` batches of ``--micro-batch-size`` samples; ``--act-exit`` adds
a second row per loop count with ACT early exit (``mean_steps`` = mean iterations a token used). Results go to
``depth_eval.{csv,json,png}`` in ``--out`` (default ``eval/`` inside the checkpoint tag or export directory) and
to TensorBoard in ``--tensorboard-dir`` (default ``OUT/tensorboard``) with step = loop count under the tags
``depth-eval/loss``, ``depth-eval/ppl``, ``depth-eval/mean-steps`` (all loops) and ``depth-eval-act/...``
(ACT exit). A summary JSON line goes to stdout.

Library part: :func:`evaluate_loops` runs a fixed list of token batches through the model at each loop count;
:func:`write_results` stores a CSV, a JSON and a PNG plot (perplexity vs loops, trained depth marked).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from megamythos.data.gpt_dataset import parse_data_path
from megamythos.data.metadata import check_same_vocabulary, read_dataset_metadata
from megamythos.data.pretraining import DataError, DataRecipe, batches, build_datasets, resolve_data
from megamythos.errors import run_cli
from megamythos.loading import LoadError, LoadedModel, load_model
from megamythos.model import MythosLM

logger = logging.getLogger(__name__)


DEFAULT_LOOPS = "1,2,4,8,16,24,32"
TB_PREFIX = {False: "depth-eval", True: "depth-eval-act"}


@dataclass
class EvalConfig:
    """What to evaluate: held-out data (None = as the checkpoint recorded), batches, loop counts."""

    load: str
    loops: list[int]
    data_path: list[str]
    split: str | None = None
    seed: int | None = None
    seq_length: int | None = None
    micro_batch_size: int = 4
    eval_iters: int = 8
    act_exit: bool = False
    tokenizer: str | None = None
    out: str | None = None
    tensorboard_dir: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.loops or min(self.loops) < 1:
            raise LoadError(f"--loops must list loop counts >= 1, got {self.loops}")
        for name in ("micro_batch_size", "eval_iters", "seq_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LoadError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


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
def evaluate_loops(model: MythosLM, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], loops: Sequence[int],
                   act_exit: bool = False, progress: Callable[[], Any] | None = None) -> list[LoopEval]:
    """Evaluate ``batches`` (pairs of inputs [B, S] and next-token targets [B, S]) at each loop count.

    ``mean_steps`` is the mean number of iterations a token used: ``loops`` without ACT exit, the ACT
    step count with it. Deterministic for a fixed model and batch list (the model is put in eval mode).
    ``progress`` is called after every batch.
    """
    was_training = model.training
    model.eval()
    results = []
    try:
        for n_loops in loops:
            total_loss, total_tokens, total_steps = 0.0, 0, 0.0
            for inputs, targets in batches:
                out = model(inputs, n_loops=n_loops, act_exit=act_exit)
                total_loss += F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(),
                                              reduction="sum").item()
                steps = out.stats.get("act_mean_steps", out.stats["n_loops"]) if act_exit else out.stats["n_loops"]
                total_steps += float(steps) * targets.numel()
                total_tokens += targets.numel()
                if progress is not None:
                    progress()
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


def write_tensorboard(results: Sequence[LoopEval], log_dir: str | Path) -> None:
    """Scalars ``depth-eval[-act]/{loss,ppl,mean-steps}`` with step = loop count."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for r in results:
            prefix = TB_PREFIX[r.act_exit]
            writer.add_scalar(f"{prefix}/loss", r.loss, r.loops)
            writer.add_scalar(f"{prefix}/ppl", r.perplexity, r.loops)
            writer.add_scalar(f"{prefix}/mean-steps", r.mean_steps, r.loops)


def heldout_batches(loaded: LoadedModel, cfg: EvalConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``cfg.eval_iters`` (inputs [B, S], targets [B, S]) batches of the validation split the training run used.

    Checks the datasets' tokenizer records against the model's before reading any sample, and the token ids
    against the vocabulary after.
    """
    record = loaded.train_record or {}
    recorded = dict(record.get("args", {}))
    recorded.setdefault("seq_length", loaded.config.max_seq_len)
    recorded.update({k: v for k, v in (("split", cfg.split), ("seed", cfg.seed), ("seq_length", cfg.seq_length))
                     if v is not None})
    recipe = DataRecipe.from_record(recorded)
    data_path = cfg.data_path or record.get("data_path")
    if not data_path:
        raise LoadError(f"{loaded.source} records no training data (exports do not); pass --data-path PREFIX")
    for prefix in parse_data_path(data_path)[0]:
        check_same_vocabulary(f"dataset {prefix}", read_dataset_metadata(prefix), f"model {loaded.source}",
                              loaded.tokenizer_record,
                              remedy="evaluate on data tokenised with the model's tokenizer")
    setup = resolve_data(list(data_path), loaded.config.vocab_size)
    needed = cfg.eval_iters * cfg.micro_batch_size
    _, valid = build_datasets(recipe, setup.data_path, record.get("total_iters", 0),
                              record.get("global_batch_size", 0), min_valid_samples=needed)
    it = batches(valid, 0, cfg.micro_batch_size, 0, 1)
    out = [tuple(t.to(cfg.device) for t in next(it)) for _ in range(cfg.eval_iters)]
    top = max(int(max(inputs.max(), labels.max())) for inputs, labels in out)
    if top >= loaded.config.vocab_size:
        raise DataError(f"{' '.join(setup.data_path)} holds token id {top} but the model's vocabulary has "
                        f"{loaded.config.vocab_size} ids; evaluate on data tokenised with the model's tokenizer")
    logger.info("held-out data: %s, split %s, seed %d, %d batches of %d x %d tokens", " ".join(setup.data_path),
                recipe.split, recipe.seed, cfg.eval_iters, cfg.micro_batch_size, recipe.seq_length)
    return out


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate, write the files and TensorBoard scalars; returns the summary printed by :func:`main`."""
    from tqdm import tqdm

    loaded = load_model(cfg.load, cfg.tokenizer, cfg.device)
    loaded.check_act_exit(cfg.act_exit)
    data = heldout_batches(loaded, cfg)
    passes = [False, True] if cfg.act_exit else [False]
    with tqdm(total=len(passes) * len(cfg.loops) * len(data), desc="depth eval", unit="batch",
              file=sys.stderr) as bar:
        results = [r for act in passes for r in evaluate_loops(loaded.model, data, cfg.loops, act, bar.update)]
    out_dir = Path(cfg.out) if cfg.out else loaded.source / "eval"
    paths = write_results(results, out_dir, trained_loops=loaded.config.mean_loops)
    tb_dir = Path(cfg.tensorboard_dir) if cfg.tensorboard_dir else out_dir / "tensorboard"
    write_tensorboard(results, tb_dir)
    return {"model": str(loaded.source), "trained_loops": loaded.config.mean_loops,
            "files": {k: str(v) for k, v in paths.items()}, "tensorboard": str(tb_dir),
            "results": [asdict(r) for r in results]}


def parse_args(argv: Sequence[str] | None = None) -> EvalConfig:
    """The command line of ``python -m megamythos.evaluate`` as a validated :class:`EvalConfig`."""
    p = argparse.ArgumentParser(prog="python -m megamythos.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint tag dir, --save dir (uses `latest`) or export dir")
    p.add_argument("--data-path", nargs="*", default=[], help="dataset prefixes (default: the training run's)")
    p.add_argument("--split", help="train,valid,test weights (default: the training run's)")
    p.add_argument("--seed", type=int, help="data seed (default: the training run's)")
    p.add_argument("--seq-length", type=int, help="default: the training run's, else the model's max_seq_len")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--eval-iters", type=int, default=8, help="batches evaluated at every loop count")
    p.add_argument("--loops", default=DEFAULT_LOOPS, help="comma-separated loop counts")
    p.add_argument("--act-exit", action="store_true", help="also evaluate every loop count with ACT early exit")
    p.add_argument("--tokenizer", help="tokenizer .model (must be the one the model was trained with)")
    p.add_argument("--out", help="results directory (default: eval/ in the checkpoint or export directory)")
    p.add_argument("--tensorboard-dir", help="default: OUT/tensorboard")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ns = vars(p.parse_args(argv))
    try:
        ns["loops"] = [int(x) for x in ns["loops"].split(",")]
    except ValueError:
        p.error(f"--loops expects comma-separated integers such as {DEFAULT_LOOPS}, got {ns['loops']!r}")
    return EvalConfig(**ns)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, evaluate, print the summary line; user errors exit 2 with one line on stderr."""

    def go() -> int:
        print(json.dumps(run(parse_args(argv))), flush=True)
        return 0

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
