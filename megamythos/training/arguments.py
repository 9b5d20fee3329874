"""Training arguments: one validated dataclass and the Megatron-style command line that fills it.

Flags use Megatron-LM spellings (``--micro-batch-size``, ``--global-batch-size``, ``--train-iters``, ...).
Parallel sizes, ZeRO stage, bf16 and batch sizes default to ``None``: then the value in the ds_config JSON is
kept, so a JSON written for a cluster stays authoritative unless the command line says otherwise.

One source per model setting: the model is ``--preset``, then ``--override FIELD=VALUE``, then the one setting
training decides differently from the library: activation checkpointing of the loops where the run backpropagates
through every loop (:meth:`TrainArgs.model_overrides`).
``--mean-loops``, ``--backprop-loops``, ``--[no-]checkpoint-loops`` and ``--loop-checkpoint-segment`` are
aliases of ``--override`` for those fields: they write the field only when given, and giving both spellings
with different values is an error. ``--seq-length`` must fit the model's ``max_seq_len``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megamythos.data.gpt_dataset import DataConfigError, parse_data_path, parse_split
from megamythos.data.pretraining import DEFAULT_SEED, DEFAULT_SPLIT, SPLIT_PATH_FIELDS, DataRecipe, DataSources
from megamythos.errors import (
    ArgumentParser,
    UserError,
    number,
    path_text,
    read_json_object,
    unexpanded_home,
)
from megamythos.model.config import DEFAULT_PRESET, ConfigError, ModelConfig, field_overrides, get_preset
from megamythos.runtime.locations import DEFAULT_DS_CONFIG, DS_CONFIGS, WORKSPACE
from megamythos.training.divergence import ON_DIVERGENCE
from megamythos.training.optimizers import ADAM_IMPLS
from megamythos.training.schedules import ON_RESUME

DEFAULT_DATA_DIR = WORKSPACE / "data" / "default"
LR_SCHEDULES = ("cosine", "wsd")
DEFAULT_TRAIN_ITERS = 200
# a year: torch's stores add the timeout to the clock in int64 nanoseconds, which a longer one overflows (a timeout
# of 1e9 days failed at once, "timed out after -5833720454947758ms"), and timedelta refuses ~1e12 minutes
MAX_TIMEOUT_MINUTES = 525600
# AdamW's bounds: a value past them is a typo (1e30 for 1e-3), not a setting
MAX_LR = 10.0  # AdamW moves each weight by about lr per step; the divergence guard's tests train at 3 on purpose
MAX_WEIGHT_DECAY = 1.0  # AdamW keeps a share 1 - lr x wd of each weight per step; typical wd 0.01 to 0.1
MAX_ADAM_EPS = 1.0  # eps beside sqrt(v): 1 would swamp a typical gradient's scale and turn AdamW into SGD
MAX_CLIP_GRAD = 1e3  # a gradient norm this large is a diverged step; 0 turns clipping off
# flags of evaluate/generate that a training command line may be given: what to do instead (not the closest flag:
# --exit-interval would stop the run)
INFERENCE_FLAGS = {
    "--exit-threshold": "early exit is evaluate's and generate's flag; training runs every loop: "
                        "--override exit_threshold=T sets the threshold its checkpoints keep for inference",
}
# flag aliases of `--override FIELD=VALUE`: parse_args writes them into TrainArgs.overrides
MODEL_FIELD_FLAGS = ("mean_loops", "backprop_loops", "checkpoint_loops", "loop_checkpoint_segment")


class ArgumentError(UserError, ValueError):
    """A training argument is missing, malformed or inconsistent with another one."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ArgumentError(message)


@dataclass
class TrainArgs:
    """Everything one pretraining run needs besides the model preset's own fields."""

    # model
    preset: str = DEFAULT_PRESET
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields, e.g. {"dim": 64}; flag aliases too
    # data (the fields of megamythos.data.pretraining.DataRecipe keep its defaults)
    data_path: list[str] = field(default_factory=list)  # empty (and no per-split paths) -> embedded default corpus
    split: str | None = None  # None -> DEFAULT_SPLIT for --data-path; per-split paths take none
    train_data_path: list[str] = field(default_factory=list)  # per-split blends (Megatron's blend_per_split)
    valid_data_path: list[str] = field(default_factory=list)
    test_data_path: list[str] = field(default_factory=list)
    seq_length: int = DataRecipe.seq_length
    data_cache_dir: str | None = None
    default_data_dir: str = str(DEFAULT_DATA_DIR)
    default_data_max_files: int | None = None
    # packed documents (Megatron's flags; megamythos.data.pretraining.DOCUMENT_FLAGS): need data preprocessed with
    # --append-eod, whose records name the documents' end token
    eod_mask_loss: bool = False
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    # batch and length of training
    micro_batch_size: int | None = None
    global_batch_size: int | None = None
    train_iters: int | None = None
    train_tokens: int | None = None
    # optimiser and schedule
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 10
    lr_schedule: str = "cosine"
    lr_schedule_on_resume: str = "check"  # a resumed run whose schedule differs: refuse, or keep / override it
    wsd_decay_fraction: float = 0.2
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    # checkpoints, evaluation, logging
    save: str | None = None
    load: str | None = None
    finetune: bool = False  # --load's weights only: a new run (iteration 0, fresh optimizer, schedule, data)
    save_interval: int = 0  # 0 -> only at the end and on a signal
    keep_last: int = 3
    eval_interval: int = DataRecipe.eval_interval  # 0 -> no evaluation
    eval_iters: int = DataRecipe.eval_iters
    tensorboard_dir: str | None = None
    metrics_file: str | None = None  # JSON lines, one per iteration (rank 0)
    profile_dir: str | None = None  # torch.profiler trace and op table of the profiled steps (rank 0)
    profile_step_start: int = 10
    profile_step_end: int = 12
    log_interval: int = 1
    log_params_norm: bool = False  # the L2 norm of all weights after each step (Megatron's flag; one all-reduce)
    peak_tflops: float | None = None  # per process; None -> measured by a short matmul benchmark
    seed: int = DEFAULT_SEED
    max_nonfinite: int = 5  # abort after this many consecutive steps with a non-finite loss
    exit_interval: int = 0  # stop (with a checkpoint) at the first iteration that is a multiple; 0 -> to the end
    exit_duration_in_mins: float = 0.0  # stop (with a checkpoint) this long after the process started; 0 -> off
    # divergence guard (megamythos.training.divergence); how the defaults were chosen: bench/README.md
    divergence_factor: float = 2.0  # stop when lm loss > this x ln(vocab); 0 -> off
    spike_factor: float = 1.5  # a spike: lm loss > this x the median of the last spike_window good losses; 0 -> off
    spike_window: int = 50
    spike_patience: int = 3  # spike steps in a row that count as a divergence
    on_divergence: str = "stop"  # or "rollback": reload the last good checkpoint, skip the data read since
    max_rollbacks: int = 3
    # copies of the weights on several ranks compared (megamythos.training.replicas) every N steps; 0 -> only
    # before each save
    check_weight_hash_across_dp_replicas_interval: int = 0
    # parallelism and precision (None -> keep the ds_config value)
    ds_config: str = str(DEFAULT_DS_CONFIG)
    tp: int | None = None
    ep: int | None = None
    zero: int | None = None
    bf16: bool | None = None
    distributed_timeout_minutes: float = 10.0  # how long a collective waits for the other ranks (DeepSpeed's default)
    replicate_core: bool | None = None  # ZeRO-3: keep the core gathered (None: yes, unless it is a leaf module)
    compile: bool = False  # torch.compile each prelude/coda block and the shared recurrent block
    adam_impl: str = "auto"  # megamythos.training.optimizers: auto (apex on CUDA if installed), deepspeed, apex
    local_rank: int = -1  # set by the deepspeed launcher

    def __post_init__(self) -> None:
        _check(self.seq_length > 0, f"--seq-length must be positive, got {self.seq_length}")
        _check(not self.finetune or bool(self.load), "--finetune starts from the weights of --load PATH (a run "
               "directory, one checkpoint tag or an export); give --load")
        _check(self.train_iters is None or self.train_tokens is None,
               "give at most one of --train-iters and --train-tokens")
        for name in ("train_iters", "train_tokens", "micro_batch_size", "global_batch_size", "tp", "ep",
                     "default_data_max_files", "peak_tflops", "distributed_timeout_minutes"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"--{name.replace('_', '-')} must be positive, got {value}")
        _check(self.zero is None or self.zero in (0, 1, 2, 3), f"--zero must be 0, 1, 2 or 3, got {self.zero}")
        _check(self.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {LR_SCHEDULES}")
        _check(self.lr_schedule_on_resume in ON_RESUME,
               f"lr_schedule_on_resume must be one of {ON_RESUME}, got {self.lr_schedule_on_resume!r}")
        _check(self.adam_impl in ADAM_IMPLS, f"--adam-impl must be one of {ADAM_IMPLS}, got {self.adam_impl!r}")
        _check(0 <= self.lr <= MAX_LR, f"--lr must lie in [0, {MAX_LR:g}], got {self.lr} (typical: 3e-4)")
        _check(0 <= self.min_lr <= self.lr, f"--min-lr={self.min_lr} must lie in [0, --lr={self.lr}]")
        _check(0 <= self.seed < 2**32, f"--seed must lie in [0, 2**32), got {self.seed} (numpy's seed range)")
        _check(0.0 < self.wsd_decay_fraction <= 1.0, "--wsd-decay-fraction must lie in (0, 1]")
        for name in ("adam_beta1", "adam_beta2"):  # AdamW's moment decay rates; 1 would never forget a gradient
            _check(0.0 <= getattr(self, name) < 1.0,
                   f"--{name.replace('_', '-')} must lie in [0, 1), got {getattr(self, name)} (typical: 0.9 and 0.95)")
        _check(0 <= self.weight_decay <= MAX_WEIGHT_DECAY, f"--weight-decay must lie in [0, {MAX_WEIGHT_DECAY:g}], "
               f"got {self.weight_decay} (typical: 0.1)")
        _check(0 < self.adam_eps < MAX_ADAM_EPS, f"--adam-eps must be a finite number > 0 and < {MAX_ADAM_EPS:g}, got "
               f"{self.adam_eps} (typical: 1e-8)")
        _check(0 <= self.clip_grad <= MAX_CLIP_GRAD, f"--clip-grad must be 0 (off) or lie in (0, {MAX_CLIP_GRAD:g}], "
               f"got {self.clip_grad} (typical: 1.0)")
        for name in ("warmup", "save_interval", "eval_interval", "exit_interval", "exit_duration_in_mins",
                     "check_weight_hash_across_dp_replicas_interval"):
            _check(0 <= getattr(self, name) < math.inf, f"--{name.replace('_', '-')} must be a finite number >= 0")
        _check(self.peak_tflops is None or self.peak_tflops < math.inf, "--peak-tflops must be finite")
        _check(0.1 <= self.distributed_timeout_minutes <= MAX_TIMEOUT_MINUTES, "--distributed-timeout-minutes must "
               f"lie in [0.1, {MAX_TIMEOUT_MINUTES}] (6 s to a year; DeepSpeed's default is 10), got "
               f"{self.distributed_timeout_minutes}")
        for name in ("save", "load", "tensorboard_dir", "metrics_file", "profile_dir", "data_cache_dir",
                     "default_data_dir"):  # '' would mean the working directory to some and "off" to others
            _check(getattr(self, name) != "", f"--{name.replace('_', '-')} is empty: give a path, or leave the flag "
                                              "out")
            why = None if getattr(self, name) is None else unexpanded_home(getattr(self, name))
            _check(why is None, f"--{name.replace('_', '-')} {why}")
        for name in ("divergence_factor", "spike_factor"):  # 1 x ln(vocab) / x the median: any loss at all
            value = getattr(self, name)  # inf would be off as silently as 0 is off on purpose
            _check(value == 0 or 1 < value < math.inf,
                   f"--{name.replace('_', '-')} must be 0 (off) or a finite number above 1, got {value}")
        _check(self.on_divergence in ON_DIVERGENCE,
               f"--on-divergence must be one of {ON_DIVERGENCE}, got {self.on_divergence!r}")
        _check(1 <= self.profile_step_start <= self.profile_step_end, "--profile-step-start and --profile-step-end "
               f"must satisfy 1 <= start <= end, got {self.profile_step_start} and {self.profile_step_end}")
        _check(self.eval_iters >= 1, "--eval-iters must be >= 1 (--eval-interval 0 runs no validation)")
        _check(self.overrides.get("checkpoint_loops") is not False or "loop_checkpoint_segment" not in self.overrides,
               f"--loop-checkpoint-segment {self.overrides.get('loop_checkpoint_segment')} checkpoints runs of loops, "
               "which --no-checkpoint-loops (checkpoint_loops=false) turns off: give one of them")
        for name in ("keep_last", "log_interval", "max_nonfinite", "spike_window", "spike_patience", "max_rollbacks"):
            _check(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be >= 1")
        try:
            parse_split(DEFAULT_SPLIT if self.split is None else self.split)
        except DataConfigError as err:
            raise ArgumentError(f"--split {err}") from err
        self._check_split_paths()
        _check(Path(self.ds_config).is_file(), f"--ds-config {self.ds_config} "
               f"{'is a directory' if Path(self.ds_config).is_dir() else 'does not exist'}; give a DeepSpeed JSON file "
               "such as ds_configs/cpu-debug.json")

    def _check_split_paths(self) -> None:
        """Megatron's rules for ``--train-data-path``, ``--valid-data-path`` and ``--test-data-path``: each a blend
        as ``--data-path`` takes it, not beside ``--data-path`` or ``--split``; training data, and validation data
        where ``--eval-interval`` asks for validations."""
        given = [f"--{name.replace('_', '-')}" for name in SPLIT_PATH_FIELDS if getattr(self, name)]
        if not given:
            return
        for name in SPLIT_PATH_FIELDS:
            try:
                parse_data_path(getattr(self, name))
            except DataConfigError as err:
                raise ArgumentError(f"--{name.replace('_', '-')}: {err}") from err
        _check(not self.data_path, f"--data-path and {'/'.join(given)} both name the data: give --data-path (split "
                                   "by --split) or the per-split paths, not both")
        _check(self.split is None, f"--split divides --data-path's documents; with {'/'.join(given)} each split reads "
                                   "its own data whole: leave --split out")
        _check(bool(self.train_data_path), f"{'/'.join(given)} given without --train-data-path: name the data to "
                                           "train on with it")
        _check(bool(self.valid_data_path) or not self.eval_interval, f"--eval-interval {self.eval_interval} "
               "validates on --valid-data-path, which is not given: give it, or pass --eval-interval 0")

    def data_sources(self) -> DataSources:
        """``--data-path`` or the per-split paths (both empty: the default corpus, which the trainer builds)."""
        sources = DataSources.from_record(self.to_dict())
        assert sources is not None  # the record of a TrainArgs names data_path
        return sources

    def total_iters(self, global_batch_size: int, done: tuple[int, int] = (0, 0)) -> int:
        """Optimizer steps: --train-iters, or the default; with --train-tokens the steps ``done`` = (iteration,
        tokens trained) of a resumed run plus its remaining tokens in whole global batches of this run (the
        batch or --seq-length may have changed since)."""
        if self.train_tokens is None:
            return self.train_iters or DEFAULT_TRAIN_ITERS
        iteration, tokens = done
        return iteration - (-max(0, self.train_tokens - tokens) // (global_batch_size * self.seq_length))

    def model_overrides(self) -> dict[str, Any]:
        """ModelConfig fields this run sets on top of the preset: ``--override`` and the flags that alias it, and
        ``checkpoint_loops`` and ``checkpoint_dense_blocks`` where neither sets them.

        Training checkpoints every recurrent iteration, and the prelude and coda blocks, by default where gradients
        flow through every loop (``backprop_loops`` 0, the GPU presets): activation memory would grow with the
        sampled loop count, and the blocks' activations then matter (39 GiB per GPU at 1t). With truncated backprop
        through the last k loops it is bounded by k iterations whatever the depth, so nothing is recomputed
        (recomputing cost the default run 1.26x / 1.12x of its step at 1 / 2 CPU processes, bench/README.md)
        unless ``loop_checkpoint_segment`` is given, which asks for checkpointing.
        """
        overrides = dict(self.overrides)
        backprop_loops = overrides.get("backprop_loops", get_preset(self.preset).backprop_loops)
        if "checkpoint_loops" not in overrides:
            overrides["checkpoint_loops"] = backprop_loops == 0 or "loop_checkpoint_segment" in overrides
        overrides.setdefault("checkpoint_dense_blocks", backprop_loops == 0)
        return overrides

    def model_config(self) -> ModelConfig:
        """The validated model of this run; raises :class:`ArgumentError` when ``--seq-length`` exceeds its
        ``max_seq_len``, or for a model training refuses (:meth:`ModelConfig.training_refusal`) (``ConfigError`` for
        a bad preset or override)."""
        config = get_preset(self.preset, **self.model_overrides())
        _check(self.seq_length <= config.max_seq_len,
               f"--seq-length {self.seq_length} exceeds the model's max_seq_len={config.max_seq_len} (preset "
               f"{self.preset!r}); pass --override max_seq_len={self.seq_length} or a shorter --seq-length")
        if why := config.training_refusal():
            raise ArgumentError(why)
        return config

    def context_warning(self) -> str | None:
        """What a run that raises the model's context above its training length is told at its start (the usual
        context extension, ``--finetune --override max_seq_len=N``, meant with ``--seq-length N``), None if
        nothing: ``--seq-length`` has its own default (256), whatever ``max_seq_len`` says."""
        longest = self.overrides.get("max_seq_len")
        if not isinstance(longest, int) or longest <= self.seq_length:
            return None
        return (f"--override max_seq_len={longest} with --seq-length {self.seq_length}: this run trains on samples "
                f"of {self.seq_length} tokens, not {longest}; pass --seq-length {longest} to train at the longer "
                "context")

    def data_recipe(self) -> DataRecipe:
        """The settings that decide which samples this run reads (recorded with its checkpoints)."""
        return DataRecipe.from_record(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def command_values(self) -> dict[str, Any]:
        """{flag: value} of every setting the command line decides, to compare the ranks' (:func:`differing_flags`):
        each ``--override FIELD`` on its own, the launcher's ``--local_rank`` (one per rank of a node) left out, and
        the settings whose defaults lie in the checkout (:data:`CHECKOUT_PATHS`) relative to it where they lie in it:
        each node of a job may run its own checkout at another path (``--no_ssh --node_rank R``), so ``--ds-config``
        also by its content (:data:`DS_CONFIG_CONTENT`, :func:`template_digest`), right after it: a node's checkout
        of another commit, or a file of the same name edited on one node, would otherwise build another DeepSpeed
        config on its ranks."""
        values = self.to_dict()
        overrides = values.pop("overrides")
        del values["local_rank"]
        for name, (root, label) in CHECKOUT_PATHS.items():
            values[name] = checkout_relative(values[name], root, label)
        flags = {}
        for name, value in values.items():
            flags[FIELD_FLAGS.get(name, "--" + name.replace("_", "-"))] = value
            if name == "ds_config":  # one name, each node's own file
                flags[DS_CONFIG_CONTENT] = template_digest(self.ds_config)
        return {**flags, **{f"--override {name}": value for name, value in overrides.items()}}


DS_CONFIG_CONTENT = "--ds-config content"  # TrainArgs.command_values' key of the ds_config file's digest
# TrainArgs path fields whose defaults lie in the checkout (or the installed package): their folder there, and the
# name it is shown by
CHECKOUT_PATHS = {"ds_config": (DS_CONFIGS, "<ds_configs>"), "default_data_dir": (WORKSPACE, "<checkout>")}


def checkout_relative(value: str, root: Path, label: str) -> str:
    """``value`` as ``LABEL/REST`` where it lies in folder ``root`` (``<ds_configs>/cpu-debug.json``), else as given."""
    try:
        return f"{label}/{Path(value).resolve().relative_to(root.resolve())}"
    except ValueError:
        return value


TEMPLATE_REMEDY = "pass a DeepSpeed config JSON object, e.g. ds_configs/cpu-debug.json"  # for an unreadable one


def template_digest(path: str) -> str:
    """``sha256 HEX12`` of the ds_config JSON object at ``path`` as parsed (keys sorted): nodes' copies that differ
    only in layout agree. A file that cannot be read raises :class:`ArgumentError` in one line naming it."""
    template = read_json_object(path, ArgumentError, TEMPLATE_REMEDY)
    return "sha256 " + hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


# TrainArgs fields set by flags not named after them
FIELD_FLAGS = {"lr_schedule_on_resume": "--use-checkpoint-lr-schedule/--override-lr-schedule"}


def differing_flags(reference: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """``FLAG VALUE (rank 0: VALUE)`` for each flag whose value differs between two ranks'
    :meth:`TrainArgs.command_values` (``reference``: rank 0's), in the order of the flags; a flag left to its
    default of None (the ds_config's value), an empty list or an override not given shows as ``not given``, a list
    (``--data-path``) as its words."""
    def shown(value: Any) -> Any:
        return "not given" if value in (None, []) else " ".join(map(str, value)) if isinstance(value, list) else value

    flags = [*reference, *(flag for flag in other if flag not in reference)]
    return [f"{flag} {shown(other.get(flag))} (rank 0: {shown(reference.get(flag))})" for flag in flags
            if other.get(flag) != reference.get(flag)]


FLAG_HELP = {  # flags added in loops below; the others carry their help where they are added
    "split": f"train,valid,test weights of --data-path's document split (Megatron's rule; default {DEFAULT_SPLIT})",
    "seq_length": "tokens per training sample", "data_cache_dir": "index cache directory (default: next to the data)",
    "default_data_dir": "where the embedded stdlib corpus is built for a run without --data-path",
    "micro_batch_size": "samples per rank per forward (default: the ds_config's)",
    "global_batch_size": "samples per optimizer step over all ranks (default: the ds_config's)",
    "train_iters": f"optimizer steps (default {DEFAULT_TRAIN_ITERS})", "train_tokens": "or: tokens to train on",
    "warmup": "linear warmup steps", "lr": "peak learning rate", "min_lr": "final learning rate",
    "wsd_decay_fraction": "WSD: share of the steps spent decaying", "weight_decay": "AdamW weight decay",
    "adam_beta1": "AdamW beta1", "adam_beta2": "AdamW beta2", "adam_eps": "AdamW epsilon",
    "clip_grad": "gradient-norm clipping (0: off)", "lr_schedule": "warmup then cosine decay, or WSD",
    "save": "checkpoint directory", "load": "resume from this checkpoint directory (its `latest`)",
    "tensorboard_dir": "TensorBoard log directory (rank 0)", "metrics_file": "JSON lines, one per iteration (rank 0)",
    "profile_dir": "profile steps --profile-step-start..--profile-step-end on rank 0 into this directory: a Chrome "
                   "trace (https://ui.perfetto.dev) and the ops by self time (Megatron's --profile)",
    "profile_step_start": "first profiled step (1-based)", "profile_step_end": "last profiled step",
    "save_interval": "checkpoint every N steps (0: at the end and on a signal)",
    "keep_last": "checkpoints kept", "eval_interval": "validation every N steps (0: never)",
    "eval_iters": "global batches of each validation and of the test evaluation at the end",
    "log_interval": "console line every N steps", "seed": "data and init seed",
    "max_nonfinite": "abort after this many consecutive non-finite losses",
    "exit_interval": "stop with a checkpoint at the first step that is a multiple of this, as Megatron does (a "
                     "resume past it stops at the next multiple; 0: run to the end)",
    "exit_duration_in_mins": "stop with a checkpoint after the step during which this many minutes have passed since "
                             "the process started: a job's time limit less the time a save takes (0: no limit)",
    "check_weight_hash_across_dp_replicas_interval": "compare the copies of the weights that several ranks hold "
                                                     "(data-parallel replicas) every N steps, as Megatron does: copies "
                                                     "that differ (silent data corruption on a device) stop the run, "
                                                     "naming the rank and host; they are compared before every save "
                                                     "too (0: only then)",
    "divergence_factor": "stop when the lm loss exceeds this x ln(vocab size), the loss of a uniform guess (0: off)",
    "spike_factor": "a loss spike: lm loss above this x the median of the last --spike-window good losses (0: off)",
    "spike_window": "good losses whose median a spike is measured against",
    "spike_patience": "spike steps in a row that stop the run (no checkpoint is written while a spike lasts)",
    "on_divergence": "stop with one line naming the last good checkpoint, or roll back to it and skip the samples "
                     "read since (the training data is then sized for the samples rollbacks may skip, which can "
                     "change the sample order: keep this setting across resumes)",
    "max_rollbacks": "rollbacks per run before a divergence stops it",
    "ds_config": "DeepSpeed JSON (ds_configs/); the flags below override its values",
}


def presets_epilog() -> str:
    """The preset table of ``--help``: sizes as ``python -m megamythos.model.params`` counts them."""
    from megamythos.model.config import PRESETS
    from megamythos.model.params import count

    def size(n: float) -> str:
        return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"

    rows = [f"  {name:6} {size(r.total):>8} total {size(r.active_per_token):>8} active/token  "
            f"dim {PRESETS[name]['dim']}, {PRESETS[name]['n_experts']} experts, {PRESETS[name]['mean_loops']} loops"
            for name, r in ((name, count(get_preset(name))) for name in PRESETS)]
    header = "presets (--preset NAME; python -m megamythos.planning.plan --preset NAME --gpus N for memory plans):"
    return header + "\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The pretraining command line; every flag maps onto one :class:`TrainArgs` field."""
    p = ArgumentParser(prog="python -m megamythos.training.pretrain", description=__doc__, epilog=presets_epilog(),
                       elsewhere=INFERENCE_FLAGS)
    d = TrainArgs.__dataclass_fields__

    def add(flag: str, **kw: Any) -> None:
        name = flag.lstrip("-").replace("-", "_")
        kw.setdefault("help", FLAG_HELP.get(name))
        if "default" not in kw:
            f = d[name]
            kw["default"] = f.default if f.default is not dataclasses.MISSING else None
        g.add_argument(flag, dest=name, **kw)  # into the group being filled

    g = p.add_argument_group("model")
    g.add_argument("--preset", default=d["preset"].default, help="model size: one of the presets listed below")
    g.add_argument("--override", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a ModelConfig field on top of the preset (repeatable); the flags below alias their "
                        "fields and change nothing when not given")
    add("--mean-loops", type=number(int, 1), default=None, help="trained mean loop count (= --override mean_loops=N)")
    add("--backprop-loops", type=number(int, 0), default=None,
        help="truncated BPTT: gradient through the last k iterations (= --override backprop_loops=k)")
    g.add_argument("--checkpoint-loops", dest="checkpoint_loops", action="store_true", default=None,
                   help="checkpoint every recurrent iteration under gradient (the default where backprop runs "
                        "through every loop, --backprop-loops 0; = --override checkpoint_loops=true)")
    g.add_argument("--no-checkpoint-loops", dest="checkpoint_loops", action="store_false", default=None,
                   help="keep the activations of the iterations under gradient (the default with truncated "
                        "backprop, whose k iterations bound them; = --override checkpoint_loops=false)")
    add("--loop-checkpoint-segment", type=number(int, 0), default=None,
        help="also checkpoint runs of this many iterations (0: sqrt of the iterations under gradient; implies "
             "--checkpoint-loops, refused beside --no-checkpoint-loops): O(sqrt T) saved states instead of O(T) "
             "for one extra forward of the loops")
    g = p.add_argument_group("data")
    add("--data-path", nargs="*", type=path_text, default=[],
        help="dataset prefixes: P, or P1 P2 ... (each split blended by the samples an epoch of each dataset's share "
             "holds, as Megatron does), or weight prefix pairs W1 P1 W2 P2 ...")
    add("--train-data-path", nargs="*", type=path_text, default=[],
        help="the training data, read whole, in --data-path's forms (Megatron's per-split paths, instead of "
             "--data-path and --split)")
    add("--valid-data-path", nargs="*", type=path_text, default=[],
        help="the validation data, read whole (with --train-data-path; required where --eval-interval asks for "
             "validations)")
    add("--test-data-path", nargs="*", type=path_text, default=[],
        help="the test data, read whole, evaluated on --eval-iters batches when the run completes its iterations "
             "(with --train-data-path)")
    add("--split", type=str)
    add("--seq-length", type=int)
    add("--data-cache-dir", type=str)
    add("--default-data-dir", type=str)
    add("--default-data-max-files", type=int, help="build a small default corpus (tests)")
    add("--eod-mask-loss", action="store_true", help="do not score the prediction at an end-of-document token (the "
        "next document's first token); needs data preprocessed with --append-eod, as every packed-document flag")
    add("--reset-position-ids", action="store_true", help="restart the positions at 0 after each end-of-document "
        "token of a sample")
    add("--reset-attention-mask", action="store_true", help="let a token attend only to the tokens of its own "
        "document in a sample (block-causal attention)")
    g = p.add_argument_group("batch and schedule")
    for flag in ("--micro-batch-size", "--global-batch-size", "--train-iters", "--train-tokens", "--warmup"):
        add(flag, type=int)
    for flag in ("--lr", "--min-lr", "--wsd-decay-fraction", "--weight-decay", "--adam-beta1", "--adam-beta2",
                 "--adam-eps", "--clip-grad"):
        add(flag, type=float)
    add("--lr-schedule", choices=LR_SCHEDULES)
    resume = g.add_mutually_exclusive_group()
    resume.add_argument("--use-checkpoint-lr-schedule", dest="lr_schedule_on_resume", action="store_const",
                        const="checkpoint", default=d["lr_schedule_on_resume"].default,
                        help="on resume, follow the LR schedule saved in the checkpoint, whatever --lr, --min-lr, "
                             "--warmup, --lr-schedule and --train-iters say (Megatron's "
                             "--use-checkpoint-opt_param-scheduler); without either flag a difference is refused")
    resume.add_argument("--override-lr-schedule", dest="lr_schedule_on_resume", action="store_const",
                        const="override", help="on resume, follow the command line's LR schedule from the "
                                               "checkpoint's step on (Megatron's --override-opt_param-scheduler)")
    add("--adam-impl", choices=ADAM_IMPLS, help="AdamW implementation: DeepSpeed's (from the ds_config), NVIDIA "
                                                "apex's FusedAdam, or auto = apex on CUDA when it imports")
    g = p.add_argument_group("checkpoints and logging")
    for flag in ("--save", "--load", "--tensorboard-dir", "--metrics-file", "--profile-dir"):
        add(flag, type=str)
    for flag in ("--profile-step-start", "--profile-step-end"):
        add(flag, type=int)
    for flag in ("--save-interval", "--keep-last", "--eval-interval", "--eval-iters", "--log-interval", "--seed",
                 "--max-nonfinite", "--exit-interval"):
        add(flag, type=int)
    add("--exit-duration-in-mins", type=float)
    add("--log-params-norm", action="store_true",
        help="log the L2 norm of the model's weights after every step (params-norm; Megatron's flag): one "
             "all-reduce of a scalar and a read of this rank's weights per step")
    g.add_argument("--finetune", action="store_true", default=False,
                   help="start a new run from the weights (and expert biases) of --load, a run directory's latest "
                        "tag, one tag or an export: iteration 0, a fresh optimizer, LR schedule and data order "
                        "(Megatron's --finetune); once --save holds a checkpoint of this run, the same command "
                        "resumes it instead")
    add("--peak-tflops", type=float, help="peak TFLOP/s per process for MFU (a GPU's datasheet figure, e.g. 989 for "
                                          "an H100 in bf16); default: a matmul measured on the run's device")
    g = p.add_argument_group("divergence guard, replica check")
    for flag in ("--divergence-factor", "--spike-factor"):
        add(flag, type=float)
    for flag in ("--spike-window", "--spike-patience", "--max-rollbacks",
                 "--check-weight-hash-across-dp-replicas-interval"):
        add(flag, type=int)
    add("--on-divergence", choices=ON_DIVERGENCE)
    g = p.add_argument_group("parallelism and precision")
    add("--ds-config", type=str)
    add("--tp", type=int, help="tensor-parallel size (AutoTP)")
    add("--ep", type=int, help="expert-parallel size (AutoEP)")
    add("--zero", type=int, help="ZeRO stage")
    add("--distributed-timeout-minutes", type=float,
        help="how long a collective waits for the other ranks before the job fails (Megatron's flag): a stuck or "
             "much slower rank is reported after this long; raise it when a rank works alone for longer, e.g. rank 0 "
             "converting a large checkpoint for a resume on another layout")
    g.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                   help="bf16 mixed precision (None: the ds_config decides)")
    g.add_argument("--no-bf16", dest="bf16", action="store_false", default=None, help="fp32")
    g.add_argument("--replicate-core", dest="replicate_core", action=argparse.BooleanOptionalAction, default=None,
                   help="under ZeRO-3, keep the recurrent core's weights gathered: one gather per step whatever the "
                        "loop count (default, except under --compile or a ds_config with zero_optimization."
                        "leaf_module, as the CPU one, where the core is a ZeRO-3 leaf module); "
                        "--no-replicate-core partitions it, gathered for every use of the block")
    add("--compile", action="store_true", help="torch.compile each prelude/coda block and the recurrent block")
    p.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=d["local_rank"].default,
                   help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs:
    """Parse ``argv`` into validated :class:`TrainArgs`; a bad flag raises :class:`ArgumentError`."""
    ns = vars(build_parser().parse_args(argv))
    try:  # the aliases write their field only when given
        ns["overrides"] = field_overrides(ns["overrides"], {name: ns.pop(name) for name in MODEL_FIELD_FLAGS})
    except ConfigError as err:
        raise ArgumentError(str(err)) from err
    return TrainArgs(**ns)
