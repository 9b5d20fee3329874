"""Held-out loss and perplexity as a function of the loop count (depth extrapolation), with and without early exit.

    python -m megamythos.inference.evaluate --load runs/tiny/checkpoints --loops 1,2,4,8,16,32 [--exit-threshold 0.1]
    python -m megamythos.inference.evaluate --load exported/tiny --data-path data/x_text_document --split 969,30,1
    python -m megamythos.inference.evaluate --load runs/tiny/checkpoints --test-set

The held-out data is the validation split of the training run, or with ``--test-set`` its test split:
``--data-path``, ``--split``, ``--seed`` and ``--seq-length`` default to the values the checkpoint recorded
(``train_args.json``; a run given ``--train-data-path``/``--valid-data-path``/``--test-data-path`` is read from
the split's own data, whole) and the samples come from the dataset builder and batch order the trainer uses
(:mod:`megamythos.data.pretraining`). An export records no run, so it needs ``--data-path``; split and seed then
default to the trainer's defaults and the sequence length to the model's ``max_seq_len``. The dataset's tokenizer
record must match the model's (a dataset without one is accepted with a warning if its token ids fit the
vocabulary).

Every loop count runs the same ``--eval-iters`` batches of ``--micro-batch-size`` samples; each threshold of
``--exit-threshold`` adds a row per loop count in which a token stops iterating once its state's relative change
falls below the threshold (``mean_depth`` = iterations a token executed, ``exit_share`` = share of tokens stopping
after each iteration, ``forward_flops_per_token`` = what that costs, the exited tokens' keys/values recomputed at
later iterations included). Results go to ``depth_eval.{csv,json,png}`` in ``--out`` (default ``LOAD/eval/TAG``
for a checkpoint, outside the tags ``--keep-last`` prunes; ``eval/`` in an export directory) and to TensorBoard in
``--tensorboard-dir`` (default ``OUT/tensorboard``) with step = loop count under the tags
``depth-eval/{loss,ppl,mean-depth,flops-per-token}`` (all loops) and ``depth-eval-exit-T/...`` (exit at threshold
T, with ``exit-share/loop-NN``). A summary JSON line goes to stdout. The folder gathers the rows of one model and
one set of held-out batches (:func:`merged_results`): evaluations into it, at once too, take turns under a lock
and each adds its rows to those there.

Library part: :func:`evaluate_loops` runs a fixed list of token batches through the model at each loop count;
:func:`write_results` stores a CSV, a JSON and a PNG plot (perplexity vs loops, trained depth marked).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from megamythos.checkpoint.files import write_atomic
from megamythos.checkpoint.reader import is_export_dir
from megamythos.data.atomic import (
    OutputError,
    atomic_open,
    creatable,
    describe_os_error,
    locked_folder,
    writable_directory,
)
from megamythos.data.gpt_dataset import index_cache_dir, parse_data_path, parse_split, samples_per_epoch
from megamythos.data.manifest import CHECKSUMS_FILE
from megamythos.data.metadata import check_same_vocabulary, read_dataset_metadata
from megamythos.data.pretraining import (
    DataRecipe,
    DataSources,
    batches,
    build_datasets,
    data_change,
    document_flags,
    documents_eod,
    resolve_data,
)
from megamythos.data.tokenizer import check_model_file
from megamythos.errors import ArgumentParser, checked_by, number, path_text, run_cli
from megamythos.inference.loading import LoadedModel, LoadError, load_model
from megamythos.model.config import ModelConfig
from megamythos.model.lm import IGNORE_INDEX, MythosLM
from megamythos.model.recurrent import computed_iterations, exit_distribution
from megamythos.model.row_layout import PackedDocuments
from megamythos.runtime.device import default_device, resolve_device
from megamythos.runtime.host_memory import keep_freed_memory

logger = logging.getLogger(__name__)


DEFAULT_LOOPS = "1,2,4,8,16,24,32"


@dataclass
class EvalConfig:
    """What to evaluate: held-out data (None = as the checkpoint recorded), batches, loop counts."""

    load: str
    loops: list[int]
    data_path: list[str]
    split: str | None = None
    seed: int | None = None
    seq_length: int | None = None
    data_cache_dir: str | None = None
    test_set: bool = False  # the test split instead of the validation split
    micro_batch_size: int = 4
    eval_iters: int = DataRecipe.eval_iters  # the trainer's validation batches
    exit_thresholds: list[float] | None = None  # None: the model config's exit_threshold
    tokenizer: str | None = None
    out: str | None = None
    tensorboard_dir: str | None = None
    device: str = field(default_factory=default_device)  # --device's default: cuda where torch sees one

    def __post_init__(self) -> None:
        if not self.loops or min(self.loops) < 1:
            raise LoadError(f"--loops must list loop counts >= 1, got {self.loops}")
        if self.exit_thresholds is not None and not all(t >= 0 for t in self.exit_thresholds):  # NaN too
            raise LoadError(f"--exit-threshold must list thresholds >= 0 (0 = every loop), got {self.exit_thresholds}")
        for name in ("micro_batch_size", "eval_iters", "seq_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LoadError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


@dataclass
class LoopEval:
    """Mean next-token loss over ``tokens`` predicted tokens (the targets other than -100) at ``loops`` iterations,
    with the early-exit rule at ``exit_threshold`` (0 = every token runs every loop): ``mean_depth`` iterations a
    predicted token executed on average, ``exit_share[t]`` the share of them that stopped after iteration t + 1,
    ``forward_flops_per_token`` what the forward computed per position it ran, padding included
    (``model.forward_flops_per_token``: the executed iterations, and the keys/values of exited tokens at the later
    iterations of their batch, :func:`~megamythos.model.recurrent.computed_iterations`)."""

    loops: int
    exit_threshold: float
    loss: float
    perplexity: float
    mean_depth: float
    exit_share: list[float]
    forward_flops_per_token: float
    tokens: int


@torch.no_grad()
def evaluate_loops(model: MythosLM, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], loops: Sequence[int],
                   exit_threshold: float = 0.0, progress: Callable[[], Any] | None = None,
                   documents: PackedDocuments | None = None) -> list[LoopEval]:
    """Evaluate ``batches`` (pairs of inputs [B, S] and next-token targets [B, S]) at each loop count.

    A target of -100 is not scored (``MythosLM``'s label convention): sequences of different lengths go into one
    batch right-padded, their inputs with any id and their targets with -100 (causal attention keeps the padding
    out of the scored positions). Deterministic for a fixed model and batch list (the model is put in eval mode;
    a ``state_init="noise"`` model draws its initial states from torch's generators seeded with 0 at the start of
    each loop count, so every row sees the same draws and the caller's generator state is left as it was).
    ``progress`` is called after every batch. ``documents``: the training run's packed-document flags, applied
    as its validation applies them (positions, attention, and targets at an end-of-document input not scored).
    """
    was_training = model.training
    model.eval()
    results = []
    try:
        for n_loops in loops:
            with noise_seeded(batches[0][0].device if batches else torch.device("cpu")):
                results.append(_evaluate_at(model, batches, n_loops, exit_threshold, progress, documents))
    finally:
        model.train(was_training)
    return results


@contextlib.contextmanager
def noise_seeded(device: torch.device) -> Iterator[None]:
    """Inside: torch's CPU generator (and ``device``'s, on CUDA) seeded with 0; outside, their states as before
    (the other devices' generators untouched: ``torch.manual_seed`` would reseed every one)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(0)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(0)
        yield


def _evaluate_at(model: MythosLM, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], n_loops: int,
                 exit_threshold: float, progress: Callable[[], Any] | None,
                 documents: PackedDocuments | None) -> LoopEval:
    """One row of :func:`evaluate_loops`: every batch at ``n_loops`` loops."""
    total_loss, total_tokens, positions, exits = 0.0, 0, 0, torch.zeros(n_loops)
    flops = 0.0  # forward FLOPs summed over the positions computed (each batch at its own length)
    for inputs, targets in batches:
        out = model(inputs, n_loops=n_loops, exit_threshold=exit_threshold, documents=documents)
        if documents is not None:
            targets = documents.scored(inputs, targets)
        total_loss += F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(),
                                      ignore_index=IGNORE_INDEX, reduction="sum").item()
        scored = targets != IGNORE_INDEX
        tokens = int(scored.sum())
        exits += exit_distribution(out.stats["depth"][scored], n_loops).cpu() * tokens  # from --device
        # iterations computed whole / frozen (keys/values only), summed over the batch's positions
        whole, frozen = computed_iterations(out.stats["depth"], int(out.stats["n_loops"]))
        flops += model.forward_flops_per_token(inputs.shape[1], whole / targets.numel(),
                                               frozen / targets.numel()) * targets.numel()
        total_tokens, positions = total_tokens + tokens, positions + targets.numel()
        if progress is not None:
            progress()
    if total_tokens == 0:
        raise ValueError("evaluate_loops: every target is -100, so there is no token to score")
    loss, share = total_loss / total_tokens, exits / total_tokens
    mean_depth = float((share * torch.arange(1, n_loops + 1)).sum())
    flops /= positions
    row = LoopEval(n_loops, exit_threshold, loss, math.exp(min(loss, 50.0)), mean_depth, share.tolist(), flops,
                   total_tokens)
    logger.info("loops %d%s: loss %.4f ppl %.2f, %.2f loops/token", n_loops,
                f" (exit < {exit_threshold:g})" if exit_threshold else "", loss, row.perplexity, mean_depth)
    return row


def default_results_dir(source: Path) -> Path:
    """Where results go without ``--out``: ``LOAD/eval/TAG`` for checkpoint tag ``source`` (outside the tags its
    run's ``--keep-last`` prunes), ``EXPORT/eval`` for an export."""
    return source / "eval" if is_export_dir(source) else source.parent / "eval" / source.name


def evaluated_on(loaded: LoadedModel, cfg: EvalConfig) -> dict[str, Any]:
    """What the rows of an evaluation measured, beyond loop count and threshold: the model (its path and the digest
    of its ``checksums.json``, None without one) and the held-out batches (the data flags as given)."""
    manifest = loaded.source / CHECKSUMS_FILE
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
    return {"model": str(loaded.source.resolve()), "checksums_sha256": digest, "data_path": cfg.data_path,
            "split": cfg.split, "seed": cfg.seed, "seq_length": cfg.seq_length, "test_set": cfg.test_set,
            "micro_batch_size": cfg.micro_batch_size, "eval_iters": cfg.eval_iters}


def same_evaluation(earlier: Any, evaluated: dict[str, Any]) -> bool:
    """Whether ``earlier`` (a ``depth_eval.json``'s ``evaluated``, :func:`evaluated_on`) measured the model and
    held-out batches ``evaluated`` does: the model is the digest of its ``checksums.json`` where both record one (a
    run folder moved, copied or reached through a link holds it at another path), else its path."""
    if not isinstance(earlier, dict):
        return False
    by_digest = bool(earlier.get("checksums_sha256") and evaluated.get("checksums_sha256"))
    return {k: v for k, v in earlier.items() if not (by_digest and k == "model")} == \
        {k: v for k, v in evaluated.items() if not (by_digest and k == "model")}


def merged_results(results: Sequence[LoopEval], json_path: Path, evaluated: dict[str, Any]) -> list[LoopEval]:
    """The rows of the evaluation recorded in ``json_path`` that measured the same ``evaluated`` model and data, but
    a loop count and threshold ``results`` lacks, then ``results``; ``results`` alone where the file is absent or
    records another evaluation (other data, another model, or none: a file written before evaluations merged)."""
    try:
        earlier = json.loads(json_path.read_text())
    except FileNotFoundError:
        return list(results)
    except ValueError:  # not JSON: replaced
        logger.warning("%s is no evaluation's results (not JSON): replacing it", json_path)
        return list(results)
    if not same_evaluation(earlier.get("evaluated"), evaluated):
        return list(results)
    new = {(r.loops, r.exit_threshold) for r in results}
    return [LoopEval(**row) for row in earlier["results"] if (row["loops"], row["exit_threshold"]) not in new] + \
        list(results)


def write_results(results: Sequence[LoopEval], out_dir: str | Path, trained_loops: int,
                  stem: str = "depth_eval", evaluated: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``stem``.csv/.json/.png into ``out_dir``, each whole or not at all (a temporary renamed into place),
    the JSON recording ``evaluated`` (:func:`evaluated_on`); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    paths = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(paths["csv"], table.getvalue())
    record = {"trained_loops": trained_loops, "evaluated": evaluated, "results": rows}
    write_atomic(paths["json"], json.dumps(record, indent=2) + "\n")
    _plot(results, trained_loops, paths["png"])
    return paths


def _plot(results: Sequence[LoopEval], trained_loops: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for threshold in sorted({r.exit_threshold for r in results}):
        subset = sorted((r for r in results if r.exit_threshold == threshold), key=lambda r: r.loops)  # --loops 8,1
        ax.plot([r.loops for r in subset], [r.perplexity for r in subset], marker="o",
                label=f"early exit < {threshold:g}" if threshold else "all loops")
    ax.axvline(trained_loops, color="grey", linestyle="--", label=f"trained mean depth ({trained_loops})")
    ax.set_xlabel("loop iterations at inference")
    ax.set_ylabel("perplexity")
    ax.set_xscale("log", base=2)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def write_tensorboard(results: Sequence[LoopEval], log_dir: str | Path, replace: bool = False) -> None:
    """Scalars ``depth-eval[-exit-T]/{loss,ppl,mean-depth,flops-per-token}`` with step = loop count, and with
    early exit the share of tokens stopping after each iteration, ``.../exit-share/loop-NN``.

    ``replace``: first remove the event files already in ``log_dir`` (evaluate's own default directory, whose
    events hold the rows the ``depth_eval`` files beside it hold; otherwise TensorBoard draws the points of every
    earlier evaluation there at the same loop counts as this one's)."""
    from torch.utils.tensorboard import SummaryWriter

    if replace:
        for old in Path(log_dir).glob("events.out.tfevents.*"):
            old.unlink()
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for r in results:
            prefix = f"depth-eval-exit-{r.exit_threshold:g}" if r.exit_threshold else "depth-eval"
            writer.add_scalar(f"{prefix}/loss", r.loss, r.loops)
            writer.add_scalar(f"{prefix}/ppl", r.perplexity, r.loops)
            writer.add_scalar(f"{prefix}/mean-depth", r.mean_depth, r.loops)
            writer.add_scalar(f"{prefix}/flops-per-token", r.forward_flops_per_token, r.loops)
            for i, share in enumerate(r.exit_share if r.exit_threshold else []):
                writer.add_scalar(f"{prefix}/exit-share/loop-{i + 1:02d}", share, r.loops)


def held_out_sources(loaded: LoadedModel, cfg: EvalConfig) -> tuple[DataSources | None, str]:
    """Where the held-out batches come from: ``--data-path``, else the run's recorded data (None: neither), and
    the split read, "valid" or with ``--test-set`` "test"."""
    sources = DataSources(list(cfg.data_path)) if cfg.data_path else DataSources.from_record(loaded.train_record or {})
    return sources, "test" if cfg.test_set else "valid"


def held_out_cache_dir(loaded: LoadedModel, cfg: EvalConfig) -> str | None:
    """Where the held-out data's caches go: ``--data-cache-dir``, else the run's recorded one where it exists on
    this machine, else None (beside the data) where the folder of every dataset takes them, else the recorded
    one, created as the trainer did. A run folder copied from another machine records a folder of that machine,
    which evaluate neither creates here nor fails on; data on a read-only mount (why the run was given
    ``--data-cache-dir``) keeps needing the run's folder after it was removed. The caches hold nothing but what the
    data gives, so their place changes no result (:func:`heldout_batches` says where they went)."""
    recorded = (loaded.train_record or {}).get("args", {}).get("data_cache_dir")
    if cfg.data_cache_dir is not None or recorded is None or os.path.isdir(recorded):
        return cfg.data_cache_dir or recorded
    sources, _ = held_out_sources(loaded, cfg)
    prefixes = sources.prefixes() if sources is not None else []
    return None if all(creatable(index_cache_dir(prefix, None)) for prefix in prefixes) else recorded


def heldout_batches(loaded: LoadedModel, cfg: EvalConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``cfg.eval_iters`` (inputs [B, S], targets [B, S]) batches of the validation split the training run used
    (its test split with ``cfg.test_set``): the first samples of the split's dataset, as the trainer reads them.

    Checks the datasets' tokenizer records and token ids against the model's before reading any sample (the
    trainer's checks, :func:`megamythos.data.pretraining.resolve_data`).
    """
    record = loaded.train_record or {}
    recorded = dict(record.get("args", {}))
    recorded.setdefault("seq_length", loaded.config.max_seq_len)
    recorded.update({k: v for k, v in (("split", cfg.split), ("seed", cfg.seed), ("seq_length", cfg.seq_length))
                     if v is not None})
    recorded["data_cache_dir"] = held_out_cache_dir(loaded, cfg)
    if recorded["data_cache_dir"] is None and (gone := record.get("args", {}).get("data_cache_dir")):
        logger.info("the run's --data-cache-dir %s does not exist on this machine (a run folder copied from another?): "
                    "the held-out data's index cache goes beside the data; pass --data-cache-dir to put it elsewhere",
                    gone)
    recipe = DataRecipe.from_record(recorded)
    if recipe.seq_length > loaded.config.max_seq_len:
        raise LoadError(f"--seq-length {recipe.seq_length} exceeds the model's context, max_seq_len="
                        f"{loaded.config.max_seq_len}; pass at most {loaded.config.max_seq_len}")
    sources, split = held_out_sources(loaded, cfg)
    if sources is None or not sources.prefixes():
        raise LoadError(f"{loaded.source} records no training data (exports do not); pass --data-path PREFIX")
    if cfg.data_path:  # the run's recorded data is named by its prefixes alone (resolve_data)
        sources.check_found()
    if sources.per_split is not None:
        if cfg.split is not None:
            raise LoadError(f"--split divides --data-path's documents, but the run of {loaded.source} read each split "
                            "from its own data (--train-data-path ...): leave --split out, or pass --data-path too")
        if not sources.blend(split):
            raise LoadError(f"the run of {loaded.source} was given no --{split}-data-path: pass --data-path PREFIX "
                            f"to evaluate on (its {'validation' if split == 'valid' else 'test'} split)")
    blend = sources.blend(split)
    for prefix in parse_data_path(blend)[0]:
        check_same_vocabulary(f"dataset {prefix}", read_dataset_metadata(prefix), f"model {loaded.source}",
                              loaded.tokenizer_record,
                              remedy="evaluate on data tokenised with the model's tokenizer")
    setup = resolve_data(blend, loaded.config.vocab_size, recipe.data_cache_dir)
    change = data_change(record.get("dataset_shapes", {}), setup.shapes, str(loaded.source))
    if change:
        logger.warning("%s. The held-out samples are drawn from what the datasets hold now, not those the run "
                       "validated on", change)
    needed = cfg.eval_iters * cfg.micro_batch_size
    _, valid, test = build_datasets(recipe, sources, record.get("total_iters", 0), record.get("global_batch_size", 0),
                                    min_held_out_samples=needed, with_valid=not cfg.test_set, with_test=cfg.test_set)
    dataset = test if cfg.test_set else valid
    if dataset is None:
        raise LoadError(f"--split {recipe.split} leaves the {'test' if cfg.test_set else 'validation'} split no "
                        f"sample of {' '.join(blend)}: pass train,valid,test weights with a positive "
                        f"{'third' if cfg.test_set else 'second'} one, such as 969,30,1 (the test split of a small "
                        "corpus may hold no document)")
    held_out = samples_per_epoch(dataset)
    if held_out is not None and needed > held_out:
        logger.warning("--eval-iters %d x --micro-batch-size %d = %d samples, but the held-out split holds %d samples "
                       "of %d tokens: some are read more than once; pass --eval-iters %d or fewer to read each once",
                       cfg.eval_iters, cfg.micro_batch_size, needed, held_out, recipe.seq_length,
                       max(1, held_out // cfg.micro_batch_size))
    it = batches(dataset, 0, cfg.micro_batch_size, 0, 1)
    out = [tuple(t.to(cfg.device) for t in next(it)) for _ in range(cfg.eval_iters)]
    logger.info("held-out data: the %s split of %s (%s), seed %d, %d batches of %d x %d = %d tokens", split,
                " ".join(blend), "read whole" if sources.per_split is not None else f"--split {recipe.split}",
                recipe.seed, cfg.eval_iters, cfg.micro_batch_size, recipe.seq_length, needed * recipe.seq_length)
    return out


def recorded_documents(loaded: LoadedModel, cfg: EvalConfig) -> PackedDocuments | None:
    """The packed-document flags the training run recorded (none for an export), with the end-of-document id of
    the held-out data (``--data-path``, else the run's)."""
    flags = document_flags((loaded.train_record or {}).get("args", {}))
    sources, split = held_out_sources(loaded, cfg)
    eod = (documents_eod(flags, parse_data_path(sources.blend(split))[0], str(loaded.source),
                         held_out_cache_dir(loaded, cfg))
           if sources is not None else None)
    return None if eod is None else PackedDocuments(eod, **flags)


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate, write the files and TensorBoard scalars; returns the summary printed by :func:`main`."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if resolve_device(cfg.device).type == "cpu":  # before the first tensors
        logger.info("host memory: %s", keep_freed_memory())
    loaded = load_model(cfg.load, cfg.tokenizer, cfg.device)
    out_dir = Path(cfg.out) if cfg.out else default_results_dir(loaded.source)
    tb_dir = Path(cfg.tensorboard_dir) if cfg.tensorboard_dir else out_dir / "tensorboard"
    try:  # before the evaluation, not after it
        writable_directory(out_dir, "--out")
    except OutputError as err:
        if cfg.out:
            raise
        why = describe_os_error(err.__cause__) if isinstance(err.__cause__, OSError) else "not writable"
        raise OutputError(f"without --out the results go beside the checkpoint, in {out_dir}, which cannot be "
                          f"written ({why}; a run folder on a read-only mount?): give --out DIR") from err
    writable_directory(tb_dir, "--tensorboard-dir")
    data = heldout_batches(loaded, cfg)
    documents = recorded_documents(loaded, cfg)
    if documents is not None:
        logger.info("packed documents as the run trained: %s", documents)
    thresholds = [loaded.config.exit_threshold] if cfg.exit_thresholds is None else cfg.exit_thresholds
    passes = sorted({0.0, *thresholds})
    # each row's log line goes above the bar (tqdm.write), not onto the end of the bar's line
    with logging_redirect_tqdm(), tqdm(total=len(passes) * len(cfg.loops) * len(data), desc="depth eval",
                                       unit="batch", file=sys.stderr) as bar:
        results = [r for threshold in passes
                   for r in evaluate_loops(loaded.model, data, cfg.loops, threshold, bar.update, documents)]
    replace = cfg.out is None and cfg.tensorboard_dir is None  # evaluate's own folder: its files say it all
    evaluated = evaluated_on(loaded, cfg)
    with locked_folder(out_dir):  # evaluations into one folder take turns: each adds its rows to what is there
        held = merged_results(results, out_dir / "depth_eval.json", evaluated)
        paths = write_results(held, out_dir, trained_loops=loaded.config.mean_loops, evaluated=evaluated)
        write_tensorboard(held if replace else results, tb_dir, replace=replace)
    return {"model": str(loaded.source), "trained_loops": loaded.config.mean_loops,
            "files": {k: str(v) for k, v in paths.items()}, "tensorboard": str(tb_dir),
            "results": [asdict(r) for r in results]}


def parse_args(argv: Sequence[str] | None = None) -> EvalConfig:
    """The command line of ``python -m megamythos.inference.evaluate`` as a validated :class:`EvalConfig`."""
    p = ArgumentParser(prog="python -m megamythos.inference.evaluate", description=__doc__)
    p.add_argument("--load", required=True, type=path_text,
                   help="checkpoint tag dir, --save dir (uses `latest`) or export dir")
    p.add_argument("--data-path", nargs="*", type=path_text, default=[],
                   help="dataset prefixes (default: the training run's)")
    p.add_argument("--split", type=checked_by(parse_split), help="train,valid,test weights (default: the training "
                   "run's)")
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), help="data seed (default: the training run's)")
    p.add_argument("--seq-length", type=int, help="default: the training run's, else the model's max_seq_len")
    p.add_argument("--data-cache-dir", type=path_text,
                   help="where the held-out split's index cache goes (default: the training run's --data-cache-dir "
                        "where it exists on this machine, else beside the data)")
    p.add_argument("--test-set", action="store_true",
                   help="evaluate the run's test split (of --split, or its --test-data-path) instead of its "
                        "validation split, as Megatron's test set at the end of training")
    p.add_argument("--micro-batch-size", type=int, default=EvalConfig.micro_batch_size, help="samples per batch")
    p.add_argument("--eval-iters", type=int, default=EvalConfig.eval_iters,
                   help="batches evaluated at every loop count")
    p.add_argument("--loops", default=DEFAULT_LOOPS, help="comma-separated loop counts")
    p.add_argument("--exit-threshold", dest="exit_thresholds",
                   help="comma-separated early-exit thresholds: each adds a row per loop count in which a token "
                        "stops once ||h_{t+1} - h_t|| / ||h_{t+1}|| falls below it, next to the every-loop rows "
                        f"(default: the checkpoint config's exit_threshold, {ModelConfig.exit_threshold:g} unless "
                        "trained with --override exit_threshold=...; 0: the every-loop rows only)")
    p.add_argument("--tokenizer", type=checked_by(check_model_file, path=True),
                   help="tokenizer .model (must be the one the model was trained with)")
    p.add_argument("--out", type=path_text,
                   help="results directory (default: LOAD/eval/TAG for a checkpoint: beside the tags in the --load "
                        "directory, out of --keep-last's reach; eval/ in an export)")
    p.add_argument("--tensorboard-dir", type=path_text, help="default: OUT/tensorboard")
    p.add_argument("--device", default=default_device(), help="cpu or cuda")
    ns = vars(p.parse_args(argv))
    try:
        ns["loops"] = list(dict.fromkeys(int(x) for x in ns["loops"].split(",")))  # each count once
    except ValueError:
        p.error(f"--loops expects comma-separated integers such as {DEFAULT_LOOPS}, got {ns['loops']!r}")
    try:
        if ns["exit_thresholds"] is not None:
            ns["exit_thresholds"] = list(dict.fromkeys(float(x) for x in ns["exit_thresholds"].split(",") if x))
    except ValueError:
        p.error(f"--exit-threshold expects comma-separated numbers such as 0.1,0.15, got {ns['exit_thresholds']!r}")
    if ns["exit_thresholds"] == []:  # '' or ',': the flag given with no threshold, not left out
        p.error("--exit-threshold lists no threshold: give comma-separated numbers such as 0.1,0.15, or leave the flag "
                "out")
    return EvalConfig(**ns)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, evaluate, print the summary line; user errors exit 2 with one line on stderr."""

    def go() -> int:
        print(json.dumps(run(parse_args(argv))), flush=True)
        return 0

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
