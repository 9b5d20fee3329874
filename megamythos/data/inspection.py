"""Statistics, full validation and sample decoding of an indexed dataset (``data_prep/inspect_dataset.py``)."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from megamythos.data.atomic import atomic_open
from megamythos.data.checksums import (
    BLOCK_BYTES,
    DatasetChecksums,
    DatasetCorruptError,
    file_block_digests,
    usable_digests,
)
from megamythos.data.checksums import RECORD_KEY as CHECKSUMS_KEY
from megamythos.data.indexed_dataset import IndexedDataset, IndexedDatasetError, bin_path, idx_path
from megamythos.data.metadata import (
    RECORD_REMEDY,
    MetadataError,
    check_dataset,
    check_same_vocabulary,
    metadata_path,
    read_dataset_metadata,
    verified_token_range,
)
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import read_json_object

SAMPLES = 3  # documents an inspection decodes
MAX_SAMPLE_TOKENS = 200  # tokens decoded per document


def check_given_tokenizer(prefix: str, metadata: dict[str, Any] | None, tokenizer: Tokenizer) -> None:
    """Raise :class:`~megamythos.data.metadata.DatasetMismatchError` if ``prefix``'s record names another tokenizer
    than ``tokenizer`` (given as ``--tokenizer-model``): its samples would decode to another text and its token ids
    be judged against another vocabulary. A dataset without a record (made by Megatron) cannot be checked."""
    check_same_vocabulary(f"dataset {prefix}", metadata, f"--tokenizer-model {tokenizer.model_path}",
                          {"vocab_size": tokenizer.vocab_size, "tokenizer_fingerprint": tokenizer.fingerprint},
                          remedy="leave out --tokenizer-model: the dataset's record names the tokenizer it was built "
                                 "with")


def inspect_dataset(prefix: str, num_samples: int = SAMPLES, tokenizer_model: str | None = None,
                    max_sample_tokens: int = MAX_SAMPLE_TOKENS, seed: int = 0,
                    ignore_checksums: bool = False) -> dict[str, Any]:
    """Open and fully validate ``prefix`` (raises :class:`IndexedDatasetError`, or
    :class:`~megamythos.data.checksums.DatasetCorruptError` where a byte differs from its recorded checksums: every
    byte is read), then report on it. The token ids are checked against the vocabulary too when it is known:
    ``tokenizer_model``'s, else the recorded one, and the recorded document and token counts against the data. A
    ``tokenizer_model`` that is not the recorded one raises :class:`~megamythos.data.metadata.DatasetMismatchError`
    (:func:`check_given_tokenizer`); a dataset that holds no token raises :class:`IndexedDatasetError`
    (:meth:`IndexedDataset.no_token`). ``ignore_checksums``: validate as if the record held none (for
    :func:`add_checksums`, which replaces malformed ones).

    Returns ``{"prefix", "dtype", "sequences", "documents", "tokens", "bin_bytes", "idx_bytes", "length_min",
    "length_mean", "length_max", "metadata" (the record without its checksums), "checksums" (what was verified),
    "samples"}`` where ``samples`` maps a sequence index to its first ``max_sample_tokens`` tokens decoded (with
    the recorded tokenizer, or ``tokenizer_model`` if given).
    """
    dataset = IndexedDataset(prefix)
    metadata = read_dataset_metadata(prefix)
    if ignore_checksums and metadata is not None:
        metadata.pop(CHECKSUMS_KEY, None)
    check_dataset(dataset, metadata)
    if empty := dataset.no_token():  # nothing to train on, and Megatron's tools cannot open it
        raise IndexedDatasetError(f"{prefix} {empty}; rebuild it from text with data_prep/preprocess_data.py")
    model = tokenizer_model or (metadata or {}).get("tokenizer_model")
    tokenizer = Tokenizer(model) if model else None
    if tokenizer_model is not None and tokenizer is not None:
        check_given_tokenizer(prefix, metadata, tokenizer)
    vocab_size = tokenizer.vocab_size if tokenizer else (metadata or {}).get("vocab_size")
    # checksums ignored (add_checksums is about to record them): scanned without the warning that names it
    token_range = dataset.token_range() if ignore_checksums else verified_token_range(dataset, metadata)
    if vocab_size is not None:
        dataset.check_token_ids(int(vocab_size), "the dataset was not tokenised with this tokenizer, or its .bin is "
                                                 "corrupt; rebuild it with data_prep/preprocess_data.py", token_range)
    sums = DatasetChecksums.from_record(metadata, metadata_path(prefix))
    sizes = dataset.sizes
    report: dict[str, Any] = {
        "prefix": prefix,
        "dtype": dataset.dtype.name,
        "sequences": len(dataset),
        "documents": len(dataset.document_indices) - 1,
        "tokens": dataset.num_tokens,
        "bin_bytes": os.path.getsize(bin_path(prefix)),
        "idx_bytes": os.path.getsize(idx_path(prefix)),
        "length_min": int(sizes.min()),  # a dataset of no sequence holds no token: refused above
        "length_mean": float(sizes.mean()),
        "length_max": int(sizes.max()),
        "metadata": {k: v for k, v in metadata.items() if k != CHECKSUMS_KEY} if metadata else None,
        "checksums": (f"verified: {len(sums.bin)} + {len(sums.idx)} blocks of {sums.block_bytes} bytes (.bin + .idx)"
                      if sums else "none recorded: the bytes cannot be verified"),
        "samples": {},
    }
    if tokenizer is not None:
        picks = np.random.default_rng(seed).choice(len(dataset), size=min(num_samples, len(dataset)), replace=False)
        for i in sorted(int(p) for p in picks):
            report["samples"][i] = tokenizer.decode(dataset.get(i, 0, min(int(sizes[i]), max_sample_tokens)))
    return report


def record_without_checksums(prefix: str) -> dict[str, Any]:
    """``prefix``'s record as stored, for :func:`add_checksums`: one without checksums, or with malformed ones (a
    hand-edited or corrupt record), which it replaces. Raises :class:`IndexedDatasetError` for a dataset without a
    record (made by Megatron's tools: the checksums live in the record, which names a tokenizer) or with well-formed
    checksums recorded (those are what vouch for it)."""
    path = metadata_path(prefix)
    if not os.path.isfile(path):
        raise IndexedDatasetError(f"{prefix} has no record ({path}; a dataset made by Megatron's tools), which is "
                                  "where checksums go: preprocess its text with data_prep/preprocess_data.py")
    record = read_json_object(path, MetadataError, RECORD_REMEDY)
    try:
        recorded = DatasetChecksums.from_record(record, path)
    except DatasetCorruptError:
        return record
    if recorded is not None:
        raise IndexedDatasetError(f"{path} already records checksums: nothing to add (a rebuild of the dataset "
                                  "replaces them)")
    return record


def check_usable_digests(prefix: str, recorded: Any, sums: DatasetChecksums) -> None:
    """Raise :class:`~megamythos.data.checksums.DatasetCorruptError` where ``prefix``'s files differ from the digests
    its record's malformed checksums ``recorded`` still hold (:func:`~megamythos.data.checksums.usable_digests`: a
    bad ``block_bytes`` beside well-formed digests, one malformed entry or field beside others): ``sums`` are the
    files' digests now, in blocks of ``sums.block_bytes``; the files are hashed again where the record's blocks are
    of another size."""
    usable = usable_digests(recorded)
    if usable is None:
        return
    block_bytes, kept = usable
    for name, listed in kept.items():
        path = f"{prefix}.{name}"
        now = list(getattr(sums, name)) if block_bytes == sums.block_bytes else file_block_digests(path, block_bytes)
        bad = next((k for k, (old, new) in enumerate(zip(listed, now)) if old not in (None, new)), None)
        if len(now) != len(listed) or bad is not None:
            how = (f"it is {len(now)} blocks of {block_bytes} bytes, the record lists {len(listed)}"
                   if len(now) != len(listed) else f"its block {bad} of {block_bytes} bytes has another sha256")
            raise DatasetCorruptError(
                f"{path} does not match its record: {metadata_path(prefix)}'s checksums are malformed, but the "
                f"well-formed digests they hold say {how}: the dataset may be corrupt, and nothing was recorded; copy "
                "it again from its source, or rebuild it with data_prep/preprocess_data.py (if only the record was "
                "edited and the data is sound, remove its \"checksums\" field and run --add-checksums again)")


def add_checksums(prefix: str) -> DatasetChecksums:
    """Record the block checksums of ``prefix``'s ``.bin`` and ``.idx`` as they are now in its record (a dataset
    built before checksums were recorded, or whose recorded ones are malformed), for the user who has just seen
    :func:`inspect_dataset` call it valid: they vouch for the bytes from now on, not for what happened to them
    before. Malformed ones are replaced only where the files match the digests they still hold
    (:func:`check_usable_digests`). Returns what was recorded; raises as :func:`record_without_checksums`."""
    record = record_without_checksums(prefix)
    sums = DatasetChecksums(BLOCK_BYTES, tuple(file_block_digests(bin_path(prefix))),
                            tuple(file_block_digests(idx_path(prefix))))
    check_usable_digests(prefix, record.get(CHECKSUMS_KEY), sums)
    with atomic_open(metadata_path(prefix), "w") as handle:
        json.dump({**record, CHECKSUMS_KEY: sums.record()}, handle, indent=2, sort_keys=True)
    return sums
