"""The samples of a pretraining run, rebuilt from its recorded settings: checked datasets, splits, micro-batches.

The trainer draws its training, validation and test samples through these functions; evaluation calls the same
ones with the settings a checkpoint recorded (``train_args.json``), so it reads exactly the validation (or test)
batches the run read, without importing the trainer.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from megamythos.data.atomic import atomic_open
from megamythos.data.digest_cache import FileDigests
from megamythos.data.gpt_dataset import (
    SPLIT_NAMES,
    DataConfigError,
    GPTDataset,
    blend_of_split,
    build_per_split_datasets,
    build_train_valid_test_datasets,
    index_cache_dir,
    parse_data_path,
    parse_split,
    split_bounds,
)
from megamythos.data.index_cache import description_key
from megamythos.data.indexed_dataset import IndexedDataset, dataset_not_found
from megamythos.data.metadata import (
    check_record_counts,
    check_same_vocabulary,
    read_dataset_metadata,
    verified_token_range,
)
from megamythos.data.sampler import PretrainingSampler
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_SPLIT = "969,30,1"
# the flags (TrainArgs fields, train-record keys) of Megatron's per-split data, in SPLIT_NAMES order
SPLIT_PATH_FIELDS = ("train_data_path", "valid_data_path", "test_data_path")
DEFAULT_SEED = 1234
# Megatron's flags for samples that pack documents (TrainArgs fields, train-record keys, and the fields of
# megamythos.model.row_layout.PackedDocuments besides its eod id)
DOCUMENT_FLAGS = ("eod_mask_loss", "reset_position_ids", "reset_attention_mask")
OUT_OF_VOCABULARY_REMEDY = ("use data tokenised with the model's tokenizer (data_prep/preprocess_data.py), or rebuild "
                            "the dataset if its .bin is corrupt")


class DataError(UserError, ValueError):
    """The dataset or tokenizer is missing or does not fit the model."""


@dataclass(frozen=True)
class DataRecipe:
    """The settings of a run that decide which sample it reads when: the train/valid/test ``split`` weights (of a
    ``--data-path`` blend; per-split data ignores them), ``seq_length`` tokens per sample (+1 for the shifted
    labels), the shuffling ``seed``, how many validation samples the evaluation schedule needs (``eval_interval``,
    ``eval_iters``; a test evaluation reads ``eval_iters`` batches too) and where index files are cached."""

    split: str = DEFAULT_SPLIT
    seq_length: int = 256
    seed: int = DEFAULT_SEED
    eval_interval: int = 0  # 0 -> no evaluation during training
    eval_iters: int = 8  # global batches per validation: the default run's 8 x 4 x 128 tokens = evaluate's default
    data_cache_dir: str | None = None

    @classmethod
    def from_record(cls, recorded: dict[str, Any]) -> DataRecipe:
        """The recipe in a run's recorded arguments (``train_args.json`` "args"); other keys are ignored, and so are
        settings recorded as None (``--split`` not given: the default)."""
        return cls(**{f.name: recorded[f.name] for f in dataclasses.fields(cls) if recorded.get(f.name) is not None})


@dataclass(frozen=True)
class DataSources:
    """Where a run's samples come from, in Megatron's two forms: ``data_path`` (``--data-path``), one blend whose
    documents ``--split`` divides into train/valid/test; or ``per_split``, the (train, valid, test) blends of
    ``--train-data-path``, ``--valid-data-path`` and ``--test-data-path``, each split reading its blend whole
    (Megatron's ``blend_per_split``; an empty blend: no such split). A blend is what ``--data-path`` takes: prefixes,
    or weight prefix pairs."""

    data_path: list[str] = field(default_factory=list)
    per_split: list[list[str]] | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DataSources | None:
        """The sources of ``record``'s ``data_path`` / ``*_data_path`` entries (a run's arguments, or the
        ``train_args.json`` of its checkpoints, whose paths are absolute); None when it names none (a record older
        than the data paths; a checkpoint from before per-split data records ``data_path`` alone)."""
        per_split = [list(record.get(name) or []) for name in SPLIT_PATH_FIELDS]
        if any(per_split):
            return cls(per_split=per_split)
        return cls(list(record["data_path"] or [])) if "data_path" in record else None

    def record(self) -> dict[str, list[str]]:
        """The entries :meth:`from_record` reads back: ``{"data_path": ...}`` or the three per-split ones."""
        if self.per_split is None:
            return {"data_path": list(self.data_path)}
        return {name: list(blend) for name, blend in zip(SPLIT_PATH_FIELDS, self.per_split, strict=True)}

    def training_data(self) -> dict[str, list[str]]:
        """The entries of :meth:`record` that decide the training samples (with the recipe): ``data_path``, which
        ``--split`` divides, or the training blend alone (held-out data of its own leaves them alone)."""
        return self.record() if self.per_split is None else {"train_data_path": list(self.per_split[0])}

    def blend(self, split: str) -> list[str]:
        """What ``split`` ("train", "valid" or "test") reads from: its own blend, or ``data_path``."""
        return list(self.data_path) if self.per_split is None else list(self.per_split[SPLIT_NAMES.index(split)])

    def prefixes(self) -> list[str]:
        """Every dataset named, once (weights left out): what :func:`resolve_data` checks. A malformed blend
        raises :class:`DataConfigError` naming the flag that gave it."""
        return list(dict.fromkeys(prefix for _, prefix in self._flagged()))

    def check_found(self) -> None:
        """Raise :class:`DataError` for the first dataset with a file missing, naming the flag that gave it
        (``--data-path: dataset 'x' not found: ...``): the line :func:`resolve_data` gives names the prefix alone;
        and for a weight of a blend that names a dataset the blend leaves out (``--data-path 0.5 A`` beside a dataset
        ``0.5``: Megatron's rule reads it as A weighted 0.5, the dataset ``0.5`` left out)."""
        for flag, prefix in self._flagged():
            if missing := dataset_not_found(prefix):
                raise DataError(f"{flag}: {missing}")
        for flag, blend in self._named():
            prefixes, weights = parse_data_path(blend) if blend else ([], None)
            blended = {os.path.realpath(prefix) for prefix in prefixes}
            if dataset := next((weight for weight in blend[0::2] if weights and dataset_not_found(weight) is None
                                and os.path.realpath(weight) not in blended), None):
                raise DataError(f"{flag}: {dataset} is read as the weight of {blend[blend.index(dataset) + 1]}, but "
                                f"it names a dataset too; write ./{dataset} where you mean the dataset (its weight "
                                "before it, or no weights at all), or rename it")

    def flags(self) -> str:
        """These sources as the trainer's flags take them: ``--data-path A B`` or the per-split ones."""
        return " ".join(shlex.join([flag, *blend]) for flag, blend in self._named() if blend)

    def _named(self) -> list[tuple[str, list[str]]]:
        """(flag, blend) of ``--data-path`` or of each per-split path."""
        if self.per_split is None:
            return [("--data-path", list(self.data_path))]
        return [(f"--{name.replace('_', '-')}", list(blend)) for name, blend in zip(SPLIT_PATH_FIELDS, self.per_split)]

    def _flagged(self) -> Iterator[tuple[str, str]]:
        """(flag, prefix) of every dataset named, in order."""
        for flag, blend in self._named():
            try:
                prefixes = parse_data_path(blend)[0] if blend else []
            except DataConfigError as err:
                raise DataConfigError(f"{flag}: {err}") from err
            yield from ((flag, prefix) for prefix in prefixes)

    def absolute(self) -> DataSources:
        """These sources with every prefix made absolute and the weights kept, so that the record written with the
        checkpoints (read by ``evaluate``) finds the data from any working directory."""
        return self.renamed(os.path.abspath)

    def renamed(self, name: Callable[[str], str]) -> DataSources:
        """These sources with every prefix replaced by ``name(prefix)``, the weights kept."""
        def renamed(blend: list[str]) -> list[str]:
            _, weights = parse_data_path(blend) if blend else ([], None)
            return [item if weights is not None and i % 2 == 0 else name(item) for i, item in enumerate(blend)]

        if self.per_split is None:
            return DataSources(renamed(self.data_path))
        return DataSources(per_split=[renamed(blend) for blend in self.per_split])

    def __str__(self) -> str:
        if self.per_split is None:
            return " ".join(self.data_path)
        return "; ".join(f"{name}: {' '.join(blend)}" for name, blend in zip(SPLIT_NAMES, self.per_split) if blend)


@dataclass
class DataSetup:
    """The tokenizer of checked datasets (None when no dataset carries a metadata record) and their shapes."""

    tokenizer_model: str | None
    tokenizer_fingerprint: str | None
    shapes: dict[str, dict[str, int]] = field(default_factory=dict)  # realpath(prefix) -> IndexedDataset.shape()


def scan_dataset(dataset: IndexedDataset, record: dict[str, Any] | None,
                 cache_dir: str | None) -> tuple[dict[str, int], tuple[int, int] | None]:
    """``dataset``'s shape (:meth:`IndexedDataset.shape`) and token-id range (:meth:`IndexedDataset.token_range`),
    after checking every pointer of its index (:meth:`IndexedDataset.validate`) and every byte against the
    checksums its ``record`` holds (:func:`~megamythos.data.metadata.verified_token_range`, in the same pass).

    The scan reads every byte of the ``.bin`` and ``.idx`` (2 TB for a 1T-token corpus), so its answer is kept in
    the index cache (``cache_dir``, default ``index-cache/`` beside the dataset) as ``{key}-scan.json``, keyed by the
    files' real path, size, inode, modification and change times: a later start, another rank or ``evaluate`` reads
    it instead of the files. A dataset rebuilt, copied or changed in place gets a new key and is scanned (verified)
    again, a copy over the files that keeps their inode, size and modification time too (``cp -p``, ``rsync -a
    --inplace``): the change time is the file system's own, which no copy sets (a ``chmod`` changes it too, and
    costs a scan); a byte that rots in place later is found by ``data_prep/inspect_dataset.py``, which always reads
    every byte. A cache that cannot be written costs only the next start's scan.
    """
    prefix = dataset.path_prefix
    description: dict[str, Any] = {"class": "DatasetScan", "path": os.path.realpath(f"{prefix}.bin")}
    for ext in ("bin", "idx"):
        stat = os.stat(f"{prefix}.{ext}")
        description.update({f"{ext}_bytes": stat.st_size, f"{ext}_inode": stat.st_ino,
                            f"{ext}_mtime_ns": stat.st_mtime_ns, f"{ext}_ctime_ns": stat.st_ctime_ns})
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
    shape, token_range = dataset.shape(), verified_token_range(dataset, record)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_open(path, "w") as handle:
            json.dump({"description": description, "shape": shape, "token_range": token_range}, handle, indent=2)
    except OSError as err:
        logger.info("cannot cache the scan of %s in %s (%s); the next start scans it again", prefix,
                    os.path.dirname(path), err)
    return shape, token_range


def cached_record(prefix: str, digests: FileDigests, cache_dir: str | None) -> dict[str, Any] | None:
    """``prefix``'s record (:func:`~megamythos.data.metadata.read_dataset_metadata`), the sha256 of its tokenizer copy
    taken from ``digests``, which cache it in ``prefix``'s index cache (``cache_dir``, default beside the data)."""
    cache = index_cache_dir(prefix, cache_dir)
    return read_dataset_metadata(prefix, functools.partial(digests.sha256, cache_dir=cache))


def token_bound(record: dict[str, Any] | None, vocab_size: int) -> int:
    """The ids a dataset may hold: those of the tokenizer its ``record`` names (at most the model's ``vocab_size``,
    which :func:`resolve_data` checks first), else the model's. An id past the tokenizer's, in a padded
    vocabulary, no tokenizer made: the ``.bin`` is corrupt or was rebuilt with another tokenizer."""
    return min(int(record["vocab_size"]), vocab_size) if record is not None else vocab_size


def resolve_data(data_path: list[str], vocab_size: int, cache_dir: str | None = None) -> DataSetup:
    """Check that every dataset of ``data_path`` exists, was tokenised with one tokenizer of at most ``vocab_size``
    ids (fewer: a padded vocabulary, as Megatron's ``--make-vocab-size-divisible-by``) and holds only token ids
    of that tokenizer (:func:`token_bound`: below ``vocab_size`` for a dataset without a record); the scans of the
    data are cached in ``cache_dir`` (:func:`scan_dataset`), and so are the sha256 of the tokenizer copies, each
    distinct file hashed once (:class:`~megamythos.data.digest_cache.FileDigests`).

    Raises :class:`DataError` for a missing dataset, one that holds no token (:meth:`IndexedDataset.no_token`; at
    any weight or split: Megatron's reader cannot map its empty ``.bin``) or a vocabulary that differs from the model's,
    ``DatasetMismatchError`` for datasets built with different tokenizers, and ``IndexedDatasetError`` for a
    corrupt dataset (every pointer checked against the sizes), a record that counts other documents or tokens
    than the data holds (tokens rebuilt beside an old record), or a token id outside the vocabulary (one
    vectorised pass over each ``.bin``), before any sample is read. A dataset without a metadata record (made by
    Megatron's tools) is accepted with a warning if its token ids fit.
    """
    prefixes, _ = parse_data_path(data_path)
    records = {}
    shapes: dict[str, dict[str, int]] = {}
    digests = FileDigests()
    for prefix in prefixes:
        if missing := dataset_not_found(prefix):
            raise DataError(missing)
        meta = cached_record(prefix, digests, cache_dir)
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
        if empty := dataset.no_token():
            raise DataError(f"dataset {prefix!r} {empty}; preprocess text into it (data_prep/preprocess_data.py), or "
                            "leave it out of the data paths")
        shape, token_range = scan_dataset(dataset, meta, cache_dir)
        shapes[os.path.realpath(prefix)] = shape
        check_record_counts(prefix, meta, shape)
        dataset.check_token_ids(token_bound(meta, vocab_size), OUT_OF_VOCABULARY_REMEDY, token_range)
    known = [r for r in records.values() if r is not None]
    return DataSetup(known[0]["tokenizer_model"] if known else None,
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


def tokenizer_change(trained: str | None, used: str | None, recorded: DataSources | None, sources: DataSources,
                     saved: str) -> str | None:
    """``checkpoint in SAVED was trained with tokenizer A but the data uses B`` where the tokenizer fingerprint the
    checkpoint recorded (``trained``) is not the data's (``used``), else None. Where ``sources`` are not the data it
    recorded (``recorded``; a run without ``--data-path`` resumed after a Python upgrade gets the new Python's
    default corpus, built beside the one it trained on), the line names that data and the flags that read it."""
    if trained == used:
        return None
    change = f"checkpoint in {saved} was trained with tokenizer {trained} but the data uses {used}"
    if recorded is None or recorded.absolute().record() == sources.absolute().record():
        return change
    return f"{change} ({sources}); it trained on {recorded}: resume it with {recorded.flags()}"


def data_moved(recorded: DataSources | None, recorded_shapes: Mapping[str, Mapping[str, int]], sources: DataSources,
               shapes: Mapping[str, Mapping[str, int]], saved: str) -> str | None:
    """``the data path changed since SAVED was saved: OLD -> NEW, ...`` where the training data of ``sources`` lies
    at other paths than ``recorded``'s and they name the datasets it recorded (the run resumed on another machine,
    or its data copied under another prefix): as many datasets in each blend, with the same weights, of the shapes
    ``recorded_shapes`` holds (``DataSetup.shapes``, in the order of the prefixes); else None. The sample order
    depends on the shapes, the weights and the recipe, not on the paths; the tokens of the samples after the
    checkpoint are checked by its :func:`order_fingerprint`."""
    if recorded is None or recorded.training_data() == sources.training_data():
        return None

    def blends(of: DataSources) -> list[tuple[int, list[float] | None]]:
        """(datasets, weights) of each blend."""
        return [(len(prefixes), weights) for prefixes, weights in
                (parse_data_path(blend) if blend else ([], None) for blend in of.record().values())]

    if blends(recorded) != blends(sources) or list(recorded_shapes.values()) != list(shapes.values()):
        return None
    return (f"the data path changed since {saved} was saved: {recorded} -> {sources}, datasets of the sequences, "
            "documents and tokens it recorded")


def recipe_change(recorded_args: dict[str, Any], recorded_sources: DataSources | None, recipe: DataRecipe,
                  sources: DataSources, saved: str, moved: bool = False) -> str | None:
    """``the data settings differ from SAVED's: seed 1234 -> 7, ...`` for the settings that decide the training
    sample order (the training datasets and weights, ``split`` where it divides them, ``seq_length``, ``seed``)
    that a resumed run changed, or None. The consumed-sample position then points into another sample order.
    ``moved``: the training data lies at other paths but holds the datasets the run read (:func:`data_moved`),
    which is no change of order."""
    before = DataRecipe.from_record(recorded_args)
    names = ("seq_length", "seed") if sources.per_split is not None else ("split", "seq_length", "seed")
    diffs = [f"{name} {getattr(before, name)} -> {getattr(recipe, name)}" for name in names
             if name in recorded_args and getattr(before, name) != getattr(recipe, name)]
    if recorded_sources is not None and not moved and recorded_sources.training_data() != sources.training_data():
        diffs.append(f"data path {recorded_sources} -> {sources}")
    return f"the data settings differ from {saved}'s: {', '.join(diffs)}" if diffs else None


def split_documents(sources: DataSources, split: str, name: str,
                    shapes: Mapping[str, Mapping[str, int]]) -> dict[str, tuple[int, int]]:
    """The documents ``[first, end)`` that split ``name`` ("train", "valid" or "test") reads of each dataset of
    ``shapes`` (``DataSetup.shapes``: real path -> shape) that ``sources`` blends into it with a weight above 0: the
    range ``--split`` ``split`` gives it (:func:`split_bounds`), or all of it for per-split data."""
    blend = sources.blend(name)
    prefixes, weights = parse_data_path(blend) if blend else ([], None)
    fractions, index = parse_split(split), SPLIT_NAMES.index(name)
    ranges = {}
    for i, prefix in enumerate(prefixes):
        key = os.path.realpath(prefix)
        if key in shapes and (weights is None or weights[i] > 0):
            count = int(shapes[key]["sequences"])
            bounds = split_bounds(fractions, count)[index:index + 2] if sources.per_split is None else [0, count]
            ranges[key] = (bounds[0], bounds[1])
    return ranges


def moved_datasets(base_shapes: Mapping[str, Mapping[str, int]],
                   shapes: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
    """{a base run's dataset path: this run's} for each dataset the base run recorded (``base_shapes``, its
    ``dataset_shapes``: real path -> shape) at a path this run does not read, where exactly one dataset of this run
    (``shapes``), at a path the base run did not read, has its shape, and no other such dataset of the base run does:
    the same data at another path (copied to another machine or folder). An ambiguous shape is matched to none."""
    new = [key for key in shapes if key not in base_shapes]
    gone = [key for key in base_shapes if key not in shapes]
    moved = {}
    for old in gone:
        same = [key for key in new if dict(shapes[key]) == dict(base_shapes[old])]
        if len(same) == 1 and sum(dict(base_shapes[key]) == dict(base_shapes[old]) for key in gone) == 1:
            moved[old] = same[0]
    return moved


def held_out_overlap(base_record: Mapping[str, Any], sources: DataSources, split: str,
                     shapes: Mapping[str, Mapping[str, int]], base: str) -> str | None:
    """What a run from the weights of ``base`` (``--finetune``; ``base_record``: its ``train_args.json``) reads across
    the base run's split of the same documents, or None: a validation or test split of ``sources`` under ``split``
    holding documents the base run trained on (its held-out loss is no longer that of unseen text), or a training
    split holding documents the base run held out (its held-out numbers no longer compare with the base run's).
    Megatron leaves the splits to the user; a finetune on the same data with another ``--split`` is the usual cause.
    Only datasets of ``shapes`` (this run's) count: those of the base run's paths, and those the base run read at
    other paths (:func:`moved_datasets`, by the shapes it recorded). The base run's datasets go by the real paths
    it recorded their shapes under, in the order it read them (a path through a link absent here names none)."""
    base_sources = DataSources.from_record(base_record)
    if base_sources is None:
        return None
    base_split = DataRecipe.from_record(base_record.get("args", {})).split
    labels = {"valid": "validation", "test": "test"}
    recorded = base_record.get("dataset_shapes") or {}
    read = base_sources  # the base run's sources, by the real paths it recorded where they line up
    if len(recorded) == len(given := base_sources.prefixes()):  # resolve_data's order: one shape per prefix
        real = dict(zip(given, recorded))
        read = base_sources.renamed(lambda prefix: real[prefix])
    moved = moved_datasets(recorded, shapes)
    base_shapes = {**shapes, **{old: shapes[new] for old, new in moved.items()}}

    def base_documents(name: str) -> dict[str, tuple[int, int]]:
        """The documents the base run's split ``name`` read of each dataset, under this run's path."""
        return {moved.get(key, key): bounds
                for key, bounds in split_documents(read, base_split, name, base_shapes).items()}

    def overlaps(reading: dict[str, tuple[int, int]], other: dict[str, tuple[int, int]]) -> list[tuple[str, int]]:
        return [(key, n) for key, (first, end) in reading.items() if key in other
                and (n := min(end, other[key][1]) - max(first, other[key][0])) > 0]

    trained = base_documents("train")
    training = split_documents(sources, split, "train", shapes)
    found = [f"its {labels[name]} split holds {n} documents of {key} that {base} trained on"
             for name in labels for key, n in overlaps(split_documents(sources, split, name, shapes), trained)]
    found += [f"its training split holds {n} documents of {key} that {base} held out for {labels[name]}"
              for name in labels for key, n in overlaps(training, base_documents(name))]
    if not found:
        return None
    where = f"--split {base_split}" if base_sources.per_split is None else "per-split data"
    return (f"--finetune: {'; '.join(found)} ({base} read {base_sources} under {where}): the finetuned weights will "
            "have trained on documents held out, so a loss measured on them is not that of unseen text; to keep them "
            f"apart, split the data as {base} did, or give held-out data of its own (--valid-data-path, "
            "--test-data-path)")


def document_flags(recorded_args: Mapping[str, Any]) -> dict[str, bool]:
    """The ``DOCUMENT_FLAGS`` of a run's arguments (or of the ``train_args.json`` "args" of its checkpoints; a record
    without them trained with none)."""
    return {name: bool(recorded_args.get(name)) for name in DOCUMENT_FLAGS}


def documents_eod(flags: Mapping[str, bool], prefixes: list[str], recorded_by: str | None = None,
                  cache_dir: str | None = None) -> int | None:
    """The token id that ends the documents of the datasets ``prefixes`` (the eos id their records say they were
    preprocessed with ``--append-eod`` by) where one of the document ``flags`` is on, else None; the tokenizer
    copies' sha256 come from the index cache (``cache_dir``: :func:`cached_record`) and each distinct tokenizer is
    loaded once. Raises
    :class:`DataError` naming a dataset whose record knows no such id, or another one than its tokenizer's eos id
    (a corrupt record), and what to do: leave the flags out, or,
    for flags a checkpoint ``recorded_by`` (which ``evaluate`` applies), evaluate on other data."""
    given = " ".join(f"--{name.replace('_', '-')}" for name, on in flags.items() if on)
    if not given:
        return None
    remedy = (f"leave {given} out" if recorded_by is None else
              f"pass --data-path data preprocessed so (the run of {recorded_by} trained with {given})")
    eods = set()
    digests, eos_ids = FileDigests(), {}  # eos_ids: tokenizer sha256 -> its eos id
    for prefix in prefixes:
        record = cached_record(prefix, digests, cache_dir)
        if record is None or not record.get("append_eod") or record.get("eod_id", -1) < 0:
            raise DataError(f"{given} needs the documents' end token, but dataset {prefix} "
                            f"{'has no record' if record is None else 'was preprocessed without --append-eod'} "
                            f"({prefix}.json): rebuild it with data_prep/preprocess_data.py --append-eod, or {remedy}")
        fingerprint = record["tokenizer_fingerprint"]
        if fingerprint not in eos_ids:
            eos_ids[fingerprint] = Tokenizer(record["tokenizer_model"]).eos_id
        eod, eos = int(record["eod_id"]), eos_ids[fingerprint]
        if eod != eos:  # preprocessing records the tokenizer's eos id: the record is corrupt
            raise DataError(f"{prefix}.json records eod_id={eod}, but the tokenizer it records "
                            f"({record['tokenizer_model']}) ends documents with id {eos}: the record is corrupt; "
                            "rebuild the dataset with data_prep/preprocess_data.py --append-eod --overwrite")
        eods.add(eod)
    if len(eods) != 1:
        raise DataError(f"{given}: the datasets {' '.join(prefixes)} end their documents with different token ids "
                        f"{sorted(eods)}; use data preprocessed with one tokenizer")
    return eods.pop()


def document_change(recorded_args: Mapping[str, Any], args: Mapping[str, Any], saved: str) -> str | None:
    """``the document flags differ from SAVED's: eod_mask_loss False -> True, ...`` for the ``DOCUMENT_FLAGS`` that
    a resumed run changed (what its loss scores, its positions and attention), or None."""
    before, now = document_flags(recorded_args), document_flags(args)
    diffs = [f"{name} {before[name]} -> {now[name]}" for name in DOCUMENT_FLAGS if before[name] != now[name]]
    return f"the document flags differ from {saved}'s: {', '.join(diffs)}" if diffs else None


def build_datasets(recipe: DataRecipe, sources: DataSources, total_iters: int, global_batch: int,
                   min_held_out_samples: int = 0, extra_train_samples: int = 0, with_valid: bool = True,
                   with_test: bool = True) -> tuple[Any, Any, Any]:
    """(train, valid, test) datasets sized for the run: every training step plus ``extra_train_samples`` training
    samples (those the trainer's rollbacks may skip), and the ``eval_iters`` global batches that every validation
    reads (the same ones each time), so the validation samples do not depend on ``total_iters`` or
    ``eval_interval``; as many test samples, the batches of the test evaluation at the end of training (Megatron's
    ``eval_iters`` x global batch).

    ``min_held_out_samples`` lets a later evaluation ask for more held-out samples than the run drew; the split's
    documents and the seed stay those of the run, and so does the sample order while both requests fit in one
    epoch of the split. ``with_valid=False`` (a run without validations) builds no validation set (None), so a
    split whose validation share holds no document (a corpus of one document) is no obstacle; ``with_test=False``
    no test set. The test set is None without a test split (no ``--test-data-path``, a 0 test weight), and also
    where ``--split``'s test share of ``data_path`` holds no sample (a small corpus: one info line says so); a blend's
    test set reads the datasets whose test share holds samples, a warning naming the others (:func:`blend_of_split`).
    """
    evals = recipe.eval_iters if recipe.eval_interval else 1
    valid_samples = max(evals * global_batch, min_held_out_samples) if with_valid else 0
    test_samples = max(recipe.eval_iters * global_batch, min_held_out_samples) if with_test else 0
    train_samples = total_iters * global_batch + extra_train_samples
    if sources.per_split is not None:
        return build_per_split_datasets(sources.per_split, recipe.seq_length, recipe.seed,
                                        (train_samples, valid_samples, test_samples), recipe.data_cache_dir)
    build = functools.partial(build_train_valid_test_datasets, data_path=sources.data_path, split=recipe.split,
                              seq_length=recipe.seq_length, seed=recipe.seed, cache_dir=recipe.data_cache_dir)
    train, valid, _ = build(train_valid_test_num_samples=(train_samples, valid_samples, 0))
    if not test_samples:
        return train, valid, None
    try:  # a corpus too small for --split's test share: no test set, which a run does without
        test_path = blend_of_split(sources.data_path, recipe.split, SPLIT_NAMES.index("test"), recipe.seq_length)
        test = build(data_path=test_path, train_valid_test_num_samples=(0, 0, test_samples))[2]
    except DataConfigError as err:
        logger.info("no test set: %s", err)
        test = None
    return train, valid, test


def same_sample_order(train: Any, saved_asked: int | None, asked: int) -> bool | None:
    """Whether the training set ``train``, asked for ``asked`` samples, reads the sample order the same data gave the
    run that saved, whose set was asked for ``saved_asked``: the same count, or for one dataset (a
    :class:`GPTDataset`) a count of the same epochs (:meth:`GPTDataset.epochs_for`); None where that is not known (a
    checkpoint that did not record its count, or a blend asked for another one)."""
    if saved_asked is None:
        return None
    if saved_asked == asked:
        return True
    if not isinstance(train, GPTDataset):
        return None
    return train.epochs_for(saved_asked) == train.epochs_for(train.num_samples)


def order_change(moved: str | None, same_order: bool | None, iteration: int, total_iters: int,
                 global_batch: int, rule_changed: bool = False) -> str:
    """Why the samples a resumed run reads after its checkpoint differ from those it recorded (their
    :func:`order_fingerprint`), in words: the run's blend gives other samples under this version's
    :data:`SAMPLE_RULE` than under the one that saved the checkpoint (``rule_changed``); or, where the training set
    reads the order the same data gave the run that saved (``same_order``, :func:`same_sample_order`), the datasets at
    the new data path (``moved``, :func:`data_moved`) or under the same paths hold other tokens; where it does not,
    the set, built for ``total_iters`` steps of ``global_batch``, spans another number of epochs. Not known (None):
    the datasets at a new path are said to hold other tokens, those under the same paths to span other epochs."""
    if rule_changed:
        return (f"the checkpoint was saved by an earlier megamythos, which blended this run's datasets by another "
                f"rule; this one builds the samples Megatron-LM builds from them (docs/data.md), so from iteration "
                f"{iteration} on the run reads those, not the ones it would have read: some samples come again and "
                "others not at all; resume with the megamythos that saved it to read on in its order")
    if same_order or (same_order is None and moved):
        if moved:
            return (f"{moved}, but they hold other tokens: the samples from iteration {iteration} on are not those "
                    "the run would have read; give --data-path a copy of the data it read (the same .bin and .idx "
                    "files)")
        return (f"the datasets hold other tokens than when the checkpoint was saved, as many sequences, documents "
                f"and tokens (rebuilt or copied over under the same paths: documents in another order?): the samples "
                f"from iteration {iteration} on are not those the run would have read; restore the data it read")
    return (f"the training set was built again for {total_iters} steps of {global_batch} samples and reads another "
            f"sample order from iteration {iteration} on (it spans another number of epochs, each shuffled anew, as "
            "Megatron's does): some samples come again and others not at all; resume with the saved --train-iters "
            "and --global-batch-size to read the samples it would have")


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
