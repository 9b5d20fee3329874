"""A trained model and its tokenizer for evaluation and generation, from a training checkpoint or an export.

A checkpoint tag directory (or a ``--save`` directory, which means its ``latest`` tag) and an export directory
both carry ``tokenizer.json`` (fingerprint, vocab size) and ``tokenizer.model``. A ``--tokenizer`` given on the
command line must have the recorded fingerprint; a model without a record needs ``--tokenizer`` and is loaded
with a warning. Export directories are read from JSON and safetensors only (nothing is unpickled).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megamythos.checkpoint.files import TRAIN_RECORD, TRAIN_RECORD_REMEDY, read_tokenizer_files
from megamythos.checkpoint.reader import (
    is_export_dir,
    load_checkpoint_weights,
    load_exported,
    model_from_state,
    read_newest,
)
from megamythos.data.metadata import check_same_vocabulary
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import UserError, read_json_object
from megamythos.model.config import ModelConfig
from megamythos.model.lm import MythosLM

logger = logging.getLogger(__name__)


class LoadError(UserError, ValueError):
    """The model, its tokenizer or an option of the evaluation/generation command line is unusable."""


@dataclass
class LoadedModel:
    """A model in eval mode with the tokenizer it was trained with.

    ``source`` is the checkpoint tag directory or the export directory; ``train_record`` the training run's
    ``train_args.json`` (None for exports and older checkpoints).
    """

    model: MythosLM
    tokenizer: Tokenizer
    tokenizer_record: dict[str, Any]
    source: Path
    train_record: dict[str, Any] | None

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def load_model(path: str | Path, tokenizer_path: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load the model at ``path`` (tag dir, ``--save`` dir or export dir) and its checked tokenizer."""
    path = Path(path)
    if not path.exists():
        raise LoadError(f"--load {path} does not exist; give a checkpoint directory (--save or one iter_* tag) or an "
                        "export directory")
    exported = is_export_dir(path)
    if exported:
        model = load_exported(path)
        source, train_record = path, None
        tokenizer, record = resolve_tokenizer(path, read_tokenizer_files(path), tokenizer_path, model.config)
    else:  # the weights, the records and the tokenizer of one tag, which its run's --keep-last may remove meanwhile
        source, model, train_record, (tokenizer, record) = read_newest(path, lambda tag_dir: read_tag(
            tag_dir, tokenizer_path))
    logger.info("loaded %s (%s) with tokenizer %s", source, "export" if exported else "checkpoint",
                tokenizer.model_path)
    return LoadedModel(model.to(device).eval(), tokenizer, record, source, train_record)


def read_tag(tag_dir: Path, tokenizer_path: str | None) -> tuple[Path, MythosLM, dict[str, Any] | None,
                                                                   tuple[Tokenizer, dict[str, Any]]]:
    """(tag_dir, its model, its train record or None, (tokenizer, its record)) of checkpoint tag ``tag_dir``."""
    with tempfile.TemporaryDirectory() as tmp:
        config, state = load_checkpoint_weights(tag_dir, Path(tmp))
    model = model_from_state(config, state, tag_dir)
    record_file = tag_dir / TRAIN_RECORD
    train_record = read_json_object(record_file, LoadError, TRAIN_RECORD_REMEDY) if record_file.is_file() else None
    return tag_dir, model, train_record, resolve_tokenizer(tag_dir, read_tokenizer_files(tag_dir), tokenizer_path,
                                                           model.config)


def resolve_tokenizer(source: Path, record: dict[str, Any] | None, override: str | None,
                      config: ModelConfig) -> tuple[Tokenizer, dict[str, Any]]:
    """(tokenizer, its record): the recorded one, or ``override`` when its fingerprint matches the record.

    Raises :class:`LoadError` without any tokenizer, ``DatasetMismatchError`` naming both fingerprints when
    ``override`` is not the recorded tokenizer, and :class:`LoadError` when its ids do not fit the model.
    """
    if override is None and record is None:
        raise LoadError(f"{source} carries no tokenizer (tokenizer.json); pass --tokenizer PATH with the .model "
                        "the model was trained with")
    tokenizer = Tokenizer(override or record["tokenizer_model"])
    found = {"vocab_size": tokenizer.vocab_size, "tokenizer_fingerprint": tokenizer.fingerprint}
    if record is None:
        logger.warning("%s records no tokenizer: %s cannot be checked against the model", source, tokenizer.model_path)
    check_same_vocabulary(f"model {source}", record, f"tokenizer {tokenizer.model_path}", found,
                          remedy=f"use the tokenizer the model was trained with ({source / 'tokenizer.model'}) "
                                 "or leave out --tokenizer")
    if tokenizer.vocab_size > config.vocab_size:
        raise LoadError(f"tokenizer {tokenizer.model_path} has {tokenizer.vocab_size} ids but the model in {source} "
                        f"only {config.vocab_size}; pass the tokenizer the model was trained with")
    return tokenizer, record or found

