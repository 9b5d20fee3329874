"""Pretraining entry point, run by the ``deepspeed`` launcher (``launchers/pretrain.sh``) on every rank::

    deepspeed --num_gpus 2 --module megamythos.training.pretrain --preset tiny --train-iters 100 --save runs/x

One process per GPU (per CPU slot on a CPU machine). Steps of an iteration: sample the loop count from
(seed, iteration) so all ranks agree; forward/backward/step through the DeepSpeed engine (ZeRO, AutoEP, AutoTP
as configured) on the micro-batches of this data-parallel rank; after the optimizer step update the MoE
selection biases from all-reduced expert counts; log; evaluate; checkpoint; react to signals. A run that completes
its iterations then validates once more (unless its last iteration just did) and evaluates its test split, as
Megatron's ``pretrain`` does (also when --exit-interval stops it at that iteration); a run stopped early (signal,
--exit-interval, --exit-duration-in-mins) does neither.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.distributed as dist

from megamythos.checkpoint.files import read_latest, read_train_record, unconvertible_layout
from megamythos.checkpoint.reader import load_state
from megamythos.data.default_corpus import ensure_default_dataset
from megamythos.data.gpt_dataset import SAMPLE_RULE, samples_changed_with_rule, samples_per_epoch
from megamythos.data.pretraining import (
    DataError,
    DataSetup,
    DataSources,
    batches,
    build_datasets,
    data_change,
    data_moved,
    document_change,
    document_flags,
    documents_eod,
    held_out_overlap,
    order_change,
    order_fingerprint,
    recipe_change,
    resolve_data,
    same_sample_order,
    tokenizer_change,
)
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import UserError, run_cli
from megamythos.model.lm import MythosLM, compile_blocks
from megamythos.model.moe import (
    expert_bias_state,
    expert_counts_frozen,
    expert_counts_saved,
    load_expert_bias_state,
    update_expert_bias,
)
from megamythos.model.params import count
from megamythos.model.recurrent import exit_depths, exit_distribution, sample_loop_count
from megamythos.model.row_layout import PackedDocuments, scores_a_token
from megamythos.parallel import (
    adapt_engine_module,
    clip_gradients,
    global_grad_norm,
    params_norm,
    replicate_recurrent_core,
)
from megamythos.planning.memory import check_startup_memory
from megamythos.runtime.build_locks import check_build_locks
from megamythos.runtime.device import collective_device, device_memory_bytes, local_world_size
from megamythos.runtime.host_memory import keep_freed_memory
from megamythos.training import comm_stats
from megamythos.training.arguments import DS_CONFIG_CONTENT, ArgumentError, TrainArgs, differing_flags, parse_args
from megamythos.training.checkpointing import (
    PRECISION_KEY,
    CheckpointError,
    CheckpointManager,
    check_room_to_resume,
    check_saved_precision,
    check_sources,
    pretrained_record,
    pretrained_state,
    run_sources,
    saved_progress,
    universal_tag,
    verify_resume,
    warn_of_tags_aside,
    writer_lock,
)
from megamythos.training.divergence import Divergence, DivergenceError, DivergenceGuard, step_back
from megamythos.training.ds_config import (
    accumulation_warning,
    bf16_enabled,
    build_ds_config,
    check_layout,
    check_template,
    check_zero_options,
    load_template,
    resolve_layout,
    trainer_clips,
)
from megamythos.training.monitor import (
    IdleExpertWatch,
    StepProfiler,
    StragglerWatch,
    TrainingMonitor,
    check_outputs,
    measure_peak_tflops,
    memory_usage,
    openmp_wait_policy,
    peak_key,
    peak_memory,
    rank_timers,
    still_working,
)
from megamythos.training.optimizers import (
    adamw_param_groups,
    client_adam,
    import_muon_without_compiling,
    kept_optimizer_settings,
    optimizer_update_left_out,
    resolve_adam_impl,
    undo_state_initialising_step,
)
from megamythos.training.process_exit import end_process, record_start, write_exit_record
from megamythos.training.rendezvous import check_master_port, env_master_port, free_port
from megamythos.training.replicas import check_replicas
from megamythos.training.schedules import (
    LRSchedule,
    build_scheduler,
    resume_schedule,
    resumed_schedule,
    schedule_changes,
    set_schedule,
)
from megamythos.training.shm import release_own_buffer, remove_stale_buffers
from megamythos.training.signals import (
    GracefulExit,
    NonFiniteGuard,
    any_rank,
    collective_failure,
    join_supervisor_group,
)

logger = logging.getLogger(__name__)
UNSAVED_STEPS_WARNED = 1000  # a run of more steps without --save-interval is told what a crash would cost
# Per-loop scalars ("recurrent/<kind>/loop-NN"): TensorBoard gets each; the metrics record gets one list per kind
# of these (state norms only go to TensorBoard).
RECORDED_PER_LOOP = ("exit-share", "active-share", "router-gate")
PER_LOOP = re.compile(f"/({'|'.join(('state-norm', *RECORDED_PER_LOOP))})/")
# The memory of the console line: what the process allocated (a leak grows it), else the resident set.
CONSOLE_MEMORY = ("memory/max-allocated-GiB", "memory/anon-GiB", "memory/rss-GiB")


def setup_logging(rank: int) -> None:
    """INFO on rank 0, WARNING elsewhere, one format for the library and DeepSpeed's console output."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[%(asctime)s rank{rank}] %(levelname)s %(name)s: %(message)s", force=True)


def single_process_environment() -> None:
    """Plain ``python -m megamythos.training.pretrain`` (no launcher set ``RANK``) is a world of one, whatever
    ``WORLD_SIZE``, ``LOCAL_RANK`` or ``LOCAL_WORLD_SIZE`` a shell kept from another job says: the layout and the
    checkpoint checks read them before torch.distributed starts (a left-over ``WORLD_SIZE=2`` made the layout's
    global batch twice the one DeepSpeed trained). A ``MASTER_PORT`` given is checked (:func:`env_master_port`)."""
    if "RANK" in os.environ:
        return
    port = env_master_port(os.environ)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port or free_port()))


def init_distributed(timeout_minutes: float) -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, NCCL on GPU), its collectives failing after
    ``timeout_minutes`` of waiting; returns (rank, world size). The environment is a launcher's or
    :func:`single_process_environment`'s. First a build lock that a killed op build left, on which DeepSpeed's op
    loads would wait forever, is refused (:func:`check_build_locks`; a young one is a warning, from one rank per
    node). On CPU, once every rank has mapped the others' shm buffers (a barrier), each unlinks its own
    (:func:`release_own_buffer`): the memory is the system's again when the last rank ends, however it ends."""
    import deepspeed

    check_build_locks(os.environ, warn=os.environ.get("LOCAL_RANK", "0") == "0")
    if os.environ["RANK"] == "0":
        if "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun's agent holds the rendezvous store on that port
            port = env_master_port(os.environ)
            if port is None:
                raise UserError("RANK is set but MASTER_PORT is not: start the ranks with a launcher (deepspeed, "
                                "torchrun, srun setting both), or unset RANK to train in one process")
            check_master_port(port)
        remove_stale_buffers()
    if torch.cuda.is_available():  # before any collective: NCCL and the object collectives use the current device
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    logger.info("initialising torch.distributed through DeepSpeed (on CPU it loads its shm comm op, built once, ~30 s "
                "the first time unless `make install` prebuilt it)")
    deepspeed.init_distributed(timeout=timedelta(minutes=timeout_minutes))
    default_group_timeout(timedelta(minutes=timeout_minutes))
    if not torch.cuda.is_available():  # DeepSpeed's CPU comm op: each rank mapped every rank's buffer by its name
        dist.barrier()
        release_own_buffer()
    return dist.get_rank(), dist.get_world_size()


def default_group_timeout(timeout: timedelta) -> None:
    """Make ``timeout`` that of every process group created from now on without one of its own. DeepSpeed makes its
    groups (ZeRO's copy of the world group, the expert- and tensor-parallel groups) with ``new_group(ranks)``, which
    takes torch's default, 30 minutes on gloo and 10 on NCCL, whatever ``init_distributed`` was given: a rank that
    ended at start-up on another node (its data missing there) left the others waiting 30 minutes in the group's
    rendezvous without a word, and a ``--distributed-timeout-minutes`` above 10 did not reach the NCCL collectives
    of ZeRO. Megatron passes its timeout to every group it makes; torch reads these two defaults at each
    ``new_group``."""
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    distributed_c10d.default_pg_nccl_timeout = timeout


def check_same_command(args: TrainArgs, world: int) -> None:
    """Collective: refuse (:class:`ArgumentError` on every rank) a job whose ranks were given different trainer flags,
    naming the first such rank, its host and the flags. Each node of a multi-node job runs its own command (``--no_ssh
    --node_rank R``, an srun task, or pdsh with its node's ``RUN_DIR`` and launcher defaults): another ``--seed`` read
    other index caches and was refused as a cache missing on a shared filesystem, another ``--global-batch-size``
    accumulated another number of micro-batches and hung in the first step's collective, and another ``--save``
    trained to the first checkpoint and failed it, each rank's shard in its own folder. A ``--ds-config`` file whose
    content differs (a node's checkout of another commit, or edited) is named on both hosts, and the same command is
    asked for only where a flag differs too. The ranks compare a digest (:func:`first_odd_rank`) of
    :func:`command_seen`."""
    if world == 1 or (odd := first_odd_rank(command_seen(args), world)) is None:
        return
    rank, (host0, (ds_config0, flags0)), (host, (ds_config, flags)) = odd
    if differ := differing_flags(flags0, flags):
        content = flags.get(DS_CONFIG_CONTENT) != flags0.get(DS_CONFIG_CONTENT)  # one of the flags that differ
        remedies = [f"the --ds-config file {ds_config} (host {host}) differs in content from {ds_config0} (host "
                    f"{host0}): give every node the same file (a checkout of the same commit, without local "
                    "edits)"] if content else []
        if len(differ) > content:
            remedies.append("run the same command, with the same RUN_DIR, on every node")
        raise ArgumentError(f"rank {rank} (host {host}) was started with other trainer flags than rank 0 (host "
                            f"{host0}): {', '.join(differ)}; {'; '.join(remedies)}")


def command_seen(args: TrainArgs) -> tuple[Any, Any]:
    """What :func:`check_same_command` compares of a rank's command (:meth:`TrainArgs.command_values`) and shows of
    it where it differs (its ``--ds-config`` file, resolved, and those values)."""
    values = args.command_values()
    return values, (str(Path(args.ds_config).resolve()), values)


def checkpointing_warning(save: str | None, save_interval: int, steps_left: int) -> str | None:
    """What a run that checkpoints little is told at its start, None if nothing: without ``--save`` no step is
    ever saved (Megatron's rule; the planner's printed command and a bare ``python -m`` have none, the launchers
    always pass one); without ``--save-interval`` only its end and a signal save."""
    if steps_left <= 0:
        return None
    if not save:
        return ("no --save: this run writes no checkpoint, not at its end nor on a signal, so a crash or a hang "
                "loses every step; pass --save DIR")
    if save_interval == 0 and steps_left > UNSAVED_STEPS_WARNED:
        return (f"{steps_left} steps to go without --save-interval: checkpoints only at the end and on a signal, so "
                "a crash or a hang loses every step since the start; pass --save-interval N")
    return None


def seed_everything(seed: int) -> None:
    """Same initial weights on every rank (ZeRO/TP then shard them), deterministic CPU kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_step(seed: int, iteration: int, dp_rank: int) -> None:
    """Seed torch's generators (the CPU's and every device's) from (seed, iteration, data-parallel rank) alone before
    the step after ``iteration``, as :func:`~megamythos.model.recurrent.sample_loop_count` draws its loop count from
    (seed, iteration): the step's random draws (the initial state of ``state_init="noise"``) are then the same on
    the tensor-parallel ranks of one data-parallel rank, whose replicated computation needs them equal, differ
    between data-parallel ranks (other samples, other noise), and are the same after any resume or rollback as in an
    uninterrupted run. The RNG a checkpoint restores is not enough for that: a rank of a larger world than the
    checkpoint's has no file of its own to restore (its tensor-parallel peer restored one), and the device
    generators are not saved."""
    torch.manual_seed(int(np.random.SeedSequence([seed, iteration, dp_rank]).generate_state(1, np.uint64)[0]))


# ------------------------------------------------------------------------------------------------------ data
def resolve_run_data(args: TrainArgs, vocab_size: int, rank: int) -> tuple[DataSources, DataSetup]:
    """The run's data and its check: ``--data-path``, the per-split paths, or the default corpus, which rank 0 builds
    first, then the other ranks find it built, or build their own where they do not share ``--default-data-dir``
    (another node's checkout); a failed build is one line on every rank, the failing ranks' naming why. Rank 0
    checks the data before the others, which then read its cached scans
    (:func:`~megamythos.data.pretraining.scan_dataset`) instead of every byte of the data; a rank that cannot see the
    cache (node-local copies) scans its own, and where its check fails every rank stops naming it
    (:func:`failed_elsewhere`)."""
    sources = args.data_sources()
    failure: Exception | None = None
    if not sources.prefixes():
        for turn in (0, 1):  # rank 0 builds, the others wait and then find it built
            if (rank == 0) == (turn == 0):
                try:
                    prefix, _ = ensure_default_dataset(args.default_data_dir, vocab_size=vocab_size,
                                                       max_files=args.default_data_max_files)
                except Exception as err:  # re-raised below, after telling the other ranks
                    failure = err
            if any_rank(failure is not None):
                elsewhere = "see rank 0" if turn == 0 else "on another rank, which says why"
                raise DataError(f"building the default corpus in {args.default_data_dir} failed: {failure or elsewhere}"
                                "; pass --data-path, or a --default-data-dir every node can write (a node that does "
                                "not share it builds its own)") from failure
        sources = DataSources([prefix])
    for turn in (0, 1):  # rank 0 scans the data first and caches the scans, which the others then read
        if (rank == 0) == (turn == 0):
            try:
                sources.check_found()
                setup = resolve_data(sources.prefixes(), vocab_size, args.data_cache_dir)
            except Exception as err:  # re-raised below, after telling the other ranks
                failure = err
        if turn == 0 and any_rank(failure is not None):
            if failure is not None:
                raise failure
            raise DataError("the data check failed on rank 0; see its message")
    if (failed := failed_elsewhere(failure)) and failure is None:
        raise DataError(f"the data check failed on rank {failed[0]} (host {failed[1]}): {failed[2]}")
    if failure is not None:
        raise failure
    return sources, setup


def failed_elsewhere(failure: Exception | None) -> tuple[int, str, str] | None:
    """Collective (none without a process group): the first rank whose ``failure`` is not None, its host and its
    message, or None. Every rank takes part, the failing ones too, so that the others stop with that rank's reason
    rather than wait in the next collective for a rank that ended (a node whose own copy of the data is missing or
    corrupt: the others hung, or were told only that a rank ended during a collective)."""
    if not dist.is_initialized():
        return None
    why = (None if failure is None else str(failure) if isinstance(failure, UserError)
           else f"{type(failure).__name__}: {failure}")  # an unforeseen error: its kind, its message
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, (socket.gethostname(), why))
    return next(((rank, host, why) for rank, (host, why) in enumerate(ranks) if why is not None), None)


def check_same_data(data: DataSetup, world: int) -> None:
    """Collective: refuse (:class:`DataError` on every rank) a job whose ranks read other data under their paths,
    naming the first such rank, its host and what differs: each dataset's sequences, documents and tokens, and the
    tokenizer. Nodes that do not share a filesystem read their own copies (node-local copies of a corpus, or the
    default corpus each node builds from its own Python's standard library): a stale copy, or a build of other
    text, passes every check of its own node and would train each data-parallel rank on other data. The ranks
    compare a digest (:func:`first_odd_rank`) of :func:`data_seen`."""
    if world == 1 or (odd := first_odd_rank(data_seen(data), world)) is None:
        return
    rank, (host0, (shapes0, tokenizer0)), (host, (shapes, tokenizer)) = odd
    differ = [f"{path}: " + ", ".join(f"{key} {shape[key]} (rank 0: {shape0[key]})" for key in shape0
                                      if shape[key] != shape0[key])
              for (path, shape0), (_, shape) in zip(shapes0, shapes) if shape != shape0]
    if len(shapes) != len(shapes0):
        differ.append(f"{len(shapes)} datasets (rank 0: {len(shapes0)})")
    if tokenizer != tokenizer0:  # None: datasets without a metadata record (a copy of the .bin and .idx alone)
        differ.append(f"a tokenizer of sha256 {tokenizer or 'none (no dataset record)'} (rank 0: "
                      f"{tokenizer0 or 'none (no dataset record)'})")
    raise DataError(f"rank {rank} (host {host}) reads other data than rank 0 (host {host0}) under the same "
                    f"paths: {'; '.join(differ)}; give every node the same files (one shared folder, or copies "
                    "of one build), e.g. a --data-path every node sees")


def data_seen(data: DataSetup) -> tuple[Any, Any]:
    """What :func:`check_same_data` compares of a rank's data (each dataset's shape in order, the tokenizer's
    sha256; not the paths, each rank's real ones) and shows of it where it differs (the paths too)."""
    shapes = list(data.shapes.items())
    return ([shape for _, shape in shapes], data.tokenizer_fingerprint), (shapes, data.tokenizer_fingerprint)


def json_digest(value: Any) -> str:
    """sha256 of ``value`` as JSON, keys sorted."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()


def first_odd_rank(seen: tuple[Any, Any], world: int) -> tuple[int, tuple[str, Any], tuple[str, Any]] | None:
    """Collective: the first rank whose ``seen[0]`` (compared) differs from rank 0's, with (host, ``seen[1]``:
    shown) of rank 0 and of that rank; None where every rank's is equal. The ranks gather their host and a
    :func:`json_digest` of what they compare, and only those two send what they show: a gather of every rank's own
    would copy it ``world`` times onto each rank (a 3000-dataset blend's shapes or ``--data-path``, 200-300 kB, are
    about 1 GB at 4096 ranks, on the GPU under NCCL, and seconds to unpickle)."""
    ranks: list[Any] = [None] * world
    dist.all_gather_object(ranks, (socket.gethostname(), json_digest(seen[0])))
    odd = next((rank for rank in range(1, world) if ranks[rank][1] != ranks[0][1]), None)
    if odd is None:
        return None
    ends = []
    for src in (0, odd):
        payload = [seen[1]]
        dist.broadcast_object_list(payload, src=src)
        ends.append((ranks[src][0], payload[0]))
    return odd, ends[0], ends[1]


# ----------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """One pretraining run: engine, data, schedule, checkpoints, telemetry."""

    def __init__(self, args: TrainArgs) -> None:
        import deepspeed

        self.args = args
        self.config = args.model_config()  # a bad preset, override or --seq-length fails before any process group
        template = load_template(args.ds_config)  # and so does a layout that does not fit the world or the model
        check_template(args.ds_config, template, args)
        check_zero_options(args.ds_config, template)
        self.layout = resolve_layout(template, args, int(os.environ.get("WORLD_SIZE", "1")))
        bf16 = bf16_enabled(template, args.bf16)
        check_layout(args, self.layout, self.config, bf16)
        check_startup_memory(self.config, self.layout.tp, self.layout.ep, local_world_size(),
                             psutil.virtual_memory().total, device_memory_bytes(), "bf16" if bf16 else "fp32")
        self.adam_impl = resolve_adam_impl(args.adam_impl, torch.cuda.is_available())
        setup_logging(int(os.environ.get("RANK", "0")))
        self.comm = comm_stats.install()  # before DeepSpeed keeps references to the collectives
        self.rank, self.world = init_distributed(args.distributed_timeout_minutes)
        check_same_command(args, self.world)  # first: every later check and collective assumes one command
        if (why := unconvertible_layout(self.layout_record(), self.layout.zero)) and self.rank == 0:
            logger.warning("%s: this run's checkpoints will resume only on this layout, and export, evaluate, generate "
                           "and --finetune cannot read them; train without --tp or without --ep for a model to "
                           "export", why)
        self.resume_from, self.finetune_from = run_sources(args.save, args.load, args.finetune)
        if self.resume_from and self.world > 1:
            verify_resume(self.resume_from)
        self._keep_resumed_global_batch(template)
        args = self.args
        self.sources, self.data = resolve_run_data(args, self.config.vocab_size, self.rank)
        check_same_data(self.data, self.world)
        flags = document_flags(args.to_dict())
        eod = documents_eod(flags, self.sources.prefixes(), cache_dir=args.data_cache_dir)
        # what the forward of training, validation and the test evaluation applies; None: plain causal samples
        self.documents = None if eod is None else PackedDocuments(eod, **flags)
        done = (saved_progress(self.resume_from) if self.resume_from else None) or (0, 0)
        self.total_iters = args.total_iters(self.layout.global_batch_size, done)
        self.ds_config = build_ds_config(template, args, self.layout, self.config,
                                         client_optimizer=self.adam_impl != "deepspeed")
        if (summed_in_bf16 := accumulation_warning(self.layout, bf16)) and self.rank == 0:
            logger.warning("%s", summed_in_bf16)
        # a checkpoint of another layout is read as a universal checkpoint (converted by rank 0 here)
        self.universal = universal_tag(self.resume_from, self.layout_record(), self.layout.zero, self.rank,
                                       self.config, into=args.save) if self.resume_from else None
        if self.universal:
            self.ds_config["checkpoint"] = {**self.ds_config.get("checkpoint", {}), "load_universal": True}
        elif self.resume_from:
            check_saved_precision(self.resume_from, self.ds_config["bf16"]["enabled"])
        self.schedule = LRSchedule(args.lr, args.min_lr, args.warmup, self.total_iters, args.lr_schedule,
                                   args.wsd_decay_fraction)

        on_cpu = not torch.cuda.is_available()
        host_memory = keep_freed_memory() if on_cpu else None  # before the first tensors
        seed_everything(args.seed)
        model = MythosLM(self.config)
        if self.finetune_from:
            load_state(model, pretrained_state(self.finetune_from, self.config, self.data.tokenizer_fingerprint),
                       Path(self.finetune_from))
            overlap = held_out_overlap(pretrained_record(self.finetune_from), self.sources,
                                       args.data_recipe().split, self.data.shapes, self.finetune_from)
            if overlap and self.rank == 0:
                logger.warning("%s", overlap)
        param_groups = adamw_param_groups(model, args.weight_decay)
        optimizer = client_adam(self.adam_impl, args.lr, (args.adam_beta1, args.adam_beta2), args.adam_eps,
                                args.weight_decay)
        import_muon_without_compiling()
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=param_groups, optimizer=optimizer,
            config=self.ds_config, lr_scheduler=build_scheduler(self.schedule))
        undo_state_initialising_step(self.engine.optimizer)  # ZeRO-0 in bf16: trains as ZeRO-1/2/3 do
        tp_group = None
        if self.layout.tp > 1:
            from deepspeed.utils import groups

            tp_group = groups.get_tensor_model_parallel_group()
            self.dp_rank, self.dp_size = groups.get_data_parallel_rank(), groups.get_data_parallel_world_size()
        else:
            self.dp_rank, self.dp_size = self.rank, self.world
        autoep_layers = adapt_engine_module(self.engine.module, self.config, tp_group)
        # DeepSpeed's get_global_grad_norm() passes on its optimizer's norm: its ZeRO, bf16 and fp16 wrappers compute
        # one, the plain optimizer of ZeRO-0 in fp32 none, so there the trainer computes it, and clips by it
        self.own_grad_norm = trainer_clips(self.layout, bf16)
        if self.layout.replicate_core:
            replicate_recurrent_core(self.engine)
        if args.compile:
            logger.info("compiling blocks %s (first step pays the compilation)", compile_blocks(self.engine.module))
        self.iteration = 0
        self.consumed = 0
        # tokens consumed = those + (consumed - at resume) x S (the data position, skipped samples included);
        # tokens trained = those + (iteration - at resume) x global batch x S (what --train-tokens counts)
        self.consumed_at_resume = self.tokens_at_resume = self.iteration_at_resume = self.trained_at_resume = 0
        self.train_set: Any = None  # built by run(); its sample order at `consumed` goes into each checkpoint
        self.saved_order: str | None = None  # that of the checkpoint resumed
        self.data_moved: str | None = None  # how the resume found the run's datasets at other paths (data_moved)
        self.train_asked: int | None = None  # the samples datasets() asked of train_set (train_samples_asked)
        self.saved_asked: int | None = None  # those the checkpoint resumed recorded
        self.saved_rule = SAMPLE_RULE  # the blend rule (gpt_dataset.SAMPLE_RULE) of the checkpoint resumed
        self.guard = NonFiniteGuard(args.max_nonfinite)
        self.divergence = DivergenceGuard(self.config.vocab_size, args.divergence_factor, args.spike_factor,
                                          args.spike_window, args.spike_patience)
        self.rollbacks = 0
        self.checkpoints = CheckpointManager(
            args.save, args.keep_last,
            tokenizer=Tokenizer(self.data.tokenizer_model) if self.data.tokenizer_model else None,
            train_record={"args": args.to_dict(), **self.sources.absolute().record(),
                          "dataset_shapes": self.data.shapes,
                          "total_iters": self.total_iters, "global_batch_size": self.layout.global_batch_size,
                          "layout": self.layout_record(), "zero_stage": self.layout.zero,
                          PRECISION_KEY: self.ds_config["bf16"]["enabled"]})
        self.saved_peak: dict[str, Any] = {}
        if self.resume_from:
            state = self._load(self.resume_from, self.universal)
            self.divergence.resume(state.get("loss_window", []) if state else [])
            if self.universal and self.universal.parent.resolve() != Path(self.resume_from).resolve():
                any_rank(False)  # every rank has read it: a conversion of another run's tag is not kept here
                if self.rank == 0:
                    shutil.rmtree(self.universal, ignore_errors=True)
            self._check_room_to_save()
        self.peak = self.mfu_peak()
        # a finished run's relaunch trains nothing and logs nothing (no empty TensorBoard event file per relaunch)
        self.monitor = TrainingMonitor(self.rank == 0 and self.iteration < self.total_iters, args.tensorboard_dir,
                                       args.metrics_file, self.iteration, self.consumed)
        self.stragglers: StragglerWatch | None = None  # rank 0 of a larger world: it names a persistently slow rank
        self.hosts: list[str] = [socket.gethostname()]  # every rank's, in rank order
        if self.world > 1:
            self.hosts = [None] * self.world  # type: ignore[list-item]
            dist.all_gather_object(self.hosts, socket.gethostname())
            self.stragglers = StragglerWatch(self.hosts) if self.rank == 0 else None
        # rank 0 names an expert the router left without tokens for long (the counts are summed over every rank)
        self.idle_experts = IdleExpertWatch(self.config.n_experts, self.config.expert_bias_update_rate) \
            if self.rank == 0 else None
        latest = read_latest(args.save) if args.save else None
        self.last_good = Path(args.save) / latest if latest else None  # what `latest` names: never a diverged state
        self.reloaded: int | None = None  # the iteration of the tag the last rollback reloaded (see step_back)
        if args.save and self.rank == 0:
            warn_of_tags_aside(args.save)
        logger.info("layout: world %d, tp %d, ep %d, dp %d, ZeRO-%d, micro %d x accum %d x dp = global %d; "
                    "%d AutoEP layer(s); %d iterations", self.world, self.layout.tp, self.layout.ep, self.dp_size,
                    self.layout.zero, self.layout.micro_batch_size, self.layout.grad_accum,
                    self.layout.global_batch_size, autoep_layers, self.total_iters)
        logger.info("data: %s (tokenizer %s)", self.sources, self.data.tokenizer_model)
        if self.documents is not None:
            logger.info("packed documents: %s", self.documents)
        logger.info("optimizer: %s (--adam-impl %s)", type(self.engine.basic_optimizer).__name__, args.adam_impl)
        if on_cpu:
            logger.info("CPU threads per rank: %d (OMP_WAIT_POLICY %s); host memory: %s", torch.get_num_threads(),
                        openmp_wait_policy(), host_memory)

    def _check_room_to_save(self) -> None:
        """A resumed run that has steps to train stops here, before any, when ``--save`` has less room than the
        checkpoint it resumed takes (:func:`check_room_to_resume`); every rank raises, rank 0 says why."""
        latest = read_latest(self.resume_from)
        if not self.args.save or latest is None or self.iteration >= self.total_iters:
            return
        failure = None
        if self.rank == 0:
            try:
                check_room_to_resume(Path(self.args.save), Path(self.resume_from) / latest, self.iteration,
                                     self.args.save_interval)
            except CheckpointError as err:
                failure = err
        if any_rank(failure is not None):
            raise failure or CheckpointError("no room for the next checkpoint; see rank 0")

    def _keep_resumed_global_batch(self, template: dict[str, Any]) -> None:
        """A resume keeps the global batch its checkpoint trained with, the accumulation adapting to this run's
        micro-batch x data-parallel size, unless ``--global-batch-size`` or the template's ``train_batch_size``
        sets one: the default (micro x accumulation x dp) would change the optimisation on another world size
        without a word. Where micro x dp does not divide the saved batch, the run says so and keeps its default."""
        if not self.resume_from or self.args.global_batch_size or template.get("train_batch_size"):
            return
        latest = read_latest(self.resume_from)
        saved = read_train_record(Path(self.resume_from) / latest).get("global_batch_size") if latest else None
        if not saved or saved == self.layout.global_batch_size:
            return
        per_step = self.layout.micro_batch_size * self.layout.dp
        if saved % per_step:
            if self.rank == 0:
                logger.warning("%s trained with a global batch of %d samples, which micro-batch %d x data-parallel "
                               "%d does not divide: this run's is %d; pass --global-batch-size to choose another",
                               self.resume_from, saved, self.layout.micro_batch_size, self.layout.dp,
                               self.layout.global_batch_size)
            return
        self.args = dataclasses.replace(self.args, global_batch_size=saved)
        self.layout = resolve_layout(template, self.args, self.world)
        if self.rank == 0:
            logger.info("keeping the global batch of %s: %d samples (micro-batch %d x data-parallel %d x "
                        "accumulation %d); --global-batch-size sets another", self.resume_from, saved,
                        self.layout.micro_batch_size, self.layout.dp, self.layout.grad_accum)

    # ---------------------------------------------------------------------------------------- state
    def layout_record(self) -> dict[str, int]:
        """What a checkpoint's shards depend on; resuming on another one goes through a universal checkpoint."""
        return {"world_size": self.world, "tp": self.layout.tp, "ep": self.layout.ep}

    def mfu_peak(self) -> dict[str, Any]:
        """{"key", "tflops"}: the TFLOP/s MFU divides by, from ``--peak-tflops``, else the one a checkpoint of this
        run measured on the same kind of device (:func:`peak_key`), else measured now (:func:`measure_peak_tflops`;
        measured again at every launch, MFU would step at each resume with the machine's state)."""
        dtype = torch.bfloat16 if self.ds_config["bf16"]["enabled"] else torch.float32
        key = peak_key(dtype, self.engine.device)
        if self.args.peak_tflops:
            return {"key": key, "tflops": self.args.peak_tflops}
        if self.saved_peak.get("key") == key:
            logger.info("MFU against the peak matmul rate this run measured at its start: %.4g TFLOP/s (%s)",
                        self.saved_peak["tflops"], key)
            return self.saved_peak
        tflops = measure_peak_tflops(dtype, self.engine.device)
        logger.info("peak matmul rate for MFU: %.4g TFLOP/s (%s), measured now and kept in the checkpoints for "
                    "resumes on this kind of device (--peak-tflops sets it)", tflops, key)
        return {"key": key, "tflops": tflops}

    def tokens(self) -> tuple[int, int]:
        """(consumed, trained) tokens of the run so far: the data position (which also counts the samples a
        rollback or the non-finite guard skipped), and the tokens of the steps taken; each launch adds its own
        steps' sequence length and global batch to what the checkpoint it resumed recorded."""
        consumed = self.tokens_at_resume + (self.consumed - self.consumed_at_resume) * self.args.seq_length
        trained = self.trained_at_resume + ((self.iteration - self.iteration_at_resume)
                                            * self.layout.global_batch_size * self.args.seq_length)
        return consumed, trained

    def client_state(self) -> dict[str, Any]:
        order = order_fingerprint(self.train_set, self.consumed) if self.train_set is not None else None
        tokens, trained = self.tokens()
        return {"iteration": self.iteration, "consumed_train_samples": self.consumed, "consumed_tokens": tokens,
                "trained_tokens": trained,
                "expert_bias": expert_bias_state(self.engine.module), "skipped_steps": self.guard.skipped_steps,
                "skipped_micro_batches": self.guard.skipped_micro_batches,
                "rollbacks": self.rollbacks, "tokenizer_fingerprint": self.data.tokenizer_fingerprint,
                "layout": self.layout_record(), "lr_schedule": dataclasses.asdict(self.schedule),
                "next_samples": order, "train_samples_asked": self.train_asked, "sample_rule": SAMPLE_RULE,
                "mfu_peak": self.peak,
                "loss_window": list(self.divergence.window)}

    def _load(self, load_dir: str, universal: Path | None) -> dict[str, Any] | None:
        """Restore the run from ``load_dir/latest``; returns its client state (None: no checkpoint there)."""
        wanted = dataclasses.replace(self.schedule)  # loading a tag of the same layout overwrites self.schedule
        state = self.checkpoints.load(self.engine, load_dir, self.config, universal)
        if state is None:
            return None
        tag_dir = Path(load_dir) / read_latest(load_dir)
        record = read_train_record(tag_dir)
        recorded = DataSources.from_record(record)
        if refused := tokenizer_change(state.get("tokenizer_fingerprint"), self.data.tokenizer_fingerprint, recorded,
                                       self.sources, load_dir):
            raise CheckpointError(refused)
        change = data_change(record.get("dataset_shapes", {}), self.data.shapes, load_dir)
        if change and self.rank == 0:
            logger.warning("%s. The run goes on with what the datasets hold now; its samples from here on are not "
                           "those it would have read", change)
        self.data_moved = data_moved(recorded, record.get("dataset_shapes", {}), self.sources.absolute(),
                                     self.data.shapes, load_dir)
        settings = recipe_change(record.get("args", {}), recorded, self.args.data_recipe(), self.sources.absolute(),
                                 load_dir, moved=self.data_moved is not None)
        if self.data_moved and self.rank == 0:
            logger.info("%s%s", self.data_moved, "" if change or settings else "; the run reads on in its sample order "
                        "(the tokens of its next samples are checked against the checkpoint's)")
        if settings and self.rank == 0:
            logger.warning("%s. The run reads another sample order from iteration %d on (its consumed-sample count "
                           "points into it); resume with the saved settings to read the samples it would have",
                           settings, state["iteration"])
        documents = document_change(record.get("args", {}), self.args.to_dict(), load_dir)
        if documents and self.rank == 0:
            logger.warning("%s. From iteration %d on the run trains and validates with this command line's; resume "
                           "with the saved flags to train as it did", documents, state["iteration"])
        self.iteration = state["iteration"]
        self.consumed = self.consumed_at_resume = state["consumed_train_samples"]
        self.tokens_at_resume = state.get("consumed_tokens", self.consumed * self.args.seq_length)  # before: S fixed
        self.iteration_at_resume = self.iteration
        self.trained_at_resume = state.get("trained_tokens", self.tokens_at_resume)  # before: the data position
        self.saved_order = None if change or settings else state.get("next_samples")  # those warned already
        self.saved_asked = state.get("train_samples_asked")  # None: a checkpoint saved before it was recorded
        self.saved_rule = state.get("sample_rule", 1)  # the blend rule that built the samples it read
        # before 2026-12-07 "skipped_steps" also counted the micro-batches replaced for a non-finite loss
        self.guard.skipped_steps = state.get("skipped_steps", 0)
        self.guard.skipped_micro_batches = state.get("skipped_micro_batches", 0)
        self.rollbacks = state.get("rollbacks", 0)
        self.saved_peak = state.get("mfu_peak") or {}
        load_expert_bias_state(self.engine.module, state["expert_bias"])
        kept = kept_optimizer_settings(self.engine.optimizer.param_groups, self.args.weight_decay,
                                       (self.args.adam_beta1, self.args.adam_beta2), self.args.adam_eps)
        if kept and self.rank == 0:
            logger.warning("resuming with the checkpoint's optimizer settings, restored with its state: %s; to train "
                           "with others, start a new run from these weights (--finetune)", ", ".join(kept))
        # the schedule the checkpoint ran; a checkpoint without that record: what its scheduler state restored
        saved = state.get("lr_schedule") or (dataclasses.asdict(self.schedule) if universal is None else None)
        schedule = resumed_schedule(saved, wanted, self.args.lr_schedule_on_resume, str(tag_dir), state["iteration"])
        changes = schedule_changes(self.schedule, schedule)  # against what the scheduler holds now
        if changes:
            logger.info("following the LR schedule %s from iteration %d: %s", "of the command line"
                        if schedule == wanted else "saved in the checkpoint", state["iteration"], ", ".join(changes))
            set_schedule(self.engine.lr_scheduler, schedule)
            resume_schedule(self.engine.lr_scheduler, state["iteration"])
        return state

    def save(self) -> None:
        """Save a checkpoint (collective) and log its seconds as Megatron's ``save-checkpoint-time``: saves that
        slow down over a long run (a filling or failing file system) show before they fail."""
        self.check_replicas()
        start = time.perf_counter()
        self.last_good = self.checkpoints.save(self.engine, self.iteration, self.client_state(), self.config)
        if self.args.save:
            self.monitor.scalars({"save-checkpoint-time": time.perf_counter() - start}, self.iteration, self.consumed)

    def check_replicas(self) -> None:
        """Compare the copies of the weights the ranks hold alike (:func:`~megamythos.training.replicas.check_replicas`,
        collective; nothing to compare in a world of one)."""
        if self.world > 1:
            check_replicas(self.engine.module, self.iteration, self.hosts,
                           str(self.last_good) if self.last_good else None)

    def save_unless_spiking(self) -> bool:
        """Save, unless a loss spike is open (the divergence guard's streak) or the last steps were non-finite (the
        non-finite guard's streak, which may end in its abort): then `latest` stays on the checkpoint from before
        it, and no older checkpoint is pruned for one taken inside the streak. Returns whether it saved."""
        streak = "a loss spike" if self.divergence.spiking else \
            "a run of non-finite steps" if self.guard.consecutive else None
        if streak:
            logger.warning("iteration %d: checkpoint withheld during %s; latest stays on %s",
                           self.iteration, streak, self.last_good or "none")
            return False
        self.save()
        return True

    def save_or_stop(self, signals: GracefulExit, save_due: bool) -> tuple[bool, bool, bool]:
        """After a step (collective): whether to stop (a signal, the time limit or ``--exit-interval``), a save when
        stopping or when ``save_due`` (:meth:`save_unless_spiking`). Returns (saved, stop, signalled).

        A signal or the time limit that came during a periodic save stops the run with that checkpoint, as Megatron's
        loop checks them after its save: not one more step and a second save, past a preemption's grace period or
        the time ``--exit-duration-in-mins`` leaves for one save."""
        signalled = signals.should_exit()
        stop = signalled or bool(self.args.exit_interval and self.iteration % self.args.exit_interval == 0)
        saved = (stop or save_due) and self.save_unless_spiking()
        if saved and not stop:
            stop = signalled = signals.should_exit()
        return saved, stop, signalled

    def on_divergence(self, diverged: Divergence) -> None:
        """Point ``latest`` at the last good checkpoint (:func:`step_back`), then raise :class:`DivergenceError`, or
        under ``--on-divergence rollback`` (at most ``--max-rollbacks`` times, and only with a checkpoint to go back
        to) reload that checkpoint and move the data position past every sample read since it: the steps from the
        checkpoint on are retrained on the samples that follow the spike (the PaLM recipe). The rollback is logged,
        to TensorBoard (``rollbacks``) and the metrics file."""
        if self.args.save:
            self.last_good = step_back(Path(self.args.save), diverged.since, self.reloaded)
        exhausted = self.rollbacks >= self.args.max_rollbacks
        if self.args.on_divergence == "stop" or self.last_good is None or exhausted:
            after = f" after {self.rollbacks} rollback{'s' * (self.rollbacks != 1)} (--max-rollbacks " \
                    f"{self.args.max_rollbacks})" \
                if self.args.on_divergence == "rollback" and exhausted else ""
            good = f"{self.last_good} (`latest`); resume from it" if self.last_good else \
                "none saved; start again" + (" in another --save folder" if self.args.save else "")
            raise DivergenceError(f"training diverged at {diverged.describe()}{after}; last good checkpoint: {good} "
                                  "with a lower --lr or a longer --warmup")
        read_to, rollbacks = self.consumed, self.rollbacks + 1
        self._load(self.args.save, None)
        self.rollbacks, self.reloaded = rollbacks, self.iteration
        self.monitor.rolled_back(self.iteration)
        skipped, self.consumed = read_to - self.consumed, read_to
        self.divergence.restart()
        logger.warning("training diverged at %s; rollback %d of %d: reloaded %s (iteration %d); the data resumes at "
                       "sample %d, %d past the checkpoint's", diverged.describe(), self.rollbacks,
                       self.args.max_rollbacks, self.last_good, self.iteration, self.consumed, skipped)
        self.monitor.scalars({"rollbacks": float(self.rollbacks)}, diverged.iteration, read_to)
        self.monitor.record({"iteration": diverged.iteration, "rollback": self.rollbacks,
                             "diverged_loss": diverged.loss, "threshold": diverged.threshold,
                             "checkpoint": str(self.last_good), "resumed_iteration": self.iteration,
                             "skipped_samples": skipped, "consumed_samples": self.consumed})

    # ---------------------------------------------------------------------------------------- helpers
    def on_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A (tokens, labels) micro-batch on the engine's device (DeepSpeed's forward does not move inputs)."""
        return batch[0].to(self.engine.device, non_blocking=True), batch[1].to(self.engine.device, non_blocking=True)

    def rank_table(self, values: list[float]) -> torch.Tensor:
        """Every rank's ``values`` in one all-gather: [world, len(values)] float64 on the CPU, row r rank r's (every
        rank passes as many)."""
        mine = torch.tensor(values, dtype=torch.float64, device=collective_device())
        rows = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(rows, mine)
        return torch.stack(rows).cpu()

    def world_mean(self, values: list[float]) -> list[float]:
        """Mean over all ranks (TP ranks hold equal values, so this is the data-parallel mean)."""
        t = torch.tensor(values, dtype=torch.float64, device=collective_device())
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def rollback_headroom(self, rollbacks: int = 0) -> int:
        """Training steps that the ``--max-rollbacks`` rollbacks left after ``rollbacks`` may skip (0 unless
        ``--on-divergence rollback``).

        A rollback skips the steps from its checkpoint to the divergence. Saves are ``--save-interval`` I apart,
        or up to ``--spike-patience`` K - 1 later when a spike streak withholds one; the newest save is dropped
        when its weights gave the first bad loss, so one rollback skips at most I + 2K steps (without periodic
        saves: the whole run)."""
        if self.args.on_divergence != "rollback":
            return 0
        interval, patience = self.args.save_interval, self.args.spike_patience
        span = min(self.total_iters, interval + 2 * patience) if interval else self.total_iters
        return max(0, self.args.max_rollbacks - rollbacks) * span

    def train_samples_asked(self) -> int:
        """The samples :meth:`datasets` asks of the training set: those of the first launch's plan (total steps and
        the rollbacks' headroom, in global batches), or the samples consumed so far, those of the steps left and the
        headroom of the rollbacks left where they are more (a resume that shrank the global batch). The same count
        over the same documents and seed gives the same sample order."""
        gbs = self.layout.global_batch_size
        planned = (self.total_iters + self.rollback_headroom()) * gbs
        needed = self.consumed + (self.total_iters - self.iteration + self.rollback_headroom(self.rollbacks)) * gbs
        return max(planned, needed)

    def datasets(self) -> tuple[Any, Any, Any]:
        """(train, valid, test) of the run (valid None without ``--eval-interval``, test None without a test split);
        a split that leaves no documents to train on, or none to validate on while ``--eval-interval`` asks for
        validations, is refused before the first step. The training set holds :meth:`train_samples_asked`, the
        samples of the run's first launch unless a resume needs more, so that a resume reads on in the same sample
        order; that count is kept in ``train_asked`` for the checkpoints."""
        gbs = self.layout.global_batch_size
        recipe = self.args.data_recipe()
        self.train_asked = self.train_samples_asked()  # recorded in each checkpoint
        train, valid, test = build_datasets(recipe, self.sources, self.total_iters, gbs,
                                            extra_train_samples=self.train_asked - self.total_iters * gbs,
                                            with_valid=bool(self.args.eval_interval))
        where = f"--split {recipe.split} leaves no {{}} documents in {self.sources}"
        if train is None:
            raise DataError(f"{where.format('training')}; give the split a larger first weight (e.g. 969,30,1)")
        if valid is None and self.args.eval_interval:
            raise DataError(f"{where.format('validation')}, which --eval-interval {self.args.eval_interval} reads; "
                            "give the split a larger second weight (e.g. 969,30,1), or pass --eval-interval 0")
        per_split = self.sources.per_split is not None
        self.warn_of_rereads(valid, "a validation", "validation", "give --valid-data-path more data" if per_split
                             else "give the split a larger second weight")
        self.warn_of_rereads(test, "the test evaluation", "test", "give --test-data-path more data" if per_split
                             else "give the split a larger third weight")
        return train, valid, test

    def warn_of_rereads(self, held_out: Any, what: str, split: str, remedy: str) -> None:
        """Say (rank 0) when ``eval_iters`` global batches are more samples than ``held_out`` holds (a blend: not
        known), so that ``what`` reads some of them more than once."""
        gbs = self.layout.global_batch_size
        samples, read = samples_per_epoch(held_out), self.args.eval_iters * gbs
        if samples is not None and read > samples and self.rank == 0:
            logger.warning("%s reads --eval-iters %d x global batch %d = %d samples, but the %s split holds %d "
                           "samples of %d tokens: some are read more than once (its loss weighs them so); pass "
                           "--eval-iters %d or fewer to read each once, or %s", what, self.args.eval_iters, gbs, read,
                           split, samples, self.args.seq_length, max(1, samples // gbs), remedy)

    def validation_tokens(self) -> int:
        """Tokens one validation (or the test evaluation) predicts: ``eval_iters`` global batches (the first
        ``eval_iters x global batch`` samples of the split, what ``evaluate --eval-iters eval_iters x global / B
        --micro-batch-size B`` reads)."""
        return self.args.eval_iters * self.layout.global_batch_size * self.args.seq_length

    def evaluate(self, held_out: Any, signals: GracefulExit, split: str = "validation") -> float | None:
        """Mean loss over the first ``eval_iters`` global batches of ``held_out`` (the validation or test set) at the
        mean loop count: the mean of the means of the micro-batches that score a token (under ``--eod-mask-loss`` one
        of end-of-document tokens alone scores none), which is the mean over tokens that ``evaluate`` computes
        while every micro-batch scores as many tokens (not so under ``--eod-mask-loss``). The expert token counts
        of the bias update are left as they were (AutoEP's layer counts in eval mode too).

        ``None`` on every rank when a signal arrives during it: ``signals`` is checked (collectively) before each
        micro-batch, so a preemption's grace period is spent saving, not validating; and when no micro-batch of any
        rank scored a token (a warning says so)."""
        self.engine.eval()
        losses = []
        it = batches(held_out, 0, self.layout.micro_batch_size, self.dp_rank, self.dp_size)
        micro_batches = self.args.eval_iters * self.layout.grad_accum
        with torch.no_grad(), expert_counts_frozen(self.engine.module):
            for done in range(micro_batches):
                if signals.should_exit():
                    logger.warning("%s at iteration %d abandoned after %d of %d micro-batches", split,
                                   self.iteration, done, micro_batches)
                    self.engine.train()
                    return None
                batch = next(it)
                scored = scores_a_token(*batch, self.documents)  # on the host's copy: no device sync
                tokens, labels = self.on_device(batch)
                # every loop on every rank: an exit would let data decide how many iterations a rank runs
                out = self.engine(tokens, labels=labels, n_loops=self.config.mean_loops, exit_threshold=0.0,
                                  documents=self.documents)
                if scored:
                    losses.append(out.loss.item())
        self.engine.train()
        total, scoring = self.world_mean([sum(losses), len(losses)])
        if not scoring:
            if self.rank == 0:
                logger.warning("%s at iteration %d scored no token (--eod-mask-loss masks every label of its %d "
                               "micro-batches): no loss to report", split, self.iteration, micro_batches)
            return None
        return total / scoring

    def validate(self, held_out: Any, signals: GracefulExit, split: str = "validation") -> None:
        """:meth:`evaluate`, then its loss and perplexity to TensorBoard, the metrics file and the log as ``lm loss
        SPLIT`` and ``lm loss SPLIT ppl`` (``split``: "validation" or "test"; nothing when a signal cut it short or
        no token was scored)."""
        start = time.perf_counter()
        loss = self.evaluate(held_out, signals, split)
        if loss is None:
            return
        ppl = math.exp(min(loss, 20.0))
        scalars = {f"lm loss {split}": loss, f"lm loss {split} ppl": ppl}
        seconds = {"eval-time": time.perf_counter() - start} if split == "validation" else {}  # Megatron's timer
        self.monitor.scalars({**scalars, **seconds}, self.iteration, self.consumed)
        self.monitor.record({"iteration": self.iteration, **scalars, f"{split} tokens": self.validation_tokens()})
        logger.info("%s at iteration %d | lm loss: %.6g | lm loss PPL: %.6g | %d tokens (%d batches of %d x %d) at %d "
                    "loops", split, self.iteration, loss, ppl, self.validation_tokens(), self.args.eval_iters,
                    self.layout.global_batch_size, self.args.seq_length, self.config.mean_loops)

    def record_saved(self) -> None:
        """Say in this rank's exit record (``<pid>.saved``, the tag) that `latest` names its state as it stops (the
        run's last checkpoint before the end-of-run evaluation, or the one a stop just saved), so that a signal
        after that save, which saves nothing more, is not taken by the supervisor for a stop without a checkpoint."""
        if self.last_good:
            write_exit_record(".saved", self.last_good.name)

    def evaluate_at_end(self, valid: Any, test: Any, signals: GracefulExit) -> None:
        """After the last iteration (Megatron's ``evaluate_and_print_results`` in ``pretrain``): the validation set
        once more unless that iteration just validated, then the test set (none: nothing to do). Training is over
        and saved (or its save withheld): a stop request from here on abandons the evaluation and saves nothing, and
        its log line says so."""
        signals.then = ("training is over: the end-of-run evaluation stops and the process exits without another "
                        f"checkpoint (latest: {self.last_good or 'none'})")
        if valid is not None and self.iteration % self.args.eval_interval != 0:
            self.validate(valid, signals)
        if test is not None:
            self.validate(test, signals, "test")

    # ---------------------------------------------------------------------------------------- the loop
    def train_step(self, data: Iterator) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; non-finite micro-batches are skipped."""
        cfg = self.config
        self.comm.reset()
        seed_step(self.args.seed, self.iteration, self.dp_rank)
        n_loops = sample_loop_count(cfg.mean_loops, cfg.loop_sigma, cfg.resolved_max_loops, self.args.seed,
                                    self.iteration) if cfg.sample_depth else cfg.mean_loops
        lm, aux, stats, grad_norm = [], [], {}, None
        lr = self.engine.get_lr()[0]  # the LR this step uses (the scheduler advances inside engine.step())
        while True:
            tokens, labels = next(data, (None, None))
            if tokens is None:
                raise DataError(f"training data ran out at iteration {self.iteration} after {self.consumed} samples "
                                f"({self.guard.skipped_micro_batches} skipped micro-batches and {self.rollbacks} "
                                "rollbacks consumed extra data)")
            scored = scores_a_token(tokens, labels, self.documents)  # on the host's copy: no device sync
            tokens, labels = self.on_device((tokens, labels))
            self.consumed += self.layout.micro_batch_size * self.dp_size
            restore_counts = expert_counts_saved(self.engine.module)
            out = self.engine(tokens, labels=labels, n_loops=n_loops, documents=self.documents)
            loss = out.loss + out.aux_loss
            if self.guard.skip(loss, self.iteration + 1):
                restore_counts()  # its routed tokens train nothing: they must not move the expert biases
                continue
            boundary = self.engine.is_gradient_accumulation_boundary()
            discarded = self.engine.skipped_steps
            self.engine.backward(loss)
            left_out = False
            if boundary and self.own_grad_norm:  # the reduced gradients, before step() updates and zeroes them
                grad_norm = global_grad_norm(self.engine.module.parameters(), self.world, self.layout.tp,
                                             self.layout.ep)
                left_out = not math.isfinite(grad_norm)  # ZeRO's optimizers discard such a step, this one not
                if not left_out:
                    clip_gradients(self.engine.module.parameters(), grad_norm, self.args.clip_grad)
            with optimizer_update_left_out(self.engine.optimizer, left_out):
                self.engine.step()
            if scored:  # else loss 0, no gradient: not in the mean
                lm.append(out.loss.item())
            aux.append(out.aux_loss.item())
            stats = out.stats
            if boundary:  # a step discarded for its non-finite gradient norm counts like a bad loss
                self.guard.record(self.engine.skipped_steps > discarded, self.iteration + 1)
                break
        self.iteration += 1
        balance = update_expert_bias(self.engine.module, cfg.expert_bias_update_rate)
        if self.idle_experts:
            self.idle_experts.observe(balance.idle, self.iteration)
        lm_sum, scoring, aux_loss = self.world_mean([sum(lm), len(lm), sum(aux) / len(aux)])
        lm_loss = lm_sum / scoring if scoring else math.nan  # no micro-batch of the step scored a token
        weights_norm = params_norm(self.engine.module.parameters(), self.world, self.layout.tp, self.layout.ep) \
            if self.args.log_params_norm else None  # after the step, as Megatron's calc_params_l2_norm
        return {"lm_loss": lm_loss, "aux_loss": aux_loss, "lr": lr, "n_loops": n_loops, "stats": stats,
                "moe": balance.stats, "comm": self.comm.scalars(), "comm_seconds": self.comm.seconds,
                "grad_norm": grad_norm, "params_norm": weights_norm}

    def log_step(self, step: dict[str, Any], seconds: float) -> None:
        """The step's scalars to TensorBoard and the metrics file, and every ``--log-interval`` the console line.
        ``seconds``: this rank's wall time of the step; less the time it spent in collectives (``step["comm_seconds"]``)
        it is the rank's step compute time, whose min and max over ranks, and the rank of the max, a larger world
        logs (:func:`~megamythos.training.monitor.rank_timers`), with the memory of the rank nearest its limit, from
        one all-gather per step."""
        tokens_per_sec = self.layout.global_batch_size * self.args.seq_length / seconds
        flops = count(self.config, self.args.seq_length, step["n_loops"]).train_flops_per_token
        tflops = flops * tokens_per_sec / self.world / 1e12
        grad_norm = step["grad_norm"] if self.own_grad_norm else self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        stats = step["stats"]
        values = {
            "lm loss": step["lm_loss"], "aux loss": step["aux_loss"],
            "learning-rate": step["lr"], "grad-norm": grad_norm,
            "loss-scale": float(getattr(self.engine.optimizer, "loss_scale", 1.0) or 1.0),
            "tokens-per-sec": tokens_per_sec, "tflops": tflops, "mfu": tflops / self.peak["tflops"],
            "iteration-time": seconds, "skipped-steps": float(self.guard.skipped_steps),
            "skipped-micro-batches": float(self.guard.skipped_micro_batches),
            "batch-size": float(self.layout.global_batch_size), "world-size": float(self.world),
            **dict(zip(("consumed-tokens", "trained-tokens"), map(float, self.tokens()), strict=True)),
            "recurrent/loop-count": float(step["n_loops"]),
        }
        if step["params_norm"] is not None:
            values["params-norm"] = step["params_norm"]
        if "rho" in stats:
            values["recurrent/max-rho"] = float(stats["rho"])
        # where the inference exit rule would stop each token at this depth; under loop capacity the tokens left
        # out of a loop show no change, which would read as exits one loop late
        if "relative_change" in stats and not self.config.loop_capacity:
            depths = exit_depths(stats["relative_change"], self.config.exit_threshold)
            values["recurrent/exit-mean-loops"] = float(depths.mean())
            for i, share in enumerate(exit_distribution(depths, step["n_loops"]).tolist()):
                values[f"recurrent/exit-share/loop-{i + 1:02d}"] = share
        for i, norm in enumerate(stats.get("state_norm", torch.empty(0)).flatten().tolist()):
            values[f"recurrent/state-norm/loop-{i:02d}"] = norm
        if self.config.loop_capacity:  # share of the tokens computed at each loop (the capacity schedule)
            for i, share in enumerate(stats["active_share"].tolist()):
                values[f"recurrent/active-share/loop-{i:02d}"] = share
            values["recurrent/mean-depth"] = float(stats["mean_depth"])
        for i, gate in enumerate(stats.get("router_gate", torch.empty(0)).tolist()):  # learned router: 2 sigmoid(z_t)
            values[f"recurrent/router-gate/loop-{i:02d}"] = gate
        values.update({f"moe/{k.replace('_', '-')}": v for k, v in step["moe"].items()})
        values.update(step["comm"])
        usage = memory_usage(torch.device(self.engine.device))
        table = self.rank_table([*usage.values(), seconds - step["comm_seconds"]])
        memory = peak_memory(list(usage), table[:, :-1])
        values.update(memory)
        timers = rank_timers(table[:, -1].tolist()) if self.world > 1 else {}
        values.update(timers)
        if self.stragglers:
            self.stragglers.observe(timers, self.iteration)
        self.monitor.scalars(values, self.iteration, self.consumed)
        self.monitor.record({"iteration": self.iteration, "consumed_samples": self.consumed,
                             **{k: v for k, v in values.items() if not PER_LOOP.search(k)},
                             **{f"recurrent/{kind}": per_loop for kind in RECORDED_PER_LOOP
                                if (per_loop := [v for k, v in values.items() if f"/{kind}/" in k])}})
        if self.iteration % self.args.log_interval == 0:
            self.monitor.console(self.iteration, self.total_iters, {
                "consumed samples": self.consumed, "elapsed time per iteration (ms)": seconds * 1e3,
                "learning rate": values["learning-rate"], "lm loss": values["lm loss"],
                "aux loss": values["aux loss"], "grad norm": grad_norm,
                **({"params norm": values["params-norm"]} if "params-norm" in values else {}),
                "loops": step["n_loops"],
                "tokens/s": tokens_per_sec, "TFLOP/s": tflops, "MFU": values["mfu"],
                "max rho": values.get("recurrent/max-rho"), "skipped steps": self.guard.skipped_steps,
                "skipped micro-batches": self.guard.skipped_micro_batches,
                "memory (GiB)": next(memory[key] for key in CONSOLE_MEMORY if key in memory),
                **({"step compute min/max (ms)": f"{timers['timers/step-compute-min'] * 1e3:.1f}/"
                    f"{timers['timers/step-compute-max'] * 1e3:.1f} (rank {timers['timers/slowest-rank']:.0f})"}
                   if timers else {})})

    def run(self) -> int:
        """Train to the end (or to a signal / --exit-interval / --exit-duration-in-mins); returns the process exit
        code."""
        if self.iteration >= self.total_iters:
            logger.warning("the run in %s already finished at iteration %d of %d: nothing to do. Raise %s to "
                           "continue it (with --use-checkpoint-lr-schedule to stay at --min-lr, or "
                           "--override-lr-schedule for a schedule over the new length), or start another run in a "
                           "new folder (RUN_DIR=runs/NAME make pretrain ARGS=..., or --save DIR)", self.args.save,
                           self.iteration, self.total_iters,
                           "--train-tokens" if self.args.train_tokens else "--train-iters")
            return 0
        train, valid, test = self.datasets()
        self.train_set = train
        if self.saved_order and self.rank == 0 and order_fingerprint(train, self.consumed) != self.saved_order:
            rule_changed = self.saved_rule != SAMPLE_RULE and (
                samples_changed_with_rule(self.args.data_path) if self.args.data_path else
                bool(self.args.train_data_path) and samples_changed_with_rule(self.args.train_data_path, False))
            same_order = same_sample_order(train, self.saved_asked, self.train_asked)
            logger.warning("%s", order_change(self.data_moved, same_order, self.iteration, self.total_iters,
                                              self.layout.global_batch_size, rule_changed))
        data = batches(train, self.consumed, self.layout.micro_batch_size, self.dp_rank, self.dp_size)
        warmup_warning = self.schedule.warmup_warning()
        if warmup_warning and self.rank == 0:
            logger.warning("%s", warmup_warning)
        if self.args.profile_dir and self.args.profile_step_start > self.total_iters and self.rank == 0:
            logger.warning("--profile-step-start %d is past the run's %d steps: nothing will be profiled",
                           self.args.profile_step_start, self.total_iters)
        unsaved = checkpointing_warning(self.args.save, self.args.save_interval, self.total_iters - self.iteration)
        if unsaved and self.rank == 0:
            logger.warning("%s", unsaved)
        context = self.args.context_warning()
        if context and self.rank == 0:
            logger.warning("%s", context)
        signals = GracefulExit(self.args.exit_duration_in_mins)
        self.engine.train()
        saved_at, save_due = self.iteration, False
        # the launch's first step compiles the blocks under --compile; a save or a rollback compiles nothing again
        first_step = True
        profiler = StepProfiler(self.args.profile_dir, self.args.profile_step_start, self.args.profile_step_end,
                                self.rank) if self.args.profile_dir and self.rank == 0 else None
        try:
            while self.iteration < self.total_iters:
                start = time.perf_counter()
                if profiler:
                    profiler.before_step(self.iteration + 1)
                with still_working("compiling the first step") if self.args.compile and first_step else nullcontext():
                    step = self.train_step(data)
                first_step = False
                if profiler:
                    profiler.after_step(self.iteration)
                self.log_step(step, time.perf_counter() - start)
                # a step ZeRO discarded (non-finite gradient; the streak of the NonFiniteGuard) changed no weights;
                # a step that scored no token (NaN lm loss) has no loss to judge
                diverged = self.divergence.observe(step["lm_loss"], self.iteration) \
                    if self.guard.consecutive == 0 and math.isfinite(step["lm_loss"]) else None
                if diverged:
                    self.on_divergence(diverged)
                    data = batches(train, self.consumed, self.layout.micro_batch_size, self.dp_rank, self.dp_size)
                    saved_at, save_due = self.iteration, False
                    continue
                interval = self.args.check_weight_hash_across_dp_replicas_interval
                if interval and self.iteration % interval == 0:
                    self.check_replicas()
                if self.args.eval_interval and self.iteration % self.args.eval_interval == 0:
                    self.validate(valid, signals)
                save_due = save_due or bool(self.args.save_interval and self.iteration % self.args.save_interval == 0)
                saved, stop, signalled = self.save_or_stop(signals, save_due)
                if saved:
                    saved_at, save_due = self.iteration, False
                if stop:
                    if saved:
                        self.record_saved()
                    logger.info("stopping at iteration %d (latest checkpoint: %s)", self.iteration,
                                self.last_good or "none")
                    if not signalled and self.iteration >= self.total_iters:  # --exit-interval at the last step
                        self.evaluate_at_end(valid, test, signals)  # the run is complete: no relaunch would
                    return 0
            if saved_at != self.iteration and self.save_unless_spiking():
                saved_at = self.iteration
            if saved_at == self.iteration:
                self.record_saved()
            self.evaluate_at_end(valid, test, signals)
            return 0
        finally:
            if profiler:
                profiler.close()
            signals.restore()
            self.monitor.close()

    def report(self) -> None:
        """Where the results are (rank 0)."""
        if self.rank != 0:
            return
        for what, where in (("checkpoints", self.args.save), ("TensorBoard logs", self.args.tensorboard_dir),
                            ("metrics", self.args.metrics_file), ("profiles", self.args.profile_dir)):
            if where:
                logger.info("%s: %s", what, Path(where).resolve())


def train(argv: Sequence[str] | None = None) -> int:
    """Parse, check the run's directories, train, report; returns the process exit code.

    Arguments and checkpoint directories are checked before any process group or DeepSpeed start-up, and so are
    the checksums of the checkpoint to resume in a world of one; a larger world verifies them together once
    torch.distributed runs, each rank hashing its share. Rank 0 holds the ``--save`` directory's writer lock for
    the whole run."""
    args = parse_args(argv)
    single_process_environment()
    rank0 = os.environ["RANK"] == "0"
    check_sources(args.save, args.load, args.finetune, verify=os.environ["WORLD_SIZE"] == "1")
    if rank0:
        check_outputs(args.tensorboard_dir, args.metrics_file, args.profile_dir, args.save)
    with writer_lock(args.save, holder=rank0):
        trainer = Trainer(args)
        code = trainer.run()
        trainer.report()
    return code


# How long a rank other than 0 that met a user error waits before it exits: rank 0 meets the same error at about the
# same moment, and a loaded host can put seconds between them (found 2026-12-07: under the test suite's load rank 1
# exited first, the runner killed rank 0 before it printed its line, and the launch ended with no error line at all)
PEER_REPORT_SECONDS = 10.0


def first_rank_of_another_node(env: Mapping[str, str]) -> bool:
    """Whether this rank is the first (local rank 0) of a node that does not hold rank 0: the ranks of a node
    follow each other, so rank 0's node is the one whose local ranks are the global ones."""
    return env.get("LOCAL_RANK") == "0" and env.get("RANK", "0") != "0"


def _quiet(argv: Sequence[str] | None) -> int:
    """:func:`train` for ranks other than 0: a user error is the same on every rank and rank 0 reports it; one that only
    this rank met (its shard of a save on a full disk) goes into its exit record, which the launcher reports when
    rank 0 did not end with a user error of its own. The first rank of every other node says its error itself
    (``error: rank R: ...``): that node's input may differ (its own copy of the data, a path only it lacks, another
    command), and neither rank 0 nor a launcher on rank 0's node sees its exit record, so under ``deepspeed
    --no_ssh``, srun or pdsh the node ended without a word while the others waited for it. Ctrl-C before the signal
    handlers are set (during start-up) reaches every rank of the process group: rank 0 says ``error: interrupted``,
    the others end with its exit code (130) without a traceback."""
    try:
        return train(argv)
    except UserError as err:
        if first_rank_of_another_node(os.environ):  # rank 0 may not meet it: this node says it, once
            print(f"error: rank {os.environ['RANK']}: {err}", file=sys.stderr, flush=True)
        else:
            write_exit_record(".error", str(err))
        # rank 0 meets the same error and says it; DeepSpeed's runner kills every rank once one exits non-zero (it
        # polls each second), so this rank waits until rank 0's exit ends it, or PEER_REPORT_SECONDS
        time.sleep(PEER_REPORT_SECONDS)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """:func:`train`; user errors end the process with a one-line message (from rank 0) and exit code 2."""
    record_start()
    join_supervisor_group()
    # DeepSpeed's ZeRO calls these two collectives, which torch 2.13 deprecates (FutureWarning on every run);
    # the calls are not ours to change, so exactly these two messages are silenced.
    deprecated = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"
    warnings.filterwarnings("ignore", message=deprecated, category=FutureWarning)
    try:
        if os.environ.get("RANK", "0") != "0":
            return _quiet(argv)
        return run_cli(lambda: train(argv), log_format=None)
    except RuntimeError as err:  # a peer rank died or hangs: every survivor says so in one line, whatever its rank
        args = parse_args(argv)
        line = collective_failure(err, args.save, read_latest(args.save) if args.save else None,
                                  args.distributed_timeout_minutes)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        release_own_buffer()


if __name__ == "__main__":
    end_process(main())
