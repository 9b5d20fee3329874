"""Concatenate indexed datasets (documents of each input, in argument order) into one."""
from __future__ import annotations

import logging
import os

from megamythos.data.atomic import check_output_prefix, remove_stale_temps
from megamythos.data.checksums import RECORD_KEY as CHECKSUMS_KEY
from megamythos.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexedDatasetError,
    bin_path,
    dataset_not_found,
    idx_path,
)
from megamythos.data.metadata import (
    DatasetMismatchError,
    announce_dataset,
    check_dataset,
    check_same_vocabulary,
    dataset_files,
    metadata_path,
    read_dataset_metadata,
    refuse_to_replace,
    verified_token_range,
)
from megamythos.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


MAX_LINKS = 40  # links followed from one path, as the kernel's limit (a loop ends there)


def _entry(path: str) -> str:
    """The directory entry ``path`` names, its folders' links resolved (not a link the file itself may be)."""
    return os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))


def _entries(path: str) -> set[str]:
    """Every directory entry reading ``path`` goes through: its own, then each link's target in turn (``in/a.bin ->
    data/o.bin -> store/a.bin``: all three)."""
    entries = [_entry(path)]
    while os.path.islink(entries[-1]) and len(entries) <= MAX_LINKS:
        entries.append(_entry(os.path.join(os.path.dirname(entries[-1]), os.readlink(entries[-1]))))
    return set(entries)


def replaced_input(output_prefix: str, prefixes: list[str]) -> str | None:
    """The first of ``prefixes`` a dataset written at ``output_prefix`` would replace a file of: the same prefix
    however spelled, or an input whose files are links to the output's, directly or through other links (``ln -s
    data/a.bin in/a.bin``, then ``--input in/a --output-prefix data/a``: the output's ``os.replace`` lands on an
    entry the input is read through). An output whose files are links to an input's is not one: the rename replaces
    the links, not their target. Nor is an input whose tokenizer copy alone is a link to the output's: the merge
    writes there the tokenizer every input's record names (one sha256, :func:`check_same_vocabulary`), the bytes the
    input's record reads through the link (a record reads its copy only when its sha256 is the recorded one), so
    only its ``.bin``, ``.idx`` and record count."""
    written = {_entry(path) for path in dataset_files(output_prefix)}
    return next((prefix for prefix in prefixes for path in (bin_path(prefix), idx_path(prefix), metadata_path(prefix))
                 if _entries(path) & written), None)


def warn_repeated_inputs(prefixes: list[str]) -> None:
    """Warn, one line each, of an input named again (the same ``.bin``, by another spelling or a link): the merge
    holds its documents twice. Not refused: the merged dataset is valid and nothing is lost, and a dataset repeated on
    purpose is a weight, better given to the trainer's ``--data-path`` (``0.7 A 0.3 B``) than copied."""
    seen: dict[tuple[int, int], str] = {}
    for prefix in prefixes:
        stat = os.stat(bin_path(prefix))
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            logger.warning("--input %s is %s again (the same %s): the merged dataset holds its documents twice; to "
                           "weight a dataset, give it a weight in the trainer's --data-path (0.7 A 0.3 B) instead",
                           prefix, seen[key], bin_path(seen[key]))
        else:
            seen[key] = prefix


def merge_datasets(prefixes: list[str], output_prefix: str, overwrite: bool = False) -> IndexedDataset:
    """Write ``output_prefix.{bin,idx}`` holding every document of ``prefixes`` in order; returns it opened.

    Every input is checked as ``inspect_dataset.py`` checks it, short of its token ids
    (:func:`~megamythos.data.metadata.check_dataset`), and its bytes against its recorded checksums: the merge
    recomputes the pointers, counts and checksums, so a corrupt index or byte, or a record left beside other
    tokens, would pass every later check once merged. All inputs must share a
    dtype and either all carry a tokenizer record, of one tokenizer, or none does (a record-less input among
    recorded ones would be claimed by their tokenizer). The first record is carried over with updated counts
    (``append_eod`` only if every input ended its documents with eos), and is in place before the ``.idx`` is
    (:func:`~megamythos.data.metadata.announce_dataset`). An existing dataset at ``output_prefix`` is replaced
    only with ``overwrite``, and never when it is one of the inputs (:func:`replaced_input`); an input named twice
    is merged twice, with a warning (:func:`warn_repeated_inputs`); inputs that hold no token at all are refused
    (an empty ``.bin``, which Megatron's reader cannot map; one beside inputs that hold some adds nothing, and is
    merged, though ``inspect_dataset.py`` calls it INVALID). The temporaries of a merge into it that was killed
    (``*.tmp.<host>.<pid>`` of a dead process of this host) are removed first.
    """
    if not prefixes:
        raise ValueError("merge_datasets needs at least one input prefix")
    check_output_prefix(output_prefix)
    if (replaced := replaced_input(output_prefix, prefixes)) is not None:
        raise IndexedDatasetError(f"--output-prefix {output_prefix} is one of the inputs ({replaced}: the same files "
                                  "or links to them), which the merge reads while it writes and would replace; choose "
                                  "another --output-prefix (--overwrite does not allow this)")
    for removed in remove_stale_temps(dataset_files(output_prefix)):
        logger.info("removed %s, left by a killed run", removed)
    refuse_to_replace(output_prefix, overwrite)
    for prefix in prefixes:  # named as the flag's, before IndexedDataset's line on one file of it
        if missing := dataset_not_found(prefix):
            raise IndexedDatasetError(f"--input: {missing}")
    warn_repeated_inputs(prefixes)
    datasets = [IndexedDataset(p) for p in prefixes]
    if all(d.no_token() for d in datasets):
        raise IndexedDatasetError(f"--input {' '.join(prefixes)}: every input is empty (no token), so the merged "
                                  ".bin would be empty, which Megatron's reader cannot map; nothing was written: "
                                  "merge datasets that hold documents")
    records = [read_dataset_metadata(p) for p in prefixes]
    recorded, first = next(((p, r) for p, r in zip(prefixes, records) if r is not None), (None, None))
    for prefix, dataset, record in zip(prefixes, datasets, records):
        check_dataset(dataset, record)
        if dataset.dtype != datasets[0].dtype:
            raise IndexedDatasetError(
                f"dtype mismatch: {prefixes[0]} stores {datasets[0].dtype} but {prefix} stores {dataset.dtype}"
            )
        if record is None and recorded is not None:
            raise DatasetMismatchError(
                f"{prefix} has no tokenizer record ({prefix}.json) but {recorded} has one: the merged record would "
                f"claim {prefix}'s tokens for {recorded}'s tokenizer unchecked; tokenise its text again with "
                "data_prep/preprocess_data.py and that tokenizer, or merge only datasets without records")
        check_same_vocabulary(str(recorded), first, prefix, record)
        if record is not None:  # every byte against its checksums before the merged record vouches for the copy
            verified_token_range(dataset, record)
    with IndexedDatasetBuilder(output_prefix, datasets[0].dtype) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
        if first is None:
            announce_dataset(output_prefix, None)
        else:
            fields = {k: v for k, v in first.items()
                      if k not in ("format", "vocab_size", "tokenizer_fingerprint", "tokenizer_model", CHECKSUMS_KEY)}
            fields.update(num_documents=sum(len(d.document_indices) - 1 for d in datasets),
                          num_tokens=builder.num_tokens,
                          append_eod=all(bool(r.get("append_eod")) for r in records if r is not None))
            announce_dataset(output_prefix, Tokenizer(first["tokenizer_model"]), builder.checksums(), **fields)
        builder.finalize()
    logger.info("merged %d datasets into %s", len(prefixes), output_prefix)
    return IndexedDataset(output_prefix)
