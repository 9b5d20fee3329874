"""The files of a checkpoint directory, readable without DeepSpeed: names, the ``latest`` pointer, the tokenizer.

Layout of ``--save DIR``::

    DIR/iter_0000100/          DeepSpeed's files for that tag (ZeRO shards, model states, client state)
    DIR/iter_0000100/rng_rank{r}.pt   python/numpy/torch RNG of every rank (client_state is only saved once)
    DIR/iter_0000100/model_config.json
    DIR/iter_0000100/tokenizer.json, tokenizer.model   the tokenizer the run trained with (its record and a copy)
    DIR/iter_0000100/train_args.json   the run's arguments, data path, iterations and global batch size
    DIR/iter_0000100/checksums.json    size and sha256 of every file above, written once they are all complete
                               (:mod:`megamythos.checkpoint.checksums`); every reader verifies them
    DIR/latest                 the tag of the newest COMPLETE checkpoint, replaced atomically after all ranks
                               finished writing; older tags beyond ``keep_last`` are deleted only after that.
    DIR/iter_0000100_universal_{model|autoep}/   DeepSpeed's universal form of that tag, with the MoE tensors
                               named as the model (ep 1) or AutoEP (ep > 1) names them; made when a run resumes
                               the tag on another layout (world size, --tp, --ep); pruned with its tag. It has
                               its own checksums.json; one that does not verify is converted again.
    DIR/writer.lock            "host pid dev:inode realpath" of the run writing DIR and of DIR (one writer per
                               directory; a copy of DIR carries it: taken over); removed at its end.

:mod:`megamythos.training.checkpointing` writes these files; evaluation, generation and export read them.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from megamythos.data.atomic import atomic_open, remove_stale_temps
from megamythos.data.manifest import CHECKSUMS_FILE
from megamythos.data.metadata import read_tokenizer_record, write_tokenizer_record
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import UserError, read_json_object
from megamythos.model.config import CONFIG_FILE_REMEDY, ConfigError, ModelConfig

LATEST = "latest"
TAG_RE = re.compile(r"^iter_(\d{7,})$")
ASIDE_RE = re.compile(r"^iter_\d{7,}\.(diverged|superseded)\d*$")  # move_tag_aside's names
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_RECORD = "tokenizer.json"
TOKENIZER_COPY = "tokenizer.model"
TRAIN_RECORD = "train_args.json"
# what to do about a broken train_args.json in a checkpoint tag (it records the run's data and settings)
TRAIN_RECORD_REMEDY = "restore it from a copy of the run, or use another checkpoint tag"
WRITER_LOCK = "writer.lock"
MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"  # Megatron-LM's `latest`; its tags are named iter_NNNNNNN too
DEEPSPEED_TAG_RE = re.compile(r"^global_step\d+$")  # a plain DeepSpeed run's tags, which its `latest` names
# ZeRO-1/2/3's optimizer shards (``zero_pp_rank_*``, ``bf16_zero_pp_rank_*`` in bf16); ZeRO-0 keeps its optimizer in
# the model states, or for AutoEP in ``expp_rank_*_mp_rank_*_optim_states.pt`` (the same name in any precision)
ZERO_OPTIM_SHARDS = "*zero_pp_rank_*optim_states.pt"
UNIVERSAL_SUFFIX = "_universal"
# ModelConfig fields a version removed: field -> (what became of it, the day it went); a checkpoint holding one is older
REMOVED_MODEL_FIELDS = {name: ("Graves ACT, replaced by per-token early exit", "2026-12-01")
                        for name in ("act", "act_threshold")}

logger = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or belongs to a different model."""


def tag_for(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def tags_by_iteration(directory: str | Path) -> list[tuple[int, str]]:
    """(iteration, name) of the ``iter_*`` folders of ``directory``, oldest first ([] when it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p.name) for p in directory.iterdir() if p.is_dir() and (m := TAG_RE.match(p.name)))


def complete_tags(save_dir: str | Path) -> list[tuple[int, str]]:
    """(iteration, name) of the ``iter_*`` folders of ``save_dir`` that a save completed (they hold
    ``checksums.json``, written before ``latest`` moves), oldest first; partial tags of a killed save are left out."""
    return [(i, name) for i, name in tags_by_iteration(save_dir) if Path(save_dir, name, CHECKSUMS_FILE).is_file()]


def newest_complete_tag(save_dir: str | Path) -> str | None:
    """The newest of :func:`complete_tags`, or None."""
    complete = complete_tags(save_dir)
    return complete[-1][1] if complete else None


def warn_if_latest_is_not_newest(directory: str | Path, tag: str) -> None:
    """Say so when ``directory`` holds complete checkpoints newer than ``tag``, the one its ``latest`` names: a
    ``latest`` pointed back on purpose, or changed by a stray write (one flipped bit turns iter_0000300 into
    iter_0000200), reads the older weights either way, and a resume moves the newer tags aside as it saves."""
    newer = [name for i, name in complete_tags(directory) if i > int(TAG_RE.match(tag).group(1))]
    if newer:
        logger.warning("%s names %s, but %s holds %d newer complete checkpoint(s), the newest %s: reading %s as "
                       "`latest` says (a resume moves the newer ones aside, as TAG.superseded, when it saves their "
                       "iteration); if `latest` was not changed on purpose, write %s into it", Path(directory, LATEST),
                       tag, directory, len(newer), newer[-1], tag, newer[-1])


def move_tag_aside(save_dir: Path, tag: str, label: str) -> Path:
    """Rename checkpoint ``tag`` of ``save_dir`` to ``TAG.label`` (``TAG.labelN``, the first N free), out of the
    tags a run counts, resumes or prunes, and remove the universal conversions of it; returns the new path."""
    aside, number = save_dir / f"{tag}.{label}", 1
    while aside.exists():
        aside, number = save_dir / f"{tag}.{label}{number}", number + 1
    os.rename(save_dir / tag, aside)
    for universal in save_dir.glob(f"{tag}{UNIVERSAL_SUFFIX}*"):
        shutil.rmtree(universal, ignore_errors=True)
    return aside


def read_latest(directory: str | Path) -> str | None:
    """Tag named by ``DIR/latest``, or None when the directory holds no complete checkpoint."""
    path = Path(directory) / LATEST
    if not path.is_file():
        return None
    try:
        tag = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:  # overwritten with binary data, unreadable
        raise CheckpointError(f"{path} cannot be read ({err}); write the tag of the checkpoint to resume into it "
                              "(iter_NNNNNNN), or remove it to start afresh") from err
    if DEEPSPEED_TAG_RE.match(tag):  # another framework's run: removing its `latest` would damage it
        raise CheckpointError(f"{path} holds {tag!r}: {directory} is a plain DeepSpeed run (its tags are named "
                              "global_stepN), which megamythos cannot resume or read; leave it to that run and use "
                              "another --save (or --load a megamythos run)")
    if not TAG_RE.match(tag):
        raise CheckpointError(f"{path} holds {tag!r}, not a checkpoint tag (iter_NNNNNNN); write the tag of the "
                              "checkpoint to resume into it, or remove it to start afresh")
    if not (Path(directory) / tag).is_dir():
        others = tags_by_iteration(directory)
        remedy = (f"the newest tag there is {others[-1][1]}: write it into {path} to use it" if others
                  else "no tag is left there: remove it to start afresh")
        raise CheckpointError(f"{path} names {tag!r}, which does not exist in {directory} (deleted?); {remedy}")
    return tag


def check_tag_files(tag_dir: Path) -> None:
    """Refuse a tag whose torch files are truncated or overwritten (each must be a complete zip archive)."""
    for path in sorted(tag_dir.glob("*.pt")):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path} is corrupt (not a complete torch file); point {tag_dir.parent / LATEST} "
                                  "at an earlier tag, or resume from another copy of the checkpoint")


def check_model_fields(saved: dict[str, Any], path: Path) -> None:
    """Refuse the saved model config ``saved`` (``path``: a tag's ``model_config.json``, an export's
    ``config.json``) where it holds fields this version's :class:`ModelConfig` lacks: another version of megamythos
    wrote it (the ACT era's ``act``, ``act_threshold``: :data:`REMOVED_MODEL_FIELDS`), whose model this one cannot
    build. A field it lacks is one added since, read as its default (the model it had)."""
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(ModelConfig)})
    if not unknown:
        return
    if all(k in REMOVED_MODEL_FIELDS for k in unknown):
        changes = sorted({REMOVED_MODEL_FIELDS[k] for k in unknown}, key=lambda change: change[1])
        raise CheckpointError(f"{path} was written by an older version of megamythos, whose model had the field(s) "
                              f"{unknown} ({'; '.join(f'{what} on {day}' for what, day in changes)}): this version "
                              "cannot read it; read it with the megamythos checkout that wrote it (one from before "
                              f"{changes[0][1]})")
    raise CheckpointError(f"{path} was written by another version of megamythos, whose model has the field(s) "
                          f"{unknown} that this version's lacks: this version cannot read it; read it with the "
                          "megamythos checkout that wrote it")


def read_model_config(path: Path) -> ModelConfig:
    """The model of a tag's ``model_config.json`` or an export's ``config.json``, checked by
    :func:`check_model_fields` (a broken or missing file: :class:`ConfigError` naming it, as
    :meth:`ModelConfig.from_json`)."""
    if path.is_file():
        check_model_fields(read_json_object(path, ConfigError, CONFIG_FILE_REMEDY), path)
    return ModelConfig.from_json(path)


def read_train_record(tag_dir: Path) -> dict[str, Any]:
    """The ``train_args.json`` of ``tag_dir`` ({} when the tag has none); a broken one raises
    :class:`CheckpointError` naming it."""
    path = tag_dir / TRAIN_RECORD
    return read_json_object(path, CheckpointError, TRAIN_RECORD_REMEDY) if path.is_file() else {}


LAYOUT_KEYS = ("world_size", "tp", "ep")  # of a train record's "layout"
# DeepSpeed's model-states files of a ZeRO-3 checkpoint, one per data-parallel rank (ZeRO 0-2: mp_rank_MM_... only)
ZERO3_MODEL_STATES = "zero_pp_rank_*_mp_rank_*_model_states.pt"


def saved_layout(tag_dir: Path) -> tuple[dict[str, int] | None, int | None]:
    """(``{"world_size", "tp", "ep"}``, ZeRO stage) of the run that wrote ``tag_dir``; None for what it did not
    record. Train records written before 2026-12-01 lack the stage: ZeRO-3 is then read from the tag's files
    (:data:`ZERO3_MODEL_STATES`), stages 0-2 stay None. A layout that is not an object of those three positive
    whole numbers, or a stage other than 0-3 (a record edited by hand or damaged), raises :class:`CheckpointError`
    naming the record."""
    record = read_train_record(tag_dir)
    layout, stage = record.get("layout"), record.get("zero_stage")
    if "zero_stage" not in record and any(tag_dir.glob(ZERO3_MODEL_STATES)):
        stage = 3
    if not (layout is None or isinstance(layout, dict) and all(
            type(layout.get(key)) is int and layout[key] >= 1 for key in LAYOUT_KEYS)):
        raise CheckpointError(f"{tag_dir / TRAIN_RECORD} holds the layout {layout!r}, not an object of "
                              f"{', '.join(LAYOUT_KEYS)} (positive whole numbers); {TRAIN_RECORD_REMEDY}")
    if not (stage is None or type(stage) is int and 0 <= stage <= 3):
        raise CheckpointError(f"{tag_dir / TRAIN_RECORD} holds the zero_stage {stage!r}, not 0, 1, 2 or 3; "
                              f"{TRAIN_RECORD_REMEDY}")
    return layout, stage


def unconvertible_layout(layout: dict[str, int] | None, zero_stage: int | None) -> str | None:
    """Why DeepSpeed's ``ds_to_universal`` (0.19) cannot convert a checkpoint of ``layout`` (``{"world_size", "tp",
    "ep"}``) and ZeRO stage, or None: under ZeRO-3 with AutoTP and AutoEP folded onto the same ranks it cannot tell
    the expert files of the tensor-parallel ranks apart (``NotImplementedError``). Such a checkpoint resumes only on
    its own layout; exporting, evaluating, generating from and fine-tuning from it need the conversion."""
    if layout and zero_stage == 3 and layout.get("tp", 1) > 1 and layout.get("ep", 1) > 1:
        return (f"DeepSpeed's ds_to_universal cannot convert a ZeRO-3 checkpoint of --tp {layout['tp']} with --ep "
                f"{layout['ep']} (AutoTP and AutoEP folded)")
    return None


def disk_size(n: float) -> str:
    """``n`` bytes in TB, GB or MB, to three significant digits (``67.1 MB``: a tiny model's checkpoint is not
    ``0.1 GB`` beside ``0.1 GB`` free)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1e6:.3g} MB"


# torch's serializer reports a failed write (a quota, a file-size limit, a full disk) as a RuntimeError with these
TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed", "basic_ios::clear")


def disk_full(directory: Path) -> bool:
    """Whether ``directory``'s file system has less than 1 MiB free (what a write that failed there ran into; torch
    reports ENOSPC only as ``basic_ios::clear`` or ``unexpected pos``)."""
    try:
        return shutil.disk_usage(directory).free < (1 << 20)
    except OSError:
        return False


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that readers see either the old or the new content, never a partial file, through
    :func:`~megamythos.data.atomic.atomic_open` (its temporary ``PATH.tmp.<host>.<pid>`` is removed if the write
    fails), synced to disk before the rename; one left by a process killed during an earlier write to ``path`` is
    removed first."""
    remove_stale_temps([path])
    with atomic_open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_tokenizer_files(directory: Path, tokenizer: Tokenizer) -> dict[str, Any]:
    """``directory/tokenizer.model`` (a copy) and ``directory/tokenizer.json`` (its fingerprint and vocab size)."""
    return write_tokenizer_record(directory / TOKENIZER_RECORD, directory / TOKENIZER_COPY, tokenizer)


def read_tokenizer_files(directory: Path) -> dict[str, Any] | None:
    """The record :func:`write_tokenizer_files` wrote in ``directory`` (None if there is none)."""
    return read_tokenizer_record(directory / TOKENIZER_RECORD)
