"""CPU-sized studies of the recurrent-depth claims, one command each, equal token budgets per run.

    python -m megamythos.research.study depth      # fixed vs sampled depth + truncated backprop, eval 1..2x depth
    python -m megamythos.research.study injection  # LTI vs additive vs concat injection at a high learning rate
    python -m megamythos.research.study dense      # dense baselines: 2x the looped model's unique params / equal FLOPs
    python -m megamythos.research.study ponder     # PonderNet's learned halting vs the stack's recipe + exit rule
    python -m megamythos.research.study capacity   # loop capacity vs the default recipe vs fixed depth, equal FLOPs

Each run trains single-process on the embedded stdlib corpus (``--corpus stdlib``) or wikitext-2
(``--corpus wikitext2 --wikitext-dir DIR``), evaluates on held-out documents and writes
``study_<name>.json`` and ``study_<name>.png`` into ``OUT/CORPUS/`` (``--out``; a report of other settings there is
refused, not replaced), both rewritten after every run: ``runs_pending`` in the report names the runs it lacks (a
killed study's are added with ``--runs``). The report records its dataset (``data``: digests and tokenizer) and each
run what made it (``environment``: commit, versions, threads, device). ``--scale`` multiplies the steps and (in
steps of 64) the width, so the same study runs bigger on a GPU (``--device cuda``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from megamythos.checkpoint.files import write_atomic
from megamythos.data.atomic import atomic_open, locked_folder, writable_directory
from megamythos.errors import (
    TIMED_CLI_LOG_FORMAT,
    ArgumentParser,
    UserError,
    number,
    path_text,
    read_json_object,
    run_cli,
)
from megamythos.inference.evaluate import evaluate_loops
from megamythos.model.config import ModelConfig
from megamythos.model.lm import MythosLM, weight_decay_param_groups
from megamythos.model.moe import update_expert_bias
from megamythos.model.params import count
from megamythos.model.recurrent import sample_loop_count
from megamythos.research.baselines import DenseLM, dense_params, dense_train_flops_per_token, matching_dense_layers
from megamythos.research.ponder import BETA, PonderLM, evaluate_halting, ponder_train_flops_per_token
from megamythos.runtime.device import resolve_device
from megamythos.training.schedules import LRSchedule

logger = logging.getLogger(__name__)


class StudyError(UserError, ValueError):
    """A study command line that names a missing corpus or an unknown run, or would overwrite another study's
    report."""


@dataclass
class StudySettings:
    """Budget shared by every run of a study (equal tokens per run)."""

    steps: int = 2000  # x 8 x 128 = 2.05M tokens per run
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 2e-3
    warmup: int = 30
    min_lr_fraction: float = 0.1  # cosine decay ends at this fraction of the peak LR
    seed: int = 1234
    eval_batches: int = 8
    device: str = "cpu"
    scale: float = 1.0

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len

    def schedule(self, peak: float) -> LRSchedule:
        """A run's LR schedule at peak LR ``peak``: the trainer's warmup + cosine over ``steps``."""
        return LRSchedule(lr=peak, min_lr=self.min_lr_fraction * peak, warmup=self.warmup, total=self.steps)


@dataclass
class RunSpec:
    """One training run: model overrides on the study base config, or a dense baseline of ``dense_match``."""

    name: str
    overrides: dict = field(default_factory=dict)
    sampled_depth: bool = False
    backprop_loops: int = 0
    lr: float | None = None
    dense_match: str | None = None  # "params", "2params" or "flops" (see baselines.matching_dense_layers)
    ponder_loops: int = 0  # > 0: PonderNet training at this fixed depth (see research.ponder)
    equal_flops: bool = False  # steps scaled so the run spends the training FLOPs of the default recipe's budget


def base_config(vocab_size: int, settings: StudySettings) -> ModelConfig:
    """Study model: ~1M non-embedding parameters at scale 1, mean depth 4."""
    dim = 64 * max(1, round(2 * settings.scale))
    return ModelConfig(vocab_size=vocab_size, dim=dim, max_seq_len=settings.seq_len, n_heads=4, q_lora_rank=dim // 2,
                       kv_lora_rank=dim // 4, qk_rope_head_dim=16, qk_nope_head_dim=dim // 8, v_head_dim=dim // 8,
                       prelude_layers=1, coda_layers=1, mean_loops=4, max_loops=8, n_experts=8, n_shared_experts=1,
                       num_experts_per_tok=2, expert_dim=dim, lora_rank=0, seq_aux_loss_coef=1e-4)


CAPACITY_6_LOOPS = {"mean_loops": 6, "max_loops": 6, "loop_capacity": (1.0, 1.0, 1.0, 0.5, 0.25, 0.25)}
CAPACITY_LEARNED = {**CAPACITY_6_LOOPS, "capacity_router": "learned"}
EXPERIMENTS: dict[str, list[RunSpec]] = {
    "depth": [RunSpec("fixed_depth"),
              RunSpec("sampled_depth_tbptt", sampled_depth=True, backprop_loops=2)],
    "injection": [RunSpec(f"{kind}_lr{lr:g}", {"injection": kind}, lr=lr)
                  for lr in (2e-3, 8e-3) for kind in ("lti", "additive", "concat")],
    # the looped model these compare with is the depth study's run at the same budget
    "dense": [RunSpec("dense_2x_params", dense_match="2params"), RunSpec("dense_same_flops", dense_match="flops")],
    # PonderNet at the study model's max depth (its prior mean is the trained mean depth 4) vs the stack's recipe
    "ponder": [RunSpec("pondernet_n8", ponder_loops=8),
               RunSpec("sampled_depth_tbptt", sampled_depth=True, backprop_loops=2)],
    # at the default recipe's training FLOPs: loop capacity (6 loops, mean depth 4) with the default's truncation
    # to the last 2 loops and with full backprop (MoR's), ranked by state change or by MoR's learned router, and
    # fixed depth 4 with full backprop (fewer steps)
    "capacity": [RunSpec("sampled_depth_tbptt", sampled_depth=True, backprop_loops=2),
                 RunSpec("capacity_6loops_tbptt", CAPACITY_6_LOOPS, backprop_loops=2, equal_flops=True),
                 RunSpec("fixed_depth", equal_flops=True),
                 RunSpec("capacity_6loops_full_backprop", CAPACITY_6_LOOPS, equal_flops=True),
                 RunSpec("capacity_6loops_learned_router_full_backprop", CAPACITY_LEARNED, equal_flops=True)],
}
DEFAULT_RECIPE = EXPERIMENTS["depth"][1]  # what the trainer does: sampled depth, backprop through the last 2 loops
EVAL_LOOPS = [1, 2, 3, 4, 6, 8]
EXIT_THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.3]  # early-exit rows at the trained depth and at twice it


def loop_count(spec: RunSpec, run_config: ModelConfig, seed: int, step: int) -> int:
    """The loops a run trains at ``step``: sampled as the trainer samples them, or its fixed mean depth."""
    if not spec.sampled_depth:
        return run_config.mean_loops
    return sample_loop_count(run_config.mean_loops, run_config.loop_sigma, run_config.resolved_max_loops, seed, step)


def train_flops_per_token(spec: RunSpec, config: ModelConfig, settings: StudySettings) -> float:
    """Mean training FLOPs per token of a looped run over its ``settings.steps`` loop counts."""
    cfg = config.replace(**spec.overrides, backprop_loops=spec.backprop_loops)
    return float(np.mean([count(cfg, settings.seq_len, loop_count(spec, cfg, settings.seed, step)).train_flops_per_token
                          for step in range(settings.steps)]))


def run_steps(spec: RunSpec, config: ModelConfig, settings: StudySettings) -> int:
    """``settings.steps``, or with ``equal_flops`` the steps that spend what the default recipe spends in them
    (each recipe's FLOPs per token averaged over the loop counts of ``settings.steps`` steps)."""
    if not spec.equal_flops:
        return settings.steps
    ratio = train_flops_per_token(DEFAULT_RECIPE, config, settings) / train_flops_per_token(spec, config, settings)
    return round(settings.steps * ratio)


def build_model(spec: RunSpec, config: ModelConfig, settings: StudySettings) -> tuple[nn.Module, dict]:
    """The run's model and a description (params, training FLOPs per token: a looped run's averaged over the loop
    counts of its ``settings.steps`` steps, as the equal-FLOPs matching counts them)."""
    if spec.dense_match:
        layers = matching_dense_layers(config, spec.dense_match, settings.seq_len)
        info = {"kind": "dense", "layers": layers, "params": dense_params(config, layers),
                "train_flops_per_token": dense_train_flops_per_token(config, layers, settings.seq_len)}
        return DenseLM(config, layers), info
    cfg = config.replace(**spec.overrides)
    report = count(cfg, seq_len=settings.seq_len)
    info = {"kind": "looped", "params": report.total, "active_params": report.active_per_token,
            "train_flops_per_token": train_flops_per_token(spec, config, settings)}
    if spec.ponder_loops:
        model = PonderLM(cfg, spec.ponder_loops)
        info.update(kind="ponder", params=sum(p.numel() for p in model.parameters()), beta=BETA,
                    halting_prior=model.prior.tolist(),
                    train_flops_per_token=ponder_train_flops_per_token(cfg, settings.seq_len, spec.ponder_loops))
        return model, info
    return MythosLM(cfg), info


def training_loss(model: nn.Module, spec: RunSpec, batch: torch.Tensor,
                  loops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise incl. aux terms, the next-token CE to report) for one batch [B, S + 1]; PonderNet's CE
    is its expected loss under the halting distribution."""
    inputs, labels = batch[:, :-1], batch[:, 1:]
    if spec.ponder_loops:
        out = model.ponder_loss(inputs, labels)
        return out.loss + out.aux_loss, out.task_loss
    out = model(inputs, labels=labels, n_loops=loops, backprop_loops=spec.backprop_loops)
    return out.loss + out.aux_loss, out.loss


def train_steps(model: nn.Module, spec: RunSpec, config: ModelConfig, settings: StudySettings,
                batch_at: Callable[[int], torch.Tensor]) -> tuple[list[float], int | None]:
    """Train ``model`` for ``settings.steps`` steps -> (training CE per step, the step it diverged at or None):
    divergence (non-finite or 3x the first loss) stops it early."""
    peak = spec.lr or settings.lr
    schedule = settings.schedule(peak)
    optimizer = torch.optim.AdamW(weight_decay_param_groups(model, 0.1), lr=peak, betas=(0.9, 0.95))
    run_config = config.replace(**spec.overrides)
    losses: list[float] = []
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.learning_rate(step)
        batch = batch_at(step).to(settings.device)
        loss, ce = training_loss(model, spec, batch, loop_count(spec, run_config, settings.seed, step))
        if not torch.isfinite(loss) or (losses and loss.item() > 3 * losses[0]):
            return losses, step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_expert_bias(model, config.expert_bias_update_rate)
        losses.append(ce.item())
    return losses, None


def train_run(spec: RunSpec, config: ModelConfig, settings: StudySettings, batch_at: Callable[[int], torch.Tensor],
              valid: Sequence[torch.Tensor]) -> dict:
    """Train one run (:func:`train_steps`) and evaluate it; a diverged run is reported, not evaluated."""
    torch.manual_seed(settings.seed)
    steps = run_steps(spec, config, settings)
    model, info = build_model(spec, config, dataclasses.replace(settings, steps=steps))
    model.to(settings.device).train()
    peak = spec.lr or settings.lr
    start = time.time()
    losses, diverged_at = train_steps(model, spec, config, dataclasses.replace(settings, steps=steps), batch_at)
    stride = max(1, len(losses) // 50)  # about 50 points of the loss curve
    result = {"name": spec.name, **info, "lr": peak, "sampled_depth": spec.sampled_depth, "steps": steps,
              "tokens": steps * settings.batch_size * settings.seq_len,
              "backprop_loops": spec.backprop_loops, "overrides": spec.overrides, "diverged_at": diverged_at,
              "train_loss_curve": losses[::stride], "train_loss_curve_stride": stride, "seconds": time.time() - start,
              "final_train_loss": float(np.mean(losses[-20:])) if losses else float("nan")}
    if diverged_at is None:
        valid = [(b[:, :-1].to(settings.device), b[:, 1:].to(settings.device)) for b in valid]  # (inputs, targets)
        loops = [1] if spec.dense_match else EVAL_LOOPS
        result["eval"] = [asdict(r) for r in evaluate_loops(model, valid, loops)]
        if not spec.dense_match:
            depths = [config.mean_loops, 2 * config.mean_loops]
            result["eval_exit"] = [asdict(r) for threshold in EXIT_THRESHOLDS
                                   for r in evaluate_loops(model, valid, depths, exit_threshold=threshold)]
        if spec.ponder_loops:
            halting, p_mean = evaluate_halting(model, valid)
            result["eval_ponder"], result["ponder_mean_halting_p"] = asdict(halting), p_mean
    logger.info("%s: final train loss %.3f, diverged at %s, %.0fs", spec.name, result["final_train_loss"],
                diverged_at, result["seconds"])
    return result


def wikitext_files(wikitext_dir: str | None) -> list[str]:
    """wikitext-2's ``valid.txt`` and ``test.txt`` in ``wikitext_dir`` (``--wikitext-dir``), the text the
    wikitext2 corpus is built from; a :class:`StudyError` when the flag is missing or the folder lacks either."""
    if not wikitext_dir:
        raise StudyError("--corpus wikitext2 needs --wikitext-dir DIR, a folder holding wikitext-2's valid.txt and "
                         "test.txt")
    files = [os.path.join(wikitext_dir, name) for name in ("valid.txt", "test.txt")]
    if not all(os.path.isfile(f) for f in files):
        raise StudyError(f"--wikitext-dir {wikitext_dir!r} is not a directory holding wikitext-2's valid.txt and "
                         "test.txt: pass the folder that holds them")
    return files


def prepare_corpus(corpus: str, work_dir: str, wikitext_dir: str | None) -> str:
    """Build (once) the study dataset; returns its IndexedDataset prefix. wikitext-2's is built again only in
    another ``work_dir``: one built from other files than ``wikitext_dir``'s is refused (:func:`check_sources`)."""
    from megamythos.data.default_corpus import ensure_default_dataset

    if corpus == "stdlib":
        return ensure_default_dataset(work_dir, vocab_size=4096)[0]
    from megamythos.data.preprocess import PreprocessConfig, preprocess
    from megamythos.data.tokenizer import TokenizerTrainConfig, train_tokenizer

    files = wikitext_files(wikitext_dir)
    prefix = os.path.join(work_dir, "wikitext2")
    model_path = prefix + "_tokenizer.model"
    check_sources(prefix, files, built=[model_path, prefix + "_text_document.idx"])
    if not os.path.exists(model_path):
        texts = [Path(f).read_text() for f in files]
        train_tokenizer(texts, TokenizerTrainConfig(vocab_size=4096, model_prefix=prefix + "_tokenizer"))
    data_prefix = prefix + "_text_document"
    if not os.path.exists(data_prefix + ".idx"):
        preprocess(PreprocessConfig(inputs=files, output_prefix=prefix, tokenizer_model=model_path,
                                    blank_line_documents=True, append_eod=True))
    return data_prefix


def source_digests(files: Sequence[str]) -> dict[str, str]:
    """{file name: sha256 of its bytes} of a corpus's source files (their folder left out: a moved copy is the
    same corpus)."""
    from megamythos.data.manifest import file_sha256

    return {os.path.basename(path): file_sha256(path) for path in files}


def check_sources(prefix: str, files: Sequence[str], built: Sequence[str]) -> None:
    """Record in ``{prefix}.sources.json`` which ``files`` the corpus at ``prefix`` is built from, before it is
    built, and refuse (a :class:`StudyError`) a corpus in the work folder built from other files, which would
    otherwise be reused as it stands. A corpus of ``built`` files from before the record was kept is taken to be
    of ``files``, with a warning."""
    record = prefix + ".sources.json"
    sources = {"sources": source_digests(files)}
    if os.path.exists(record):
        if read_json_object(record, StudyError, f"remove {prefix}* to build it again") != sources:
            raise StudyError(f"--work-dir {os.path.dirname(prefix) or '.'} holds a {os.path.basename(prefix)} corpus "
                             f"built from other files than {', '.join(files)}; pass another --work-dir, or remove "
                             f"{prefix}* to build it again")
        return
    if any(os.path.exists(path) for path in built):
        logger.warning("%s was built before its source files were recorded; taking it to be built from %s (remove "
                       "%s* to build it again)", prefix, ", ".join(files), prefix)
    Path(record).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(record), json.dumps(sources, indent=2) + "\n")


def token_batches(data_prefix: str, settings: StudySettings) -> tuple[Callable[[int], torch.Tensor],
                                                                     list[torch.Tensor], int]:
    """(train batch for a step, fixed validation batches, vocab size) from a document-level 95/5 split."""
    from megamythos.data import read_dataset_metadata
    from megamythos.data.gpt_dataset import build_train_valid_test_datasets

    n_valid = settings.eval_batches * settings.batch_size
    train, valid, _ = build_train_valid_test_datasets([data_prefix], "95,5,0", settings.seq_len, settings.seed,
                                                      (settings.steps * settings.batch_size, n_valid, 0))
    vocab = int(read_dataset_metadata(data_prefix)["vocab_size"])

    def stack(ds, start: int) -> torch.Tensor:
        rows = [ds[i]["tokens"] for i in range(start, start + settings.batch_size)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    valid_batches = [stack(valid, i * settings.batch_size) for i in range(settings.eval_batches)]
    return (lambda step: stack(train, step * settings.batch_size)), valid_batches, vocab


def code_version() -> str:
    """The git commit of the megamythos checkout this runs from, ``+modified`` where its tracked files differ from
    it; ``unknown`` where this file is no tracked file of a git checkout (an installed copy, also one in a virtual
    environment inside some repository, whose commit says nothing of this code)."""
    here = Path(__file__).resolve()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here.parent), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "--", here.name)  # fails for a file git does not track
        commit = git("rev-parse", "HEAD")
        return commit + ("+modified" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str) -> dict[str, Any]:
    """What a run's numbers depend on besides its settings and data: the code (:func:`code_version`), the
    versions of Python, torch and numpy, torch's CPU threads (a run on 2 threads differs from one on 1 in the last
    bits) and the device."""
    env = {"code": code_version(), "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


def data_record(data_prefix: str) -> dict[str, Any]:
    """The study dataset's identity from its record (``PREFIX.json``): documents, tokens, the tokenizer's
    fingerprint and the files' sha256 block digests (``checksums``, None for a dataset made without them)."""
    from megamythos.data import read_dataset_metadata

    record = read_dataset_metadata(data_prefix)
    return {key: record.get(key) for key in ("num_documents", "num_tokens", "tokenizer_fingerprint", "checksums")}


def same_data(earlier: dict, report: dict) -> bool:
    """Whether two reports are of the same dataset: the same bytes where both record them (``data``: a report
    from before they were recorded has none), else the same ``data_prefix``."""
    if earlier.get("data", {}).get("checksums") and report["data"]["checksums"]:
        return earlier["data"] == report["data"]
    return earlier.get("data_prefix") == report["data_prefix"]


def earlier_report(path: Path, report: dict, partial: bool) -> dict:
    """The report at ``path`` that a study adds to (``partial``: of some runs, ``--runs``) or replaces: {} when
    there is none, else it must be of the same experiment, settings, data (:func:`same_data`) and base config as
    ``report`` (else a :class:`StudyError`: a study never replaces another study's report, e.g. the published one
    in ``bench/results/study``, with runs of other settings)."""
    if not path.exists():
        return {}
    earlier = read_json_object(path, StudyError, "restore it or pass another --out")
    same = (all(earlier.get(k) == report[k] for k in ("experiment", "settings")) and same_data(earlier, report)
            and ModelConfig.from_dict(earlier.get("base_config", {})) == ModelConfig.from_dict(report["base_config"]))
    if not same:
        what = "--runs would replace it with a partial report" if partial else "this study would replace it"
        raise StudyError(f"{path} holds a study of other settings, data or model; {what}: pass another --out, or "
                         "move that report away first")
    return earlier


def report_paths(out_dir: str | os.PathLike, name: str, given: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Create ``out_dir`` and return where experiment ``name``'s report goes in it: (``study_<name>.json``,
    ``study_<name>.png``). A :class:`StudyError` naming ``--out`` (its value ``given``, default ``out_dir``) when
    ``out_dir`` cannot be made a writable folder or a report path is a folder, before anything is trained."""
    given = out_dir if given is None else given
    writable_directory(out_dir, "--out", given)
    paths = Path(out_dir) / f"study_{name}.json", Path(out_dir) / f"study_{name}.png"
    for path in paths:
        if path.is_dir():
            raise StudyError(f"--out {given}: {path} is a folder, where the study writes its report; move it "
                             "away or pass another --out")
    return paths


def check_runs(name: str, runs: Sequence[str]) -> None:
    """Every name in ``runs`` must be a run of experiment ``name`` (else a :class:`StudyError`)."""
    specs = EXPERIMENTS[name]
    unknown = sorted(set(runs) - {spec.name for spec in specs})
    if unknown:
        raise StudyError(f"--runs {','.join(unknown)}: not a run of {name}; choose from "
                         f"{', '.join(spec.name for spec in specs)}")


def run_experiment(name: str, settings: StudySettings, data_prefix: str, out_dir: str,
                   runs: Sequence[str] = ()) -> dict:
    """Train and evaluate the runs of experiment ``name`` (only ``runs``, when given: the report in ``out_dir``
    keeps its other runs, those that studies of other ``runs`` add to it meanwhile included) and write
    ``study_<name>.{json,png}``, whose ``runs_pending`` lists the experiment's runs the report does not hold yet
    ([] once complete). Every run sees the same batches. A report of other settings, data or model in ``out_dir``
    is refused before anything is trained (:func:`earlier_report`)."""
    from megamythos.data import read_dataset_metadata

    specs = EXPERIMENTS[name]
    check_runs(name, runs)
    path, plot_path = report_paths(out_dir, name)  # before the batches are built and the runs trained
    config = base_config(int(read_dataset_metadata(data_prefix)["vocab_size"]), settings)
    most_steps = max(run_steps(spec, config, settings) for spec in specs)  # of every run: the same batches
    batch_at, valid, _ = token_batches(data_prefix, dataclasses.replace(settings, steps=most_steps))
    report = {"experiment": name, "settings": asdict(settings), "data_prefix": data_prefix,
              "data": data_record(data_prefix), "base_config": config.to_dict(), "runs": []}
    if not any(spec.equal_flops for spec in specs):  # else each run's "tokens" says what it trained on
        report["tokens_per_run"] = settings.tokens
    earlier = earlier_report(path, report, partial=bool(runs))
    if runs:
        report = {**earlier, **report}  # and what else the earlier report recorded (a note)
    trained: dict[str, dict] = {}

    def write_report() -> None:
        with locked_folder(path.parent):  # studies of other --runs into the same report take turns
            others = {}
            if runs:  # read again: another study of --runs may have added its runs since
                others = {run["name"]: run for run in earlier_report(path, report, partial=True).get("runs", [])
                          if run["name"] not in runs}
            held = {**others, **trained}
            report["runs"] = [held[s.name] for s in specs if s.name in held]
            report["runs_pending"] = [s.name for s in specs if s.name not in held]
            write_atomic(path, json.dumps(report, indent=2) + "\n")
            plot_experiment(report, plot_path)

    # the report and its plot are written before the first run and after each: a long study shows its progress,
    # and one that is killed leaves a report whose runs_pending names what it lacks (``--runs`` adds them)
    write_report()
    for spec in specs:
        if not runs or spec.name in runs:
            trained[spec.name] = {**train_run(spec, config, settings, batch_at, valid),
                                  "environment": environment(settings.device)}
            write_report()
    return report


def loss_curve_steps(run: dict[str, Any], report_steps: int) -> list[int]:
    """The step of each point of ``run``'s thinned training-loss curve: its own stride, since runs at equal
    FLOPs (or a diverged one) have step counts of their own (a report from before the stride was kept: the
    stride of the run's step count, or of the report's ``report_steps`` before runs kept theirs)."""
    stride = run.get("train_loss_curve_stride", max(1, run.get("steps", report_steps) // 50))
    return [i * stride for i in range(len(run["train_loss_curve"]))]


def plot_experiment(report: dict, path: Path) -> None:
    """Left: training loss curves; right: held-out perplexity vs loops (dense runs as horizontal lines), with the
    exit rule's rows at the deepest evaluated depth (x) and PonderNet's halting (*) placed at their mean loops.
    The title of a report with ``runs_pending`` says how many of the runs it holds. Written whole or not at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run in report["runs"]:
        curve = run["train_loss_curve"]
        left.plot(loss_curve_steps(run, report["settings"]["steps"]), curve, label=run["name"])
        if "eval" not in run:
            continue
        ppl = [e["perplexity"] for e in run["eval"]]
        if len(ppl) == 1:
            right.axhline(ppl[0], linestyle=":", label=run["name"], color=left.lines[-1].get_color())
        else:
            right.plot([e["loops"] for e in run["eval"]], ppl, marker="o", label=run["name"],
                       color=left.lines[-1].get_color())
        deepest = [e for e in run.get("eval_exit", []) if e["loops"] == max(x["loops"] for x in run["eval_exit"])]
        right.scatter([e["mean_depth"] for e in deepest], [e["perplexity"] for e in deepest], marker="x",
                      color=left.lines[-1].get_color(), label=f"{run['name']}: exit rule (mean loops)")
        if "eval_ponder" in run:
            halting = run["eval_ponder"]
            right.scatter([halting["mean_depth"]], [halting["perplexity"]], marker="*", s=120,
                          color=left.lines[-1].get_color(), label=f"{run['name']}: halting p > 0.5 (mean loops)")
    right.axvline(report["base_config"]["mean_loops"], color="grey", linestyle="--", label="trained mean depth")
    pending = report.get("runs_pending", [])
    held = f" ({len(report['runs'])} of {len(report['runs']) + len(pending)} runs)" if pending else ""
    left.set(xlabel="step", ylabel="train loss", title=f"{report['experiment']}: training{held}")
    right.set(xlabel="loops at inference", ylabel="held-out perplexity", yscale="log", title="depth extrapolation")
    if report["runs"]:
        left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path) as handle:
        fig.savefig(handle, dpi=100, format="png")
    plt.close(fig)


def log_pending_runs(path: Path, prog: str, argv: Sequence[str]) -> None:
    """Log, for a study stopped during its runs, the runs its report at ``path`` lacks (``runs_pending``) and the
    command that adds them: the study's own, ``prog`` and ``argv``, its ``--runs`` replaced by theirs. Nothing
    where there is no report yet."""
    try:
        pending = json.loads(path.read_text()).get("runs_pending")
    except (OSError, ValueError):
        return
    if pending:
        given = [arg for i, arg in enumerate(argv) if not (arg == "--runs" or arg.startswith("--runs=")
                                                            or i and argv[i - 1] == "--runs")]
        command = shlex.join([*given, "--runs", ",".join(pending)])
        logger.warning("%s lacks the runs %s; to add them: %s %s", path, ", ".join(pending), prog, command)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m megamythos.research.study", description=__doc__)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS), help="the study to run (see above)")
    parser.add_argument("--corpus", choices=["stdlib", "wikitext2"], default="stdlib",
                        help="what the runs train and evaluate on: the embedded stdlib corpus, or wikitext-2 from "
                             "--wikitext-dir")
    parser.add_argument("--wikitext-dir", type=path_text, default=None,
                        help="wikitext-2's folder (valid.txt, test.txt); with --corpus wikitext2 only")
    parser.add_argument("--work-dir", type=path_text, default="data/study",
                        help="where corpora and index caches are built")
    parser.add_argument("--out", type=path_text, default="runs/study",
                        help="results go to OUT/CORPUS/ (default runs/study; the figures of docs/results.md: "
                             "bench/results/study)")
    parser.add_argument("--scale", type=number(float, 0, 64, low_open=True), default=StudySettings.scale,
                        help="multiplies the steps; the width is 64 x round(2 x SCALE), at least 64 (128 at 1; "
                             "at most 64: width 8192)")
    parser.add_argument("--steps", type=number(int, 1), default=None,
                        help=f"training steps per run (default {StudySettings.steps} x --scale)")
    parser.add_argument("--device", default=StudySettings.device, help="cpu or cuda")
    parser.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=StudySettings.seed,
                        help="data and initialisation seed")
    parser.add_argument("--runs", default="", help="only these runs of the experiment (comma-separated names); the "
                        "report in --out keeps its other runs")
    args = parser.parse_args(argv)

    def study() -> int:
        resolve_device(args.device)  # before the corpus is built
        settings = StudySettings(steps=args.steps or max(1, int(StudySettings.steps * args.scale)), scale=args.scale,
                                 device=args.device, seed=args.seed)
        if settings.schedule(settings.lr).warms_up_whole_run:  # the trainer warns of its --warmup alike
            logger.warning("--steps %d%s is not above the study's %d warmup steps: each run's LR rises for the whole "
                           "run and never decays; give --steps above %d for runs that follow their whole schedule",
                           settings.steps, "" if args.steps else f" ({StudySettings.steps} x --scale)",
                           settings.warmup, settings.warmup)
        runs = [name for name in args.runs.split(",") if name]
        check_runs(args.experiment, runs)  # before the corpus is built
        if args.corpus == "wikitext2":
            wikitext_files(args.wikitext_dir)  # before --work-dir and --out are made
        elif args.wikitext_dir:  # else the study would train on another corpus than the one named
            raise StudyError(f"--wikitext-dir is read with --corpus wikitext2 only, not --corpus {args.corpus}: add "
                             "--corpus wikitext2, or leave --wikitext-dir out")
        writable_directory(args.work_dir, "--work-dir")
        writable_directory(args.out, "--out")
        report_paths(os.path.join(args.out, args.corpus), args.experiment, args.out)  # before the corpus is built
        data_prefix = prepare_corpus(args.corpus, args.work_dir, args.wikitext_dir)
        out_dir = os.path.join(args.out, args.corpus)
        try:
            report = run_experiment(args.experiment, settings, data_prefix, out_dir, runs)
        except KeyboardInterrupt:
            log_pending_runs(report_paths(out_dir, args.experiment)[0], parser.prog,
                             sys.argv[1:] if argv is None else argv)
            raise
        for run in report["runs"]:
            evals = ", ".join(f"{e['loops']}:{e['perplexity']:.1f}" for e in run.get("eval", []))
            print(f"{run['name']:<28} train {run['final_train_loss']:.3f}  diverged {run['diverged_at']}  "
                  f"ppl[{evals}]")
        if report["runs_pending"]:
            print(f"not in the report yet: {', '.join(report['runs_pending'])} "
                  f"(--runs {','.join(report['runs_pending'])} adds them)")
        return 0

    return run_cli(study, TIMED_CLI_LOG_FORMAT)


if __name__ == "__main__":
    raise SystemExit(main())
