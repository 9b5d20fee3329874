"""Read a training checkpoint tag or an export directory into a :class:`MythosLM`, and convert a tag to
DeepSpeed's universal checkpoint.

ZeRO (1-3) checkpoints, with or without AutoEP/AutoTP, go through DeepSpeed's universal checkpoint
(``deepspeed.checkpoint.ds_to_universal``), which merges ZeRO, TP and EP shards into full tensors;
``zero_to_fp32`` refuses AutoEP checkpoints. AutoEP's expert layout (``experts.w1/w2/w3``, ``router.gate``) is
mapped back to the model's (``experts.gate_up_proj/down_proj``, ``gate``), and the aux-loss-free expert biases,
which universal checkpoints do not carry, come from our client state. A ZeRO-0 checkpoint without TP already
holds the full module state (with AutoEP: its experts in DeepSpeed's per-expert files) and is read directly.
Export directories are read from JSON and safetensors only.
"""
from __future__ import annotations

import errno
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from megamythos.checkpoint.checksums import (
    CHECKSUMS_FILE,
    ChecksumError,
    incomplete,
    manifest_bytes,
    verify_checksums,
    verify_tag,
)
from megamythos.checkpoint.files import (
    LATEST,
    MODEL_CONFIG_FILE,
    TORCH_WRITE_FAILURES,
    ZERO_OPTIM_SHARDS,
    CheckpointError,
    disk_full,
    disk_size,
    read_latest,
    read_model_config,
    saved_layout,
    unconvertible_layout,
    warn_if_latest_is_not_newest,
)
from megamythos.errors import UserError, read_json_object
from megamythos.model.config import ModelConfig
from megamythos.model.lm import MythosLM
from megamythos.parallel import autoep_to_model_names

T = TypeVar("T")

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def resolve_tag_dir(path: str | Path) -> Path:
    """A checkpoint tag directory, or the newest complete one of a --save directory."""
    path = Path(path)
    if (path / MODEL_CONFIG_FILE).is_file():
        return path
    tag = read_latest(path) if path.is_dir() else None
    if tag is None:
        raise CheckpointError(f"{path} is neither a checkpoint (no {MODEL_CONFIG_FILE}) nor a directory with `latest`")
    warn_if_latest_is_not_newest(path, tag)
    return path / tag


# rank 0's model-states file: ``mp_rank_00_model_states.pt`` (ZeRO 0-2), ``zero_pp_rank_0_...`` (ZeRO-3); not the
# per-expert ``layer_L_expert_E_mp_rank_00_model_states.pt`` DeepSpeed writes beside it for AutoEP under ZeRO 0-2
CLIENT_STATE_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def _client_state(tag_dir: Path) -> dict:
    """Rank 0's model-states file: DeepSpeed's metadata plus our client state; a file of that name that holds
    no such state (no ``module`` entry) is refused by name."""
    files = [tag_dir / name for name in CLIENT_STATE_FILES if (tag_dir / name).is_file()]
    if not files:
        raise CheckpointError(f"{tag_dir} has no DeepSpeed model-states file")
    state = torch.load(files[0], map_location="cpu", weights_only=False)
    if not (isinstance(state, dict) and "module" in state):
        raise CheckpointError(f"{files[0]} is not a DeepSpeed model-states file (a {type(state).__name__} without "
                              f"'module'); point {tag_dir.parent / LATEST} at an earlier tag, or restore the tag from "
                              "another copy of the checkpoint")
    return state


# What stops a universal conversion writing (conversion_limit), and what to do about it
CONVERSION_LIMITS = {
    "disk quota exceeded": "free space there or have your quota raised, and run again",
    "disk full": "free space there and run again",
    "write failed (a disk quota or file-size limit?)": "free space there, or have your quota or file-size limit "
                                                       "raised, and run again",
}


def conversion_limit(error: str, where: Path) -> str | None:
    """The key of :data:`CONVERSION_LIMITS` that stopped a universal conversion writing into ``where``, from the
    text of its error (an exception of this process, or ``ds_to_universal``'s output): EDQUOT's message, a full
    disk (:func:`disk_full`), or torch's writer failing (:data:`TORCH_WRITE_FAILURES`: how it reports EDQUOT,
    ENOSPC and EFBIG); None for another failure."""
    if os.strerror(errno.EDQUOT) in error:
        return "disk quota exceeded"
    if disk_full(where):
        return "disk full"
    if any(text in error for text in TORCH_WRITE_FAILURES):
        return "write failed (a disk quota or file-size limit?)"
    return None


def conversion_disk_full(tag_dir: Path, where: Path, limit: str = "disk full") -> CheckpointError:
    """The one-line error of a universal conversion of ``tag_dir`` that ran into ``limit`` (a key of
    :data:`CONVERSION_LIMITS`) in ``where``; the system's temporary folder is named as such, with the variable that
    moves it."""
    place = (f"{where} (the system's temporary folder; TMPDIR=DIR puts the conversion in DIR)"
             if where == Path(tempfile.gettempdir()) else where)
    return CheckpointError(f"{limit} while converting {tag_dir} to a universal checkpoint in {place} (about the size "
                           f"of the checkpoint, {disk_size(manifest_bytes(tag_dir))}); {CONVERSION_LIMITS[limit]}")


def conversion_failure(tag_dir: Path, result: subprocess.CompletedProcess[str]) -> CheckpointError:
    """The one-line error of a ``ds_to_universal`` run on ``tag_dir`` that failed: the last line it wrote (its
    exception), what to do, and the file in the temporary directory that keeps its whole output (tracebacks)."""
    with tempfile.NamedTemporaryFile("w", prefix="ds_to_universal-", suffix=".log", delete=False) as log:
        log.write(f"{shlex.join(map(str, result.args))}\n{result.stdout}\n{result.stderr}")
    last = next((line.strip() for line in reversed(result.stderr.splitlines()) if line.strip()),
                f"exit code {result.returncode}")
    return CheckpointError(f"DeepSpeed's ds_to_universal could not convert {tag_dir} ({last}): restore the tag from "
                           f"a copy of the run, or use another checkpoint tag; its whole output is in {log.name}")


def convert_to_universal(tag_dir: Path, out: Path, where: Path | None = None) -> Path:
    """Write DeepSpeed's universal checkpoint of ``tag_dir`` (full tensors, any layout) into ``out``; a failed
    conversion raises the one line of :func:`conversion_disk_full` (:func:`conversion_limit` of its output; naming
    ``where``, default ``out``'s parent: the folder the user knows, where ``out`` is a temporary one inside it) or
    :func:`conversion_failure`."""
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", f"--input_folder={tag_dir}",
           f"--output_folder={out}", "--num_extract_workers", "1", "--num_merge_workers", "1",
           "--inject_missing_state"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 and (limit := conversion_limit(result.stderr, out.parent)):
        raise conversion_disk_full(tag_dir, where or out.parent, limit)
    if result.returncode != 0:
        raise conversion_failure(tag_dir, result)
    return out


def _universal_state_dict(tag_dir: Path, workdir: Path, where: Path) -> dict[str, torch.Tensor]:
    """Full fp32 parameters, named as in the training-time module, via ``ds_to_universal`` into the temporary
    ``workdir`` (a full disk is reported in ``where``, the folder that holds it)."""
    out = convert_to_universal(tag_dir, workdir / "universal", where)
    state = {}
    for param_dir in sorted((out / "zero").iterdir()):
        if not param_dir.is_dir():
            continue
        entry = torch.load(param_dir / "fp32.pt", map_location="cpu", weights_only=False)
        state[param_dir.name] = entry["param"] if isinstance(entry, dict) else entry
    return state


def _zero0_module_state(tag_dir: Path, module: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full state, as fp32, of a ZeRO-0 checkpoint without TP: rank 0's ``module`` (a bf16 run's bf16 weights,
    the ones its forward used; its fp32 master copies sit in the optimizer state, not read), and for an AutoEP run
    the experts DeepSpeed keeps out of it, one file per expert (``layer_L_expert_E_mp_rank_00_model_states.pt``
    holding ``NAME.w1.E`` [F, H], ...), stacked into ``NAME.w1`` [E, F, H] and named as the model names them."""
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for path in tag_dir.glob("layer_*_expert_*_mp_rank_00_model_states.pt"):
        for name, tensor in torch.load(path, map_location="cpu", weights_only=False).items():
            base, _, expert = name.rpartition(".")
            experts.setdefault(base, {})[int(expert)] = tensor
    state = {**module, **{base: torch.stack([by_id[e] for e in sorted(by_id)]) for base, by_id in experts.items()}}
    return {k: v.float() for k, v in autoep_to_model_names(state).items()}


def load_checkpoint_weights(tag_dir: Path, workdir: Path,
                            where: Path | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(model config, full state dict incl. expert biases) of one checkpoint tag, a ZeRO-sharded one converted in
    the temporary ``workdir`` (a full disk there is reported in ``where``, default ``workdir``'s parent: the folder
    that outlives it); a file that differs from the tag's checksums is refused by name (:class:`CheckpointError`,
    see :func:`verify_tag`) before anything is unpickled."""
    verify_tag(tag_dir)
    config = read_model_config(tag_dir / MODEL_CONFIG_FILE)
    sharded = any(tag_dir.glob(ZERO_OPTIM_SHARDS))
    layout, stage = saved_layout(tag_dir)
    if sharded and (why := unconvertible_layout(layout, stage)):
        raise CheckpointError(f"{tag_dir} cannot be read as a whole model: {why}; it resumes only on the layout "
                              "that saved it")
    if not sharded and stage:  # ZeRO 1-3 writes them; a tag without checksums has no list that names them
        raise CheckpointError(f"{tag_dir} lacks its ZeRO optimizer states ({ZERO_OPTIM_SHARDS}: its run trained "
                              f"with ZeRO-{stage}), which hold its full-precision weights: the tag is incomplete (a "
                              "copy cut off, or files removed); restore it from a copy of the run, or use another "
                              "checkpoint tag")
    client = _client_state(tag_dir)
    if sharded:
        state = autoep_to_model_names(_universal_state_dict(tag_dir, workdir, where or workdir.parent))
    elif len(list(tag_dir.glob("mp_rank_*_model_states.pt"))) == 1:
        state = _zero0_module_state(tag_dir, client["module"])
    else:
        raise CheckpointError(f"{tag_dir} is a ZeRO-0 tensor-parallel checkpoint; train with ZeRO >= 1 to export it")
    for module_name, bias in client.get("expert_bias", {}).items():
        state[f"{module_name}.gate.e_score_correction_bias"] = bias.float()
    return config, state


def model_from_state(config: ModelConfig, state: dict[str, torch.Tensor], where: Path) -> MythosLM:
    """:class:`MythosLM` holding ``state`` (as :func:`load_checkpoint_weights` returns it) of checkpoint ``where``."""
    return load_state(MythosLM(config), state, where)


def load_state(model: MythosLM, state: dict[str, torch.Tensor], where: Path) -> MythosLM:
    """``model`` with ``state`` (as :func:`load_checkpoint_weights` returns it) of checkpoint ``where`` loaded;
    refused by name when a weight is missing or left over."""
    config = model.config
    targets = model.state_dict()
    for name, tensor in state.items():  # ZeRO-3 universal tensors are flat
        if name in targets and tensor.shape != targets[name].shape and tensor.numel() == targets[name].numel():
            state[name] = tensor.view(targets[name].shape)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_embeddings else set()  # shares tok_embeddings.weight
    missing = sorted(set(missing) - tied)
    if missing or unexpected:
        raise CheckpointError(f"{where} does not match MythosLM({config.to_dict()}): missing {missing}, "
                          f"unexpected {sorted(unexpected)}")
    return model


# Reads of the newest tag that a running trainer's --keep-last may remove meanwhile, before giving up.
PRUNED_READS = 3


def _removed_while_read(tag_dir: Path) -> bool:
    """Whether ``tag_dir`` is being removed by its run's ``--keep-last``: ``latest`` names another tag (a trainer
    removes only older ones) and the tag has lost its config, its manifest or a file the manifest lists."""
    return (read_latest(tag_dir.parent) != tag_dir.name
            and (not (tag_dir / MODEL_CONFIG_FILE).is_file() or incomplete(tag_dir)))


def read_newest(path: str | Path, read: Callable[[Path], T]) -> T:
    """``read(tag_dir)`` of ``path``: one checkpoint tag, or the newest tag of a ``--save`` directory. A running
    trainer's ``--keep-last`` may remove the newest tag while it is read (its weights, its tokenizer or its
    records): the newest one is then read again (:data:`PRUNED_READS` reads in all), also when ``read`` returned
    (a file it looked for may have gone meanwhile); a tag named by the caller that is removed meanwhile is one
    :class:`CheckpointError`, as is a run that keeps removing them."""
    path = Path(path)
    for _ in range(PRUNED_READS):
        tag_dir = resolve_tag_dir(path)
        try:
            result = read(tag_dir)
        except (OSError, UserError):  # a file gone, a config gone, DeepSpeed's conversion failing on a shard gone
            if not _removed_while_read(tag_dir):
                raise
        else:
            if not _removed_while_read(tag_dir):
                return result
        if tag_dir == path:
            raise CheckpointError(f"{tag_dir} was removed while it was read (by its run's --keep-last?); pass "
                                  f"a tag the run keeps, or the run directory {tag_dir.parent} to read its "
                                  "newest") from None
        logger.warning("%s was removed while it was read (its run's --keep-last); reading the newest tag again",
                       tag_dir)
    raise CheckpointError(f"the newest tag of {path} was removed while it was read, {PRUNED_READS} times (a running "
                          "trainer saving often with --keep-last); read it once the run has stopped, or copy a tag "
                          "first")


def read_checkpoint(path: str | Path, workdir: Path) -> tuple[Path, ModelConfig, dict[str, torch.Tensor]]:
    """(tag directory, model config, full state dict) of ``path`` (:func:`read_newest`,
    :func:`load_checkpoint_weights`)."""
    return read_newest(path, lambda tag_dir: (tag_dir, *load_checkpoint_weights(tag_dir, workdir)))


def checkpoint_model(tag_dir: Path, out_dir: Path) -> MythosLM:
    """The full model of checkpoint tag ``tag_dir`` (:func:`load_checkpoint_weights`; scratch files of the
    universal conversion go under ``out_dir``, an export's staging folder, so a full disk is reported in its
    parent: the folder of the export's OUT)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        config, state = load_checkpoint_weights(tag_dir, Path(tmp), out_dir.parent)
    return model_from_state(config, state, tag_dir)


def is_export_dir(path: str | Path) -> bool:
    """Whether ``path`` looks like an export directory (it has ``config.json``)."""
    return (Path(path) / CONFIG_FILE).is_file()


def pretrained_weights(path: Path) -> tuple[Path, ModelConfig, dict[str, torch.Tensor]]:
    """(the directory read, its model config, its full state dict incl. expert biases) of ``path``: a checkpoint
    tag, the newest tag of a --save directory, or an export; verified against its checksums first."""
    if is_export_dir(path):
        model = load_exported(path)
        return path, model.config, model.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        return read_checkpoint(path, Path(tmp))


def load_exported(out_dir: str | Path) -> MythosLM:
    """:class:`MythosLM` from an export directory: JSON and safetensors only, nothing is unpickled. Its files are
    verified against its ``checksums.json`` first (an export without one is read with a warning)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    out_dir = Path(out_dir)
    missing = [str(out_dir / name) for name in (CONFIG_FILE, MODEL_FILE) if not (out_dir / name).is_file()]
    if missing:
        raise CheckpointError(f"{', '.join(missing)} not found; export a checkpoint with "
                          f"`python -m megamythos.checkpoint.export CHECKPOINT {out_dir}`")
    try:
        if not verify_checksums(out_dir):
            logger.warning("%s has no %s (exported before exports carried checksums): its files are not verified",
                           out_dir, CHECKSUMS_FILE)
    except ChecksumError as err:
        raise CheckpointError(f"{err}; export the checkpoint again (--overwrite)") from err
    if "auto_map" in read_json_object(out_dir / CONFIG_FILE, CheckpointError, "export the checkpoint again"):
        raise CheckpointError(f"{out_dir} is a Hugging Face export (--format hf): load it with transformers "
                              "(docs/inference.md), or export the checkpoint without --format hf for --load")
    model = MythosLM(read_model_config(out_dir / CONFIG_FILE))
    try:  # an export without checksums whose weights are not a safetensors file, or not of its config's model
        load_model(model, str(out_dir / MODEL_FILE))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{out_dir / MODEL_FILE} does not hold the weights of the model {out_dir / CONFIG_FILE} "
                              f"describes ({textwrap.shorten(str(err), 300)}); export the checkpoint again "
                              "(--overwrite)") from err
    return model
