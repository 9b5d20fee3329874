"""Checkpoints: DeepSpeed save/load plus our client state, keep-last-K, and an atomic ``latest`` pointer.

The directory layout is described in :mod:`megamythos.checkpoint_files`, which also reads it without DeepSpeed.
A run killed during a save resumes from the previous complete checkpoint: ``latest`` moves only after every rank
finished writing, and older tags are pruned only after that.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megamythos.checkpoint_files import (LATEST, MODEL_CONFIG_FILE, TAG_RE, TRAIN_RECORD, CheckpointError,
                                         read_latest, tag_for, write_atomic, write_tokenizer_files)
from megamythos.config import ModelConfig
from megamythos.tokenizer import Tokenizer

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


def check_model_config(saved: dict[str, Any], current: ModelConfig, where: str) -> None:
    """Refuse a checkpoint whose model differs in any field that shapes or changes the network."""
    cur = current.to_dict()
    ignored = {"extra", "checkpoint_loops", "loop_checkpoint_segment", "mean_loops", "max_loops", "loop_sigma",
               "backprop_loops"}
    diffs = {k: (saved.get(k), cur[k]) for k in cur if k not in ignored and saved.get(k) != cur[k]}
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise CheckpointError(f"checkpoint {where} was written for a different model ({detail}); "
                              "use the same --preset/--override as the run that wrote it")


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
        engine.save_checkpoint(str(self.save_dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), tag_dir / f"rng_rank{_rank()}.pt")
        if _rank() == 0:
            config.to_json(tag_dir / MODEL_CONFIG_FILE)
            if self.tokenizer is not None:
                write_tokenizer_files(tag_dir, self.tokenizer)
            if self.train_record is not None:
                write_atomic(tag_dir / TRAIN_RECORD, json.dumps(self.train_record, indent=2) + "\n")
        _barrier()  # every rank's shards and RNG are on disk before `latest` moves
        if _rank() == 0:
            write_atomic(self.save_dir / LATEST, tag)
            self._prune(keep=tag)
            logger.info("saved checkpoint %s", tag_dir)
        _barrier()
        return tag_dir

    def _prune(self, keep: str) -> None:
        tags = sorted(p.name for p in self.save_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name))
        for old in tags[:-self.keep_last]:
            if old != keep:
                shutil.rmtree(self.save_dir / old, ignore_errors=True)

    @staticmethod
    def load(engine: Any, load_dir: str | Path, config: ModelConfig) -> dict[str, Any] | None:
        """Restore engine, optimizer, scheduler and RNG from ``load_dir/latest``; return the client state.

        Returns None when ``load_dir`` has no checkpoint yet (a fresh run with --load == --save).
        """
        tag = read_latest(load_dir)
        if tag is None:
            logger.info("no checkpoint in %s; starting from scratch", load_dir)
            return None
        tag_dir = Path(load_dir) / tag
        config_file = tag_dir / MODEL_CONFIG_FILE
        if not config_file.is_file():
            raise CheckpointError(f"{tag_dir} has no {MODEL_CONFIG_FILE}; it was not written by megamythos")
        check_model_config(json.loads(config_file.read_text()), config, str(tag_dir))
        path, client_state = engine.load_checkpoint(str(load_dir), tag=tag)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {tag_dir}")
        rng_file = tag_dir / f"rng_rank{_rank()}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            logger.warning("%s missing (different world size?): RNG not restored", rng_file.name)
        logger.info("loaded checkpoint %s (iteration %s)", tag_dir, client_state.get("iteration"))
        return client_state
