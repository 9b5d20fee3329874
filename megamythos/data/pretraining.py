"""The samples of a pretraining run, rebuilt from its recorded settings: checked datasets, splits, micro-batches.

The trainer draws its training and validation samples through these functions; evaluation calls the same ones
with the settings a checkpoint recorded (``train_args.json``), so it reads exactly the validation batches the run
read, without importing the trainer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megamythos.data.atomic import atomic_open
from megamythos.data.gpt_dataset import build_train_valid_test_datasets, index_cache_dir, parse_data_path
from megamythos.data.index_cache import description_key
from megamythos.data.indexed_dataset import IndexedDataset
from megamythos.data.metadata import check_record_counts, check_same_vocabulary, read_dataset_metadata
from megamythos.data.sampler import PretrainingSampler
from megamythos.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_SPLIT = "969,30,1"
DEFAULT_SEED = 1234
OUT_OF_VOCABULARY_REMEDY = ("use data tokenised with the model's tokenizer (data_prep/preprocess_data.py), or rebuild "
                            "the dataset if its .bin is corrupt")


class DataError(UserError, ValueError):
    """The dataset or tokenizer is missing or does not fit the model."""


@dataclass(frozen=True)
class DataRecipe:
    """The settings of a run that decide which sample it reads when: the train/valid/test ``split`` weights,
    ``seq_length`` tokens per sample (+1 for the shifted labels), the shuffling ``seed``, how many validation
    samples the evaluation schedule needs (``eval_interval``, ``eval_iters``) and where index files are cached."""

    split: str = DEFAULT_SPLIT
    seq_length: int = 256
    seed: int = DEFAULT_SEED
    eval_interval: int = 0  # 0 -> no evaluation during training
    eval_iters: int = 8  # global batches per validation: the default run's 8 x 4 x 128 tokens = evaluate's default
    data_cache_dir: str | None = None

    @classmethod
    def from_record(cls, recorded: dict[str, Any]) -> DataRecipe:
        """The recipe in a run's recorded arguments (``train_args.json`` "args"); other keys are ignored."""
        return cls(**{f.name: recorded[f.name] for f in dataclasses.fields(cls) if f.name in recorded})


@dataclass
class DataSetup:
    """Checked dataset prefixes (optionally weight/prefix pairs) and the tokenizer they were built with (None
    when no dataset carries a metadata record)."""

    data_path: list[str]
    tokenizer_model: str | None
    tokenizer_fingerprint: str | None
    shapes: dict[str, dict[str, int]] = field(default_factory=dict)  # realpath(prefix) -> IndexedDataset.shape()


def scan_dataset(dataset: IndexedDataset, cache_dir: str | None) -> tuple[dict[str, int], tuple[int, int] | None]:
    """``dataset``'s shape (:meth:`IndexedDataset.shape`) and token-id range (:meth:`IndexedDataset.token_range`),
    after checking every pointer of its index (:meth:`IndexedDataset.validate`).

    The scan reads every byte of the ``.bin`` and ``.idx`` (2 TB for a 1T-token corpus), so its answer is kept in
    the index cache (``cache_dir``, default ``index-cache/`` beside the dataset) as ``{key}-scan.json``, keyed by the
    files' real path, size, inode and modification time: a later start, another rank or ``evaluate`` reads it
    instead of the files. A dataset rebuilt or changed in place gets a new key and is scanned again. A cache that
    cannot be written costs only the next start's scan.
    """
    prefix = dataset.path_prefix
    description: dict[str, Any] = {"class": "DatasetScan", "path": os.path.realpath(f"{prefix}.bin")}
    for ext in ("bin", "idx"):
        stat = os.stat(f"{prefix}.{ext}")
        description.update({f"{ext}_bytes": stat.st_size, f"{ext}_inode": stat.st_ino,
                            f"{ext}_mtime_ns": stat.st_mtime_ns})
    path = os.path.join(index_cache_dir(prefix, cache_dir), f"{description_key(description)}-scan.json")
    try:
        with open(path) as handle:
            cached = json.load(handle)
        if cached["description"] == description:
            token_range = cached["token_range"]
            return {key: int(value) for key, value in cached["shape"].items()}, (
                (int(token_range[0]), int(token_range[1])) if token_range else None)
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # none yet, or damaged: scanned again
        pass
    dataset.validate()
    shape, token_range = dataset.shape(), dataset.token_range()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_open(path, "w") as handle:
            json.dump({"description": description, "shape": shape, "token_range": token_range}, handle, indent=2)
    except OSError as err:
        logger.info("cannot cache the scan of %s in %s (%s); the next start scans it again", prefix,
                    os.path.dirname(path), err)
    return shape, token_range


def token_bound(record: dict[str, Any] | None, vocab_size: int) -> int:
    """The ids a dataset may hold: those of the tokenizer its ``record`` names (at most the model's ``vocab_size``,
    which :func:`resolve_data` checks first), else the model's. An id past the tokenizer's, in a padded
    vocabulary, no tokenizer made: the ``.bin`` is corrupt or was rebuilt with another tokenizer."""
    return min(int(record["vocab_size"]), vocab_size) if record is not None else vocab_size


def resolve_data(data_path: list[str], vocab_size: int, cache_dir: str | None = None) -> DataSetup:
    """Check that every dataset of ``data_path`` exists, was tokenised with one tokenizer of at most ``vocab_size``
    ids (fewer: a padded vocabulary, as Megatron's ``--make-vocab-size-divisible-by``) and holds only token ids
    of that tokenizer (:func:`token_bound`: below ``vocab_size`` for a dataset without a record); the scans of the
    data are cached in ``cache_dir`` (:func:`scan_dataset`).

    Raises :class:`DataError` for a missing dataset or a vocabulary that differs from the model's,
    ``DatasetMismatchError`` for datasets built with different tokenizers, and ``IndexedDatasetError`` for a
    corrupt dataset (every pointer checked against the sizes), a record that counts other documents or tokens
    than the data holds (tokens rebuilt beside an old record), or a token id outside the vocabulary (one
    vectorised pass over each ``.bin``), before any sample is read. A dataset without a metadata record (made by
    Megatron's tools) is accepted with a warning if its token ids fit.
    """
    prefixes, _ = parse_data_path(data_path)
    records = {}
    shapes: dict[str, dict[str, int]] = {}
    for prefix in prefixes:
        missing = [f"{prefix}{ext}" for ext in (".bin", ".idx") if not Path(f"{prefix}{ext}").is_file()]
        if missing:
            stem = prefix.removesuffix(".bin").removesuffix(".idx")
            if stem != prefix and Path(f"{stem}.bin").is_file():
                hint = f"; pass the prefix without .bin/.idx: {stem}"
            elif Path(f"{prefix}_text_document.bin").is_file():
                hint = (f"; did you mean {prefix}_text_document? (preprocess_data.py --output-prefix {prefix} "
                        f"writes {prefix}_text_document.bin/.idx)")
            else:
                hint = ""
            raise DataError(f"dataset {prefix!r} not found: missing {', '.join(missing)}{hint}")
        meta = read_dataset_metadata(prefix)
        if meta is None:
            logger.warning("dataset %s has no metadata record: its tokenizer cannot be checked against the model",
                           prefix)
        elif int(meta["vocab_size"]) > vocab_size:
            raise DataError(f"dataset {prefix!r} was tokenized with a {meta['vocab_size']}-token vocabulary but the "
                            f"model has vocab_size={vocab_size}; pass --override vocab_size="
                            f"{meta['vocab_size']} (or more: a padded vocabulary) or use a dataset built with the "
                            "model's tokenizer")
        elif int(meta["vocab_size"]) < vocab_size:
            logger.info("dataset %s: a %s-token vocabulary in a model of vocab_size=%d, padded as Megatron's "
                        "--make-vocab-size-divisible-by pads (ids from %s on are never read)", prefix,
                        meta["vocab_size"], vocab_size, meta["vocab_size"])
        for other, record in records.items():
            check_same_vocabulary(other, record, prefix, meta)
        records[prefix] = meta
        dataset = IndexedDataset(prefix)
        shape, token_range = scan_dataset(dataset, cache_dir)
        shapes[os.path.realpath(prefix)] = shape
        check_record_counts(prefix, meta, shape)
        dataset.check_token_ids(token_bound(meta, vocab_size), OUT_OF_VOCABULARY_REMEDY, token_range)
    known = [r for r in records.values() if r is not None]
    return DataSetup(list(data_path), known[0]["tokenizer_model"] if known else None,
                     known[0]["tokenizer_fingerprint"] if known else None, shapes)


def data_change(recorded: dict[str, dict[str, int]], current: dict[str, dict[str, int]], saved: str) -> str | None:
    """``the data changed since SAVED was saved: PREFIX (documents a -> b, ...)`` for the datasets in both records
    whose shape differs, or None when none does."""
    changes = []
    for prefix in sorted(recorded.keys() & current.keys()):
        before, now = recorded[prefix], current[prefix]
        if before != now:
            diffs = ", ".join(f"{key} {before.get(key)} -> {value}" for key, value in now.items()
                              if before.get(key) != value)
            changes.append(f"{prefix} ({diffs})")
    return f"the data changed since {saved} was saved: {'; '.join(changes)}" if changes else None


def recipe_change(recorded_args: dict[str, Any], recorded_path: list[str] | None, recipe: DataRecipe,
                  data_path: list[str], saved: str) -> str | None:
    """``the data settings differ from SAVED's: seed 1234 -> 7, ...`` for the settings that decide the sample
    order (the datasets and weights, ``split``, ``seq_length``, ``seed``) that a resumed run changed, or None. The
    consumed-sample position then points into another sample order."""
    before = DataRecipe.from_record(recorded_args)
    diffs = [f"{name} {getattr(before, name)} -> {getattr(recipe, name)}" for name in ("split", "seq_length", "seed")
             if name in recorded_args and getattr(before, name) != getattr(recipe, name)]
    if recorded_path is not None and list(recorded_path) != list(data_path):
        diffs.append(f"data path {' '.join(recorded_path)} -> {' '.join(data_path)}")
    return f"the data settings differ from {saved}'s: {', '.join(diffs)}" if diffs else None


def build_datasets(recipe: DataRecipe, data_path: list[str], total_iters: int, global_batch: int,
                   min_valid_samples: int = 0, extra_train_samples: int = 0,
                   with_valid: bool = True) -> tuple[Any, Any]:
    """(train, valid) datasets sized for the run: every training step plus ``extra_train_samples`` training
    samples (those the trainer's rollbacks may skip), and the ``eval_iters`` global batches that every validation
    reads (the same ones each time), so the validation samples do not depend on ``total_iters`` or
    ``eval_interval``.

    ``min_valid_samples`` lets a later evaluation ask for more held-out samples than the run drew; the split's
    documents and the seed stay those of the run, and so does the sample order while both requests fit in one
    epoch of the split. ``with_valid=False`` (a run without validations) builds no validation set (None), so a
    split whose validation share holds no document (a corpus of one document) is no obstacle.
    """
    evals = recipe.eval_iters if recipe.eval_interval else 1
    valid_samples = max(evals * global_batch, min_valid_samples) if with_valid else 0
    train, valid, _ = build_train_valid_test_datasets(
        data_path=data_path, split=recipe.split, seq_length=recipe.seq_length, seed=recipe.seed,
        train_valid_test_num_samples=(total_iters * global_batch + extra_train_samples, valid_samples, 0),
        cache_dir=recipe.data_cache_dir)
    return train, valid


def order_fingerprint(dataset: Any, start: int, count: int = 8) -> str:
    """sha256 (16 hex digits) of the tokens of samples ``start`` .. ``start + count - 1`` of ``dataset`` (fewer at
    its end): a rebuilt dataset reads on from ``start`` in the same order exactly when it gives the same value (to
    a negligible chance of error). A checkpoint records it at its consumed-sample count."""
    digest = hashlib.sha256()
    for i in range(start, min(start + count, len(dataset))):
        digest.update(dataset[i]["tokens"].tobytes())
    return digest.hexdigest()[:16]


def collate(samples: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Megatron-style shift of B samples of S + 1 tokens: (tokens [B, S] = sample[:-1], labels [B, S] = sample[1:])."""
    batch = torch.from_numpy(np.stack([s["tokens"] for s in samples]).astype(np.int64))
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def batches(dataset: Any, consumed: int, micro_batch: int, dp_rank: int,
            dp_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(tokens, labels) micro-batches [micro_batch, S] of this data-parallel rank, starting after ``consumed``
    global samples."""
    sampler = PretrainingSampler(total_samples=len(dataset), consumed_samples=consumed,
                                 micro_batch_size=micro_batch, data_parallel_rank=dp_rank,
                                 data_parallel_size=dp_size)
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0,
                                            pin_memory=torch.cuda.is_available()))
