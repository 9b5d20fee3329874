"""Checkpoints: DeepSpeed save/load plus our client state, keep-last-K, and an atomic ``latest`` pointer.

The directory layout is described in :mod:`megamythos.checkpoint.files`, which also reads it without DeepSpeed.
A run killed during a save resumes from the previous complete checkpoint: ``latest`` moves only after every rank
finished writing, and older tags are pruned only after that. A save that fails (disk full, unwritable) removes its
partial tag and leaves ``latest`` where it was.

Nothing is lost to a mistake on the command line: :func:`check_run_dirs` refuses a ``--load`` that does not exist
and a ``--save`` that holds another run's checkpoints, and :func:`writer_lock` allows one run per ``--save``.
A checkpoint written on another layout (world size, ``--tp``, ``--ep``) is resumed through DeepSpeed's universal
checkpoint (:func:`universal_tag`), converted on the first such resume.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from megamythos.checkpoint.checksums import (
    ALONE,
    CHECKSUMMED_KEY,
    CHECKSUMS_FILE,
    Team,
    finished_save,
    manifest_bytes,
    verified,
    verify_tag,
    write_checksums,
)
from megamythos.checkpoint.files import (
    ASIDE_RE,
    LATEST,
    MEGATRON_TRACKER,
    MODEL_CONFIG_FILE,
    TAG_RE,
    TORCH_WRITE_FAILURES,
    TRAIN_RECORD,
    TRAIN_RECORD_REMEDY,
    UNIVERSAL_SUFFIX,
    WRITER_LOCK,
    ZERO_OPTIM_SHARDS,
    CheckpointError,
    check_model_fields,
    complete_tags,
    disk_full,
    disk_size,
    move_tag_aside,
    newest_complete_tag,
    read_latest,
    read_tokenizer_files,
    read_train_record,
    saved_layout,
    tag_for,
    tags_by_iteration,
    unconvertible_layout,
    warn_if_latest_is_not_newest,
    write_atomic,
    write_tokenizer_files,
)
from megamythos.data.atomic import locked_folder, pid_alive, remove_stale_temps, temp_name
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import UserError, read_json_object
from megamythos.model.config import CONFIG_FILE_REMEDY, ModelConfig
from megamythos.training.optimizers import DECAYS
from megamythos.training.schedules import resume_schedule

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_gather(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (collective)."""
    return _all_gather(value)[0] if dist.is_initialized() else value


def team() -> Team:
    """Every rank of the job as one :class:`~megamythos.checkpoint.checksums.Team` (one process alone before
    torch.distributed starts)."""
    return Team(dist.get_rank(), dist.get_world_size(), _all_gather) if dist.is_initialized() else ALONE


# What a new run from a checkpoint's weights (--finetune) may set anew: no weight's shape depends on it. The context
# and its RoPE base (a long-context phase: a longer --seq-length, often with a larger base), the initialisation
# (the weights are loaded), the inference exit default, and the coefficients of the auxiliary losses and the bias
# update (how the new run trains).
FINETUNE_SETTINGS = frozenset({"max_seq_len", "rope_theta", "init_std", "exit_threshold", "seq_aux_loss_coef",
                               "router_z_loss_coef", "expert_bias_update_rate"})


# Model fields a resume may change, which shape no weight: how the loop count is drawn and how far the gradient runs
# back through it (max_loops only where its resolved value, the rows of the per-loop tables, stays) change what the
# run trains; the activation checkpointing fields and the free-form notes change nothing it computes.
TRAINING_SETTINGS = ("mean_loops", "max_loops", "loop_sigma", "sample_depth", "backprop_loops", "loop_capacity")
MEMORY_SETTINGS = ("checkpoint_loops", "loop_checkpoint_segment", "checkpoint_dense_blocks", "extra")


def _saved_fields(saved: dict[str, Any], current: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the checkpoint's fields, the run's), both as JSON holds them (tuples as lists). A field the checkpoint lacks
    was added after it was written, when the model behaved as the field's default says: it reads as that default."""
    defaults = json.loads(ModelConfig().to_json())
    return json.loads(json.dumps({k: saved.get(k, v) for k, v in defaults.items()})), json.loads(current.to_json())


def check_model_config(saved: dict[str, Any], current: ModelConfig, where: str, finetune: bool = False) -> None:
    """Refuse a checkpoint whose model differs in any field that shapes or changes the network; with
    ``finetune`` (a new run from its weights) the fields of :data:`FINETUNE_SETTINGS` may differ too."""
    was, cur = _saved_fields(saved, current)
    ignored = {*TRAINING_SETTINGS, *MEMORY_SETTINGS}  # how the model is trained, not the network
    if finetune:
        ignored |= FINETUNE_SETTINGS
    diffs = {k: (was[k], cur[k]) for k in cur if k not in ignored and was[k] != cur[k]}
    saved_max_loops = was["max_loops"] or 2 * was["mean_loops"]
    remedy = "use the same --preset/--override as the run that wrote it"
    if not finetune:  # a resume: the user may have meant a new run beside the one in this folder
        remedy += ", or start a new run in another folder (--save DIR; the launchers' RUN_DIR=runs/NAME)"
    if saved_max_loops != current.resolved_max_loops:  # the rows of the per-loop embeddings
        diffs["max_loops (default 2 x --mean-loops)"] = (saved_max_loops, current.resolved_max_loops)
        remedy += f"; to change --mean-loops, pass --override max_loops={saved_max_loops} too"
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise CheckpointError(f"checkpoint {where} was written for a different model ({detail}); {remedy}")


def _override_value(value: Any) -> str:
    """``value`` (as JSON holds it) as ``--override FIELD=VALUE`` takes it back."""
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def training_change(saved: dict[str, Any], current: ModelConfig, where: str) -> str | None:
    """``this run trains on from checkpoint WHERE with other loop settings than it trained with (backprop_loops 0 ->
    2; ...); pass --override backprop_loops=0 ...`` where a resume changes a field of :data:`TRAINING_SETTINGS`,
    which :func:`check_model_config` lets it; None where it changes none. ``saved``: the checkpoint's
    ``model_config.json``. The run's fields come from its --preset and overrides: a preset default that changed
    since the checkpoint was written (tiny's backprop_loops, 0 -> 2 on 2026-12-01) changed how an old run trained on
    under its own command line."""
    was, cur = _saved_fields(saved, current)
    # max_loops: check_model_config refused any other resolved value, and 0 names the same one as 2 x mean_loops
    changed = [k for k in TRAINING_SETTINGS if k != "max_loops" and was[k] != cur[k]]
    if not changed:
        return None
    detail = ", ".join(f"{k} {_override_value(was[k]) or '(empty)'} -> {_override_value(cur[k]) or '(empty)'}"
                       for k in changed)
    keep = " ".join(f"--override {k}={_override_value(was[k])}" for k in changed)
    return (f"this run trains on from checkpoint {where} with other loop settings than it trained with ({detail}; "
            f"from the --preset's defaults or this command line); pass {keep} (in place of a flag that sets it) to "
            "train on as it did")


def run_sources(save: str | None, load: str | None, finetune: bool) -> tuple[str | None, str | None]:
    """(the directory this run resumes, the checkpoint whose weights it starts from): ``(load, None)`` without
    ``finetune``; with it ``(save, None)`` once ``save`` holds a checkpoint of this run (a relaunch resumes the
    fine-tuning run), else ``(None, load)``."""
    if not finetune:
        return load, None
    if save and load and (Path(load).resolve() == Path(save).resolve() or Path(save).resolve() in
                          Path(load).resolve().parents):
        raise CheckpointError(f"--finetune --load {load} lies in this run's own --save {save}: a fine-tuning run "
                              "starts in a folder of its own; give another --save (RUN_DIR=runs/NAME), or drop "
                              "--finetune to resume the run")
    return (save, None) if save and read_latest(save) is not None else (None, load)


def check_pretrained(source: str) -> None:
    """Refuse a ``--finetune --load`` that is not a run directory with ``latest``, a checkpoint tag or an export
    (its files are verified when rank 0 reads it)."""
    from megamythos.checkpoint.reader import is_export_dir

    path = Path(source)
    if not (is_export_dir(path) or (path / MODEL_CONFIG_FILE).is_file() or (path.is_dir() and read_latest(path))):
        raise CheckpointError(f"--finetune --load {source} is neither a run directory with `latest`, a checkpoint "
                              "tag (iter_*) nor an export; fix the path")


def pretrained_state(source: str, config: ModelConfig, tokenizer_fingerprint: str | None) -> dict[str, torch.Tensor]:
    """Collective: the weights and expert biases of ``source`` (``--finetune --load``), read and checked by rank
    0 and broadcast; refused on every rank alike when its model differs from ``config`` in a field that shapes
    the network, or its tokenizer from the data's (``tokenizer_fingerprint``; None: data without a record)."""
    from megamythos.checkpoint.reader import pretrained_weights

    payload: list[Any] = [None]
    if _rank() == 0:
        try:
            where, saved, state = pretrained_weights(Path(source))
            check_model_config(json.loads(saved.to_json()), config, str(where), finetune=True)
            changed = {k: (getattr(saved, k), getattr(config, k)) for k in sorted(FINETUNE_SETTINGS)
                       if getattr(saved, k) != getattr(config, k)}
            if changed:
                logger.info("--finetune: this run changes %s of %s", ", ".join(
                    f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), where)
            record = read_tokenizer_files(where)
            trained = (record or {}).get("tokenizer_fingerprint")
            if trained and tokenizer_fingerprint and trained != tokenizer_fingerprint:
                raise CheckpointError(f"--finetune --load {source}: {where} was trained with tokenizer {trained} but "
                                      f"the data uses {tokenizer_fingerprint}; prepare the data with the checkpoint's "
                                      "tokenizer.model")
            logger.info("--finetune: starting from the weights of %s", where)
            payload = [state]
        except (UserError, OSError) as err:
            payload = [f"{err}" if isinstance(err, UserError) else f"--finetune --load {source}: {err}"]
    if dist.is_initialized():
        dist.broadcast_object_list(payload, src=0)
    if isinstance(payload[0], str):
        raise CheckpointError(payload[0])
    return payload[0]


def pretrained_record(source: str) -> dict[str, Any]:
    """The ``train_args.json`` of the checkpoint that ``--finetune --load`` ``source`` names (a tag, or the newest of
    a run directory); {} for an export or a tag without one."""
    path = Path(source)
    return read_train_record(path if (path / MODEL_CONFIG_FILE).is_file() else path / (read_latest(path) or ""))


def not_a_run_directory(load: Path) -> str:
    """Why ``--load`` ``load``, a directory without ``latest``, cannot be resumed, and what to pass instead."""
    from megamythos.checkpoint.reader import MODEL_FILE  # an export's weights

    if (load / MODEL_CONFIG_FILE).is_file() and TAG_RE.match(load.name):
        latest = read_latest(load.parent)
        other = "" if latest == load.name else (f"; to resume from {load.name} instead, write that name into "
                                                 f"{load.parent / 'latest'}")
        return (f"--load {load} is one checkpoint tag; pass the run directory above it, --load {load.parent}, which "
                f"resumes from its latest tag, {latest}{other}")
    if (load / MODEL_FILE).is_file():
        return (f"--load {load} is an export (weights only, no optimizer or data position); the trainer resumes "
                "from the --save directory of a run, or starts a new run from these weights with --finetune")
    return (f"--load {load} holds no checkpoint (no `latest`); pass the --save directory of the run to resume, or "
            "drop --load to start from scratch")


def checkpoint_around(path: Path) -> tuple[Path, str] | None:
    """(the directory, ``"checkpoint tag"`` or ``"export"``) when ``path`` is or lies inside one: a folder holding
    ``model_config.json`` with a tag's name or records, or ``model.safetensors``, ``config.json`` and
    ``checksums.json`` (not any folder of a downloaded model); else None."""
    from megamythos.checkpoint.reader import CONFIG_FILE, MODEL_FILE  # an export's files

    for directory in (path.absolute(), *path.absolute().parents):
        if (directory / MODEL_CONFIG_FILE).is_file() and (
                TAG_RE.match(directory.name) or ASIDE_RE.match(directory.name)
                or any((directory / name).is_file() for name in (CHECKSUMS_FILE, TRAIN_RECORD))):
            return directory, "checkpoint tag"
        if all((directory / name).is_file() for name in (MODEL_FILE, CONFIG_FILE, CHECKSUMS_FILE)):
            return directory, "export"
    return None


def check_run_dirs(save: str | None, load: str | None, verify: bool = True) -> None:
    """Refuse command lines that would lose checkpoints or a run: a ``--load`` that does not exist or holds no
    ``latest`` (a typo, one tag, an export: each would start from scratch), and a ``--save`` holding checkpoints
    that this run does not resume (they would be overwritten and ``latest`` moved back), or only tags moved aside
    (:func:`tags_aside`: a run that diverged before any checkpoint it could go back to), a ``--save`` that is or
    lies in a checkpoint tag or an export (:func:`checkpoint_around`), and one holding a Megatron-LM run.
    ``--load`` equal to ``--save`` and still empty is a fresh run.

    ``verify``: also check the files of ``--load``'s latest tag against its checksums (:func:`verify_tag`), here
    in this process alone; the trainer asks it of a world of one, before start-up, and has a larger world verify
    the tag together once torch.distributed runs (:func:`verify_resume`): each rank hashes its share."""
    same = bool(save and load) and Path(save).resolve() == Path(load).resolve()
    around = checkpoint_around(Path(save)) if save else None
    if around:  # a run there would train from scratch into it (and the tag's own run may prune it)
        directory, kind = around
        where = f"is {'a' if kind != 'export' else 'an'} {kind}" if directory == Path(save).absolute() \
            else f"lies inside the {kind} {directory}"
        resume = (f"to resume the run it belongs to, pass that run's folder ({directory.parent}); "
                  if kind != "export" else "")
        raise CheckpointError(f"--save {save} {where}, not a run folder: a run there would start from scratch "
                              f"inside it; {resume}to start a new run from its weights, pass --finetune --load "
                              f"{directory} with another --save")
    if save and (Path(save) / MEGATRON_TRACKER).is_file():
        raise CheckpointError(f"--save {save} holds a Megatron-LM run ({MEGATRON_TRACKER}), which megamythos cannot "
                              "resume; a run there would take its iter_* folders, named as its own, for unfinished "
                              "saves and delete them: give another --save")
    if load and not same and not Path(load).is_dir():
        what = "is a file, not a run directory or checkpoint tag" if Path(load).exists() else "does not exist"
        raise CheckpointError(f"--load {load} {what}; fix the path, or drop --load to start from scratch")
    if load:
        tag = read_latest(load)
        if tag is None and not same:
            raise CheckpointError(not_a_run_directory(Path(load)))
        if tag is not None and verify:
            verify_tag(Path(load) / tag)
    if save and not same and Path(save).is_dir() and read_latest(save) is not None:
        raise CheckpointError(f"--save {save} already holds checkpoints (latest {read_latest(save)}); resume them "
                              f"with --load {save}, or start fresh with another --save (or delete {save})")
    inner = Path(save) / "checkpoints" if save else None
    if inner and read_latest(inner) is not None and not (load and Path(load).resolve() == inner.resolve()):
        raise CheckpointError(f"--save {save} is the run folder of another run, whose checkpoints are in {inner} "
                              f"(latest {read_latest(inner)}), and its logs would be shared: resume that run with "
                              f"RUN_DIR={save} (or --save {inner} --load {inner}), or save elsewhere")
    orphan = newest_complete_tag(Path(save)) if save and read_latest(save) is None else None
    if orphan:
        raise CheckpointError(f"--save {save} holds the complete checkpoint {orphan} but no `{LATEST}` (deleted or "
                              f"lost?): a fresh run there would delete it; write {orphan} into {Path(save) / LATEST} "
                              "to resume it, or start fresh with another --save")
    aside = tags_aside(save) if save and read_latest(save) is None else []
    if aside:  # a divergence moved every tag aside: the same command must not quietly start the run over
        raise CheckpointError(f"--save {save} holds no `{LATEST}`, only checkpoints moved aside ({', '.join(aside)}; "
                              "a divergence or a step back to an earlier tag moved them): a fresh run there would "
                              "train over the run they come from; start fresh with another --save, or rename one "
                              f"back to its iter_N name and write that into {Path(save) / LATEST} to resume it")


def tags_aside(save_dir: str | Path) -> list[str]:
    """The complete checkpoint tags of ``save_dir`` that :func:`megamythos.checkpoint.files.move_tag_aside` moved
    out of a run's view (``iter_N.diverged``, ``iter_N.superseded``, numbered when repeated), oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    return sorted(p.name for p in save_dir.iterdir()
                  if p.is_dir() and ASIDE_RE.match(p.name) and (p / CHECKSUMS_FILE).is_file())


def warn_of_tags_aside(save_dir: str | Path) -> None:
    """Say which complete tags of ``save_dir`` were moved aside (:func:`tags_aside`) and the bytes they hold, as
    their ``checksums.json`` lists them: ``--keep-last`` never prunes them, and each is a whole checkpoint."""
    aside = tags_aside(save_dir)
    if aside:
        size = sum(manifest_bytes(Path(save_dir, tag)) for tag in aside)
        logger.warning("%s holds %d checkpoint(s) moved aside after a divergence or a step back, %.1f GB in all, "
                       "which --keep-last does not prune: %s; delete them once they are no longer needed",
                       save_dir, len(aside), size / 1e9, ", ".join(aside))


def room_short(save_dir: Path, size: int) -> str | None:
    """``"DIR has 67.1 MB free, less than a checkpoint takes (85.8 MB)"`` when ``save_dir``'s file system has less room
    than a checkpoint of ``size`` bytes takes, else None: a save writes a whole tag before ``--keep-last`` prunes an
    old one, so the next save would fail there."""
    free = shutil.disk_usage(save_dir).free
    if free >= size:
        return None
    return f"{save_dir} has {disk_size(free)} free, less than a checkpoint takes ({disk_size(size)})"


def warn_if_the_next_save_cannot_fit(save_dir: Path, size: int) -> bool:
    """Warn (and return True) when the next save of a checkpoint of ``size`` bytes cannot fit (:func:`room_short`)."""
    short = room_short(save_dir, size)
    if short:
        logger.warning("%s: the next save will fail unless space is freed (--keep-last removes old tags only after a "
                       "save completes)", short)
    return short is not None


def check_room_to_resume(save_dir: Path, resumed_tag: Path, iteration: int, save_interval: int) -> None:
    """Raise :class:`CheckpointError` when ``save_dir`` has less room than ``resumed_tag`` (a checkpoint of this model)
    takes: the run would train to its next save and fail there, and a job restarted on that disk would do so again
    at every restart. Rank 0 (the caller shares the outcome)."""
    short = room_short(save_dir, manifest_bytes(resumed_tag))
    if short:
        due = f"at iteration {(iteration // save_interval + 1) * save_interval}" if save_interval else "at its end"
        raise CheckpointError(f"{short}: this run would train to its next save ({due}) and fail there; free space "
                              "there (or move the run to a disk with room) and run the same command again (nothing "
                              f"was trained, {resumed_tag.name} is untouched)")


# Where a run stood at a checkpoint, copied from the client state into its train record (train_args.json), which
# is read before start-up without unpickling anything.
PROGRESS_KEYS = ("iteration", "consumed_train_samples", "consumed_tokens", "trained_tokens")


def saved_progress(load_dir: str | Path) -> tuple[int, int] | None:
    """(iteration, tokens trained: global batch x sequence length summed over the optimizer steps) of
    ``load_dir``'s latest checkpoint from its train record; None for a fresh run or a checkpoint saved before the
    record carried them. Tags saved before it recorded the tokens trained give the tokens consumed, the data
    position, which also counts samples a rollback or the non-finite guard skipped."""
    tag = read_latest(load_dir)
    record = read_train_record(Path(load_dir) / tag) if tag else {}
    if "consumed_tokens" not in record:
        return None
    progress = record.get("iteration"), record.get("trained_tokens", record["consumed_tokens"])
    if not all(type(value) is int and value >= 0 for value in progress):  # a record edited by hand or damaged
        raise CheckpointError(f"{Path(load_dir) / tag / TRAIN_RECORD} holds the iteration {progress[0]!r} and "
                              f"tokens trained {progress[1]!r}, not whole numbers >= 0; {TRAIN_RECORD_REMEDY}")
    return progress


PRECISION_KEY = "bf16"  # in the train record of every tag: whether its weights trained in bf16


def check_saved_precision(load_dir: str | Path, bf16: bool) -> None:
    """Refuse a resume on the same layout in another precision: DeepSpeed names the ZeRO optimizer shards of a bf16
    run ``bf16_zero_pp_rank_*`` and looks only for the names of the run's own precision (a missing-file error), and
    ZeRO-0's optimizer of one precision cannot read the other's state (``KeyError: 'dynamic_loss_scale'``, or
    ``'param_groups'``). The tag's train record says its precision (:data:`PRECISION_KEY`); for one saved before it
    did, the shard names do, and ZeRO-0's optimizer files (AutoEP's ``expp_rank_*``), which carry no precision in
    their names, are not judged."""
    tag = read_latest(load_dir)
    if tag is None:
        return
    saved = read_train_record(Path(load_dir) / tag).get(PRECISION_KEY)
    if not isinstance(saved, bool):
        shards = [p.name for p in (Path(load_dir) / tag).glob(ZERO_OPTIM_SHARDS)]
        if not shards:
            return
        saved = any(name.startswith("bf16_") for name in shards)
    if saved != bf16:
        flag, other = ("--bf16", "--no-bf16") if saved else ("--no-bf16", "--bf16")
        raise CheckpointError(f"checkpoint {Path(load_dir) / tag} was written with {'bf16' if saved else 'fp32'} "
                              f"weights; this run uses {'bf16' if bf16 else 'fp32'}: resume it with {flag}, or start "
                              f"a new run from its weights with {other} --finetune")


def check_sources(save: str | None, load: str | None, finetune: bool, verify: bool) -> None:
    """The start-up checks of what a run reads: :func:`check_run_dirs` on the directory it resumes
    (:func:`run_sources`) and :func:`check_pretrained` on the one ``--finetune`` starts from."""
    resume_from, finetune_from = run_sources(save, load, finetune)
    check_run_dirs(save, resume_from, verify)
    if finetune_from:
        check_pretrained(finetune_from)


def verify_resume(load: str) -> None:
    """Collective: refuse ``load``'s latest tag when its files differ from its checksums, every rank hashing its
    share (:func:`check_run_dirs` checked the directory itself)."""
    tag = read_latest(load)
    if tag is not None:
        verify_tag(Path(load) / tag, team())


def lock_holder(path: Path, save: str) -> tuple[str, str, str]:
    """(host, pid, folder) that the writer lock ``path`` of ``--save`` ``save`` names: ``folder`` is
    :func:`lock_folder` of the folder it was taken for ("" in a lock written before 2026-12-07, and all three empty
    while its writer has created it and not yet written it); a lock holding anything but ``host pid [folder]``
    (bytes overwritten, another program's file) raises :class:`CheckpointError` naming it."""
    text = path.read_bytes().decode(errors="replace").strip()
    host, pid, folder = (text.split(" ", 2) + ["", ""])[:3]
    if text and not (host and pid.isdigit()):
        raise CheckpointError(f"{path} is not a writer lock (it holds {text[:40]!r}, not 'host pid [folder]'); delete "
                              f"it if no run is writing --save {save}, and run again")
    return host, pid, folder


def lock_folder(save: str) -> str:
    """``DEVICE:INODE REALPATH`` of folder ``save``: which folder a writer lock was taken for. A copy of the folder
    (``cp -a``, ``rsync``) is another inode, so its copied lock names another folder; a link to it or a move within
    its file system keeps the inode (the real path only says where the lock came from)."""
    st = os.stat(save)
    return f"{st.st_dev}:{st.st_ino} {os.path.realpath(save)}"


@contextmanager
def writer_lock(save: str | None, holder: bool) -> Iterator[None]:
    """One run per ``--save`` directory: the ``holder`` (rank 0) creates ``DIR/writer.lock`` naming its host, pid
    and the folder (:func:`lock_folder`), or refuses to start while another live process holds it. A lock left by a
    killed run (its pid is gone on this host), or taken on this host for another folder (a copy of a running run's
    folder carries its lock), is taken over with a warning; one held on another host must be removed by hand once
    that run is gone. Runs starting together judge and take the lock in turn, under a ``flock`` on the folder
    (:func:`~megamythos.data.atomic.locked_folder`), so two of them cannot both take over one stale lock."""
    if not (save and holder):
        yield
        return
    path = Path(save) / WRITER_LOCK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = lock_folder(save)
        mine = f"{socket.gethostname()} {os.getpid()} {folder}"
        with locked_folder(save):  # else one that judged a stale lock could unlink the one another just took
            while True:
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    host, pid, taken_for = lock_holder(path, save)
                    if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
                        logger.warning("removing %s left by process %s, which is gone", path, pid)
                        path.unlink(missing_ok=True)
                        continue
                    if host == socket.gethostname() and taken_for and taken_for.split(" ")[0] != folder.split(" ")[0]:
                        logger.warning("taking over %s, copied with its folder from %s (process %s writes that one, "
                                       "not this copy)", path, taken_for.partition(" ")[2], pid)
                        path.unlink(missing_ok=True)
                        continue
                    raise CheckpointError(f"--save {save} is being written by another run (process {pid} on {host}, "
                                          f"{path}); use another --save, or delete {path} if that run is "
                                          "gone") from None
                with os.fdopen(fd, "w") as f:
                    f.write(mine + "\n")
                break
    except OSError as err:
        raise CheckpointError(f"--save {save} is not writable: {err}") from err
    try:
        yield
    finally:
        try:
            if path.is_file() and path.read_text().rstrip("\n") == mine:
                path.unlink()
        except OSError as err:  # the folder became read-only: the next run on this host takes the lock over
            logger.warning("could not remove %s (%s)", path, err)


def universal_tag(load_dir: str | Path, layout: dict[str, int], zero_stage: int, rank: int,
                  config: ModelConfig, into: str | Path | None = None) -> Path | None:
    """The universal checkpoint folder to load with ``"load_universal"`` when ``load_dir``'s latest checkpoint was
    written on another layout than ``layout`` (None: same layout, or nothing to load), made in ``into`` (the
    run's own ``--save``: never in another run's folder; default ``load_dir``). Refused unless both runs use
    ZeRO-3: from ZeRO-1/2 checkpoints DeepSpeed 0.19.8's universal load loses Adam step counts and expert-bias
    state, and fails on AutoTP (measured with the layout pairs of tests/test_elastic.py). Rank 0 converts it once, into
    ``TAG_universal_{model|autoep}`` (through ``TARGET.tmp.<host>.<pid>``, so a killed conversion
    leaves no valid-looking one, and the next conversion removes it) with its own checksums; a universal
    directory whose checksums do not verify (or that has none) is derived data and converted again from the tag,
    which the resume verified. The other ranks only name it, and load after the barrier that follows
    (``deepspeed.initialize``)."""
    tag = read_latest(load_dir)
    saved, saved_stage = saved_layout(Path(load_dir) / tag) if tag else (None, None)
    if saved is None:
        return None
    where = Path(load_dir) / tag
    if saved_stage is not None and saved_stage != zero_stage and (saved == layout or saved_stage != 3):
        on_layout = "" if saved == layout else " on its own layout (same number of processes, --tp and --ep)"
        raise CheckpointError(f"checkpoint {where} was written with ZeRO-{saved_stage}; this run uses "
                              f"ZeRO-{zero_stage}: resume it with --zero {saved_stage}{on_layout}")
    if saved == layout:
        return None
    if zero_stage != 3 or saved_stage not in (3, None):
        stage = f" with ZeRO-{saved_stage}" if saved_stage else ""
        raise CheckpointError(
            f"checkpoint {where} was written on layout {saved}{stage}; this run is {layout} with "
            f"ZeRO-{zero_stage}, and resuming on another layout works only between ZeRO-3 runs: resume it on its "
            f"own layout (same number of processes, --tp and --ep) with --zero {saved_stage or zero_stage}")
    if why := unconvertible_layout(saved, saved_stage):
        raise CheckpointError(f"checkpoint {where} was written on layout {saved}; this run is {layout}, and {why}: "
                              "resume it on its own layout (same number of processes, --tp and --ep)")
    autoep = layout["ep"] > 1  # AutoEP replaces the MoE layers only when ep > 1: other parameter names
    target = Path(into or load_dir) / f"{tag}{UNIVERSAL_SUFFIX}_{'autoep' if autoep else 'model'}"
    logger.info("checkpoint %s was written on layout %s, this run is %s: resuming it as a universal checkpoint",
                Path(load_dir) / tag, saved, layout)
    failure = None  # rank 0's, told to every rank: the others would wait for it inside deepspeed.initialize
    if rank == 0:
        try:
            if not (target.is_dir() and verified(target)):
                _convert(Path(load_dir) / tag, target, (saved["ep"] > 1) != autoep, autoep, config,
                         "--save" if into else "--load")
        except CheckpointError as err:
            failure = str(err)
        except Exception as err:  # not ours to word: rank 0's traceback, and the others are told, not left waiting
            _from_rank0(f"rank 0 failed to convert {where} into {target} ({type(err).__name__}: {err}); its "
                        "traceback says where")
            raise
    failure = _from_rank0(failure)
    if failure:
        raise CheckpointError(failure)
    return target


def _convert(tag_dir: Path, target: Path, rename: bool, autoep: bool, config: ModelConfig, flag: str) -> None:
    """Rank 0 of :func:`universal_tag`: convert ``tag_dir`` into ``target`` through a temporary folder; a conversion
    that runs out of room, of disk quota or into a file-size limit raises the one-line
    :func:`~megamythos.checkpoint.reader.conversion_disk_full`, and one whose folder takes no new file (a read-only
    ``--load`` of a run without ``--save``) a line naming ``flag``, the option that gave that folder."""
    from megamythos.checkpoint.reader import conversion_disk_full, conversion_limit, convert_to_universal

    tmp = Path(temp_name(target))
    try:
        if target.is_symlink() or (target.exists() and not target.is_dir()):  # not ours to delete: only its name
            raise CheckpointError(f"{target} is in the way of the universal conversion of {tag_dir.name} (a file or "
                                  "a link, not its folder); move it elsewhere (or delete it) and run again")
        if target.is_dir():
            logger.warning("%s does not verify against its checksums (or has none): converting %s again", target,
                           tag_dir.name)
            shutil.rmtree(target)
        remove_stale_temps([target])  # of a conversion killed before it could clean up (a signal at start-up)
        tmp.mkdir(parents=True)
    except OSError as err:
        remedy = ("give a writable --save DIR, where a run makes the conversion instead (and removes it once every "
                  "rank loaded it)" if flag == "--load" else "make it writable, or use another --save")
        raise CheckpointError(f"{flag} {target.parent} is not writable ({err.strerror}), and resuming {tag_dir.name} "
                              f"on another layout writes its universal conversion there; {remedy}") from err
    try:
        converted = convert_to_universal(tag_dir, tmp / tag_dir.name, target.parent)
        if rename:
            rename_expert_tensors(converted / "zero", autoep, config)
        as_param_records(converted / "zero")
        write_checksums(converted)
        os.replace(converted, target)
    except (OSError, RuntimeError) as err:  # torch's writer reports ENOSPC and EDQUOT as a RuntimeError
        limit = conversion_limit(str(err), target.parent)
        if limit is None:
            raise
        raise conversion_disk_full(tag_dir, target.parent, limit) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (tag_dir.parent / "latest_universal").unlink(missing_ok=True)  # ds_to_universal's pointer; we pass the tag


UNIVERSAL_STATES = ("fp32", "exp_avg", "exp_avg_sq")


def rename_expert_tensors(zero_dir: Path, to_autoep: bool, config: ModelConfig) -> None:
    """Rewrite a universal checkpoint's MoE tensors between the model's names (``gate``, fused
    ``experts.gate_up_proj`` [E, 2F, H], ``experts.down_proj`` [E, H, F]; flat, as ZeRO-3 stores them) and
    AutoEP's (``router.gate``, ``experts.w1``/``w3`` [E, F, H], ``experts.w2`` [E, H, F]; expert entries)."""
    from megamythos.parallel import autoep_to_model_names

    E, H, F = config.n_experts, config.dim, config.expert_dim

    def expert(t: torch.Tensor) -> dict[str, Any]:
        return {"param": t.contiguous(), "cat_dim": 0, "is_expert_param": True, "ep_num_experts": E}

    sources = [d.name for d in zero_dir.iterdir()
               if d.is_dir() and (".experts." in d.name or ".gate." in d.name) and "shared_experts" not in d.name]
    for key in UNIVERSAL_STATES:
        load = {name: torch.load(zero_dir / name / f"{key}.pt", weights_only=False) for name in sources}
        state = {name: (v["param"] if isinstance(v, dict) else v) for name, v in load.items()}
        if to_autoep:
            out = {}
            for name, t in state.items():
                if name.endswith(".experts.gate_up_proj"):
                    base, t = name[: -len("gate_up_proj")], t.view(E, 2 * F, H)
                    out[base + "w1"], out[base + "w3"] = expert(t[:, :F]), expert(t[:, F:])
                elif name.endswith(".experts.down_proj"):
                    out[name[: -len("down_proj")] + "w2"] = expert(t.view(E, H, F))
                else:
                    out[name.replace(".gate.", ".router.gate.")] = t
        else:
            out = {name: t.flatten() for name, t in autoep_to_model_names(state).items()}
        for name, value in out.items():
            (zero_dir / name).mkdir(exist_ok=True)
            torch.save(value, zero_dir / name / f"{key}.pt")
    for name in sources:
        shutil.rmtree(zero_dir / name)


def as_param_records(zero_dir: Path) -> None:
    """Store every state tensor of a universal checkpoint as a record ``{"param": tensor}``.

    ``ds_to_universal`` writes a bare tensor for a parameter that no tensor-parallel rank cut (any checkpoint
    saved with ``--tp 1``), and DeepSpeed 0.19.8's ZeRO-3 universal load cuts AutoTP's slice out of the full
    tensor only when it finds a record: a bare tensor is loaded whole, and a ``--tp`` > 1 run then fails with
    "start + length exceeds dimension size". A record loads the same on any layout."""
    for path in zero_dir.glob("*/*.pt"):
        if path.stem in UNIVERSAL_STATES:
            state = torch.load(path, weights_only=False)
            if not isinstance(state, dict):
                torch.save({"param": state}, path)


def repair_universal_optimizer(optimizer: Any, groups: list[dict[str, Any]]) -> None:
    """Undo two side effects of DeepSpeed's universal load: every parameter group gets the settings of the
    checkpoint's first group (so the no-decay group decays, and AutoEP's expert groups lose their names; ``groups``
    are the settings from before the load, to put back), and every parameter's Adam step count is one shared
    tensor, which ``torch.optim.AdamW`` then increments once per parameter group and step.

    The checkpoint's AdamW settings stay, as a resume on the same layout restores them with the optimizer state: its
    betas and eps, which its groups share, and its weight decay, that of its first group (the decayed weights come
    first: :func:`~megamythos.training.optimizers.adamw_param_groups`), on the groups marked ``DECAYS``."""
    saved = optimizer.param_groups[0]
    kept = {key: saved[key] for key in ("betas", "eps") if key in saved}
    decay = saved.get("weight_decay", 0.0)
    for group, settings in zip(optimizer.param_groups, groups):
        group.update(settings, **kept)
        if settings.get(DECAYS):
            group["weight_decay"] = decay
    for state in getattr(optimizer, "optimizer", optimizer).state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def _disk_full(err: BaseException, directory: Path) -> bool:
    """Whether a failed write ran out of space (ENOSPC, or no room left: :func:`disk_full`)."""
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or disk_full(directory)



class CheckpointManager:
    """Saves and restores one run's checkpoints under ``save_dir``; keeps the newest ``keep_last``.

    ``tokenizer`` (None for data without a tokenizer record) and ``train_record`` (JSON-able) are written into
    every tag directory, so evaluation and generation need neither the dataset nor a torch.load to check them.
    """

    def __init__(self, save_dir: str | Path | None, keep_last: int = 3, tokenizer: Tokenizer | None = None,
                 train_record: dict[str, Any] | None = None) -> None:
        self.save_dir = Path(save_dir) if save_dir else None
        self.keep_last = keep_last
        self.tokenizer = tokenizer
        self.train_record = train_record

    def save(self, engine: Any, iteration: int, client_state: dict[str, Any], config: ModelConfig) -> Path | None:
        """Collective: every rank must call it. Returns the tag directory (None when saving is off)."""
        if self.save_dir is None:
            return None
        tag = tag_for(iteration)
        tag_dir = self.save_dir / tag
        start = time.perf_counter()
        cleared: tuple[str | None, str | None] = (None, None)  # rank 0's (what it found, why it failed)
        if _rank() == 0:
            try:
                cleared = (self._clear_tag(tag), None)
            except OSError as err:  # told to every rank, which would otherwise wait for rank 0 for ever
                cleared = (None, str(err))
        found, failed = _from_rank0(cleared)
        if failed:
            raise CheckpointError(f"cannot remove the unfinished {tag_dir} before saving it again ({failed}); remove "
                                  "it by hand and resume")
        if found == "saved":
            logger.info("checkpoint %s is already saved and named by latest; not saving it again", tag_dir)
            return tag_dir
        try:
            engine.save_checkpoint(str(self.save_dir), tag=tag, client_state=client_state, save_latest=False)
            torch.save(rng_state(), tag_dir / f"rng_rank{_rank()}.pt")
            if _rank() == 0:
                config.to_json(tag_dir / MODEL_CONFIG_FILE)
                if self.tokenizer is not None:
                    write_tokenizer_files(tag_dir, self.tokenizer)
                if self.train_record is not None:  # marked, so that a tag whose manifest is lost is refused
                    progress = {k: client_state[k] for k in PROGRESS_KEYS if k in client_state}
                    record = {**self.train_record, **progress, CHECKSUMMED_KEY: True}
                    write_atomic(tag_dir / TRAIN_RECORD, json.dumps(record, indent=2) + "\n")
        except (OSError, RuntimeError) as err:
            self._save_failed(err, tag_dir)
        _barrier()  # every rank's shards and RNG are on disk before their checksums are taken and `latest` moves
        written = time.perf_counter()
        try:
            manifest = write_checksums(tag_dir, team())  # each rank hashes its share of the files
        except OSError as err:
            self._save_failed(err, tag_dir)
        hashed = time.perf_counter()
        if _rank() == 0:
            try:
                write_atomic(self.save_dir / LATEST, tag)
            except OSError as err:  # the disk filled after the checksums (another job, the TensorBoard writer)
                self._save_failed(err, tag_dir)
            self._prune(keep=tag)
            size = sum(entry["size"] for entry in manifest["files"].values())
            logger.info("saved checkpoint %s in %.2f s (%.1f MB; checksums %.2f s)", tag_dir,
                        time.perf_counter() - start, size / 1e6, hashed - written)
            warn_if_the_next_save_cannot_fit(self.save_dir, size)
        _barrier()
        return tag_dir

    def _clear_tag(self, tag: str) -> str | None:
        """Rank 0, before saving ``tag``: ``"saved"`` when ``latest`` already names that tag (a save at the
        iteration a run resumed from: the same state, kept as it is); else an existing complete folder of that tag
        (a continuation past ``latest`` that the run abandoned) is moved aside to ``TAG.superseded``, and a
        partial one (a killed save, whose leftover shards of other ranks the new save would keep and its
        checksums cover) is removed, with the universal conversions of any older folder of the tag."""
        tag_dir, latest = self.save_dir / tag, self.save_dir / LATEST
        if tag_dir.is_dir() and latest.is_file() and latest.read_text().strip() == tag:
            return "saved"
        if finished_save(tag_dir):  # a continuation past `latest` that this run abandoned
            aside = move_tag_aside(self.save_dir, tag, "superseded")
            logger.warning("kept the complete checkpoint %s of a continuation past %s (which `latest` names) as %s, "
                           "before saving %s again", tag_dir, read_latest(self.save_dir), aside.name, tag)
            return None
        for universal in self.save_dir.glob(f"{tag}{UNIVERSAL_SUFFIX}*"):
            shutil.rmtree(universal, ignore_errors=True)
        if tag_dir.exists():
            logger.warning("removing %s, left by a save that did not finish, before saving it again", tag_dir)
            shutil.rmtree(tag_dir)
        return None

    def _save_failed(self, err: OSError | RuntimeError, tag_dir: Path) -> NoReturn:
        """Remove the partial ``tag_dir`` of a failed write and raise :class:`CheckpointError` saying where
        ``latest`` stays; re-raise ``err`` when it is a RuntimeError other than a failed write
        (:data:`TORCH_WRITE_FAILURES`), a full disk or a folder that cannot be written (DeepSpeed only logs a
        failed ``makedirs``; torch then cannot open the file)."""
        full = _disk_full(err, self.save_dir)
        unwritable = not os.access(self.save_dir, os.W_OK)
        failed_write = isinstance(err, OSError) or any(text in str(err) for text in TORCH_WRITE_FAILURES)
        if not (full or unwritable or failed_write):
            raise err
        shutil.rmtree(tag_dir, ignore_errors=True)
        latest = read_latest(self.save_dir)
        what = ("disk full" if full else f"{self.save_dir} not writable" if unwritable
                else "write failed (a disk quota or file-size limit?)")
        removed = "" if tag_dir.exists() else f"removed the partial {tag_dir.name}, "
        raise CheckpointError(f"{what} while saving {tag_dir} ({err}); {removed}{self.save_dir / LATEST} still names "
                              f"{latest or 'nothing'}; free space or make it writable (or use another --save) and "
                              "resume") from err

    def _prune(self, keep: str) -> None:
        """Keep the newest ``keep_last`` complete tags up to ``keep`` (just saved) and remove every tag older than
        them. Only complete tags (with ``checksums.json``) count: a partial one left by a killed save (a save at
        the time limit, a lost node) is removed once older than the kept ones, never kept in place of one. Tags
        newer than ``keep``, left by a run resumed from an earlier tag, are neither counted nor removed."""
        iteration = int(TAG_RE.match(keep).group(1))
        tags = [(i, name) for i, name in tags_by_iteration(self.save_dir) if i <= iteration]
        complete = [i for i, _ in complete_tags(self.save_dir) if i <= iteration]
        if len(complete) <= self.keep_last:
            return
        oldest_kept = complete[-self.keep_last]
        for i, old in tags:
            if i < oldest_kept and old != keep:
                shutil.rmtree(self.save_dir / old, ignore_errors=True)
                for universal in self.save_dir.glob(f"{old}{UNIVERSAL_SUFFIX}*"):
                    shutil.rmtree(universal, ignore_errors=True)

    @staticmethod
    def load(engine: Any, load_dir: str | Path, config: ModelConfig,
             universal: Path | None = None) -> dict[str, Any] | None:
        """Restore engine, optimizer, scheduler and RNG from ``load_dir/latest``; return the client state.

        ``universal``: the universal form of that tag to read the weights and optimizer from instead (the engine
        was configured with ``load_universal``; see :func:`universal_tag`). Returns None when ``load_dir`` has
        no checkpoint yet (a fresh run with --load == --save).
        """
        tag = read_latest(load_dir)
        if tag is None:
            logger.info("no checkpoint in %s; starting from scratch", load_dir)
            return None
        if _rank() == 0:
            warn_if_latest_is_not_newest(load_dir, tag)
        tag_dir = Path(load_dir) / tag
        config_file = tag_dir / MODEL_CONFIG_FILE
        if not config_file.is_file():
            raise CheckpointError(f"{tag_dir} has no {MODEL_CONFIG_FILE}; it was not written by megamythos")
        saved = read_json_object(config_file, CheckpointError, CONFIG_FILE_REMEDY)
        check_model_fields(saved, config_file)
        check_model_config(saved, config, str(tag_dir))
        change = training_change(saved, config, str(tag_dir))
        if change and _rank() == 0:
            logger.warning("%s", change)
        groups = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
        try:  # the LR scheduler's state is per parameter group, and their number depends on the layout
            path, client_state = engine.load_checkpoint(str(universal.parent if universal else load_dir),
                                                        tag=universal.name if universal else tag,
                                                        load_lr_scheduler_states=universal is None)
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
            raise CheckpointError(f"could not load checkpoint {tag_dir}: {type(err).__name__}: {err}") from err
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {tag_dir}")
        if universal is not None:
            repair_universal_optimizer(engine.optimizer, groups)
            resume_schedule(engine.lr_scheduler, client_state["iteration"])
        rng_file = tag_dir / f"rng_rank{_rank()}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            logger.warning("%s missing (different world size?): RNG not restored", rng_file.name)
        logger.info("loaded checkpoint %s (iteration %s)", tag_dir, client_state.get("iteration"))
        return client_state
