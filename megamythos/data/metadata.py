"""The tokenizer record kept next to a dataset.

For a dataset prefix ``P`` (e.g. ``out/corpus_text_document``) preprocessing writes

* ``P.json``: ``{"format": "MMIDIDX", "vocab_size", "tokenizer_fingerprint" (sha256 of the .model),
  "tokenizer_model" (file name of the copy below), "dtype", "num_documents", "num_tokens", "append_eod",
  "eod_id", "json_key"}``;
* ``P.tokenizer.model``: a copy of the SentencePiece model that produced the tokens.

Both are written before the ``.idx`` is renamed into place (a dataset is never visible without them). Megatron
ignores both files, and datasets made by Megatron simply have no record (:func:`read_dataset_metadata` returns
None for them).

Checkpoint tag directories and export directories carry the same kind of record (:func:`write_tokenizer_record`):
``tokenizer.json`` (``vocab_size``, ``tokenizer_fingerprint``, ``tokenizer_model``) next to ``tokenizer.model``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np

from megamythos.data.atomic import atomic_open
from megamythos.data.checksums import RECORD_KEY as CHECKSUMS_KEY
from megamythos.data.checksums import DatasetChecksums, DatasetCorruptError, verify_file
from megamythos.data.indexed_dataset import (
    DatasetExistsError,
    IndexedDataset,
    IndexedDatasetError,
    bin_path,
    dataset_exists,
    id_range,
    idx_path,
    merge_ranges,
)
from megamythos.data.manifest import file_sha256
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import UserError, read_json_object

logger = logging.getLogger(__name__)

RECORD_KEYS = ("vocab_size", "tokenizer_fingerprint", "tokenizer_model")
RECORD_REMEDY = ("rebuild the dataset with data_prep/preprocess_data.py, or restore the checkpoint's tokenizer.json "
                 "(or use another checkpoint tag)")


class DatasetMismatchError(UserError, ValueError):
    """Two datasets (or a dataset and a tokenizer) were made with different vocabularies."""


class MetadataError(UserError, ValueError):
    """A tokenizer record (a dataset's ``P.json``, a checkpoint's ``tokenizer.json``) is empty or invalid."""


def metadata_path(prefix: str) -> str:
    return prefix + ".json"


def tokenizer_copy_path(prefix: str) -> str:
    return prefix + ".tokenizer.model"


def dataset_files(prefix: str) -> list[str]:
    """The files of the dataset at ``prefix``: ``.bin``, ``.idx``, the record and its tokenizer copy (those whose
    temporaries a run writing ``prefix`` may judge stale)."""
    return [bin_path(prefix), idx_path(prefix), metadata_path(prefix), tokenizer_copy_path(prefix)]


def write_tokenizer_record(record_path: str | os.PathLike, copy_path: str | os.PathLike, tokenizer: Tokenizer,
                           **fields: Any) -> dict[str, Any]:
    """Copy the tokenizer's ``.model`` to ``copy_path`` and write the JSON record ``record_path`` naming it.

    The record holds ``vocab_size``, ``tokenizer_fingerprint`` (sha256 of the .model), ``tokenizer_model`` (the
    copy's file name, relative to the record) and ``fields``; returns the record written.
    """
    copy = os.path.abspath(copy_path)
    if copy != tokenizer.model_path:
        with atomic_open(copy) as dst, open(tokenizer.model_path, "rb") as src:
            shutil.copyfileobj(src, dst)
    record = {
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "tokenizer_model": os.path.basename(copy),
        **fields,
    }
    with atomic_open(record_path, "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
    return record


def read_tokenizer_record(record_path: str | os.PathLike) -> dict[str, Any] | None:
    """A record written by :func:`write_tokenizer_record`, ``tokenizer_model`` resolved to an absolute path;
    None if there is no such file. An empty or invalid file, or one without the tokenizer fields, raises
    :class:`MetadataError` naming it."""
    if not os.path.isfile(record_path):
        return None
    record = read_json_object(record_path, MetadataError, RECORD_REMEDY)
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise MetadataError(f"{record_path} lacks {', '.join(missing)}; {RECORD_REMEDY}")
    record["tokenizer_model"] = os.path.join(os.path.dirname(os.path.abspath(record_path)), record["tokenizer_model"])
    return record


def refuse_to_replace(prefix: str, overwrite: bool) -> None:
    """Raise :class:`~megamythos.data.indexed_dataset.DatasetExistsError` when ``prefix`` holds a dataset, or
    the record or tokenizer copy of one, and ``overwrite`` is off: a saved dataset is replaced only when asked,
    whatever made it."""
    if overwrite:
        return
    if dataset_exists(prefix):
        raise DatasetExistsError(f"{prefix}.bin and .idx already hold a dataset; pass --overwrite to replace it, or "
                                 "choose another --output-prefix")
    taken = [path for path in (metadata_path(prefix), tokenizer_copy_path(prefix)) if os.path.exists(path)]
    if taken:
        raise DatasetExistsError(f"{taken[0]} already exists (the record of a dataset at {prefix}, or a file of "
                                 "yours); pass --overwrite to replace it, or choose another --output-prefix")


def write_dataset_metadata(prefix: str, tokenizer: Tokenizer, **fields: Any) -> dict[str, Any]:
    """Copy the tokenizer next to ``prefix`` and write ``prefix.json``; returns the record written."""
    return write_tokenizer_record(metadata_path(prefix), tokenizer_copy_path(prefix), tokenizer, format="MMIDIDX",
                                  **fields)


def announce_dataset(prefix: str, tokenizer: Tokenizer | None, checksums: DatasetChecksums | None = None,
                     **fields: Any) -> None:
    """Before new ``prefix.{bin,idx}`` are renamed into place: hide any old dataset there (remove its ``.idx``) and
    write the new tokens' record with their ``checksums`` (:mod:`megamythos.data.checksums`), or remove the old
    record where the tokens have none (a merge of Megatron-made datasets), so that no reader ever sees the new
    tokens with another tokenizer's record or without theirs."""
    if os.path.exists(idx_path(prefix)):
        os.remove(idx_path(prefix))
    if tokenizer is not None:
        if checksums is not None:
            fields[CHECKSUMS_KEY] = checksums.record()
        write_dataset_metadata(prefix, tokenizer, **fields)
        return
    for path in (metadata_path(prefix), tokenizer_copy_path(prefix)):
        if os.path.exists(path):
            os.remove(path)


def read_dataset_metadata(prefix: str, sha256: Callable[[str], str] = file_sha256) -> dict[str, Any] | None:
    """The record of ``prefix`` with ``tokenizer_model`` resolved to an absolute path, or None if there is none;
    ``sha256`` gives a file's digest (a start passes cached ones: :class:`~megamythos.data.digest_cache.FileDigests`).

    A dataset renamed or copied to another prefix keeps a record naming its old copy: ``prefix``'s own copy
    (``prefix.tokenizer.model``) is read instead when the named one is not the recorded fingerprint (gone, or the
    old prefix rebuilt with another tokenizer) and its own is; without either, :class:`MetadataError` says where
    to put the tokenizer. A named copy whose sha256 is not the recorded fingerprint (a corrupt copy or record) is
    refused the same way, naming both."""
    record = read_tokenizer_record(metadata_path(prefix))
    if record is None:
        return None
    named, fingerprint = record["tokenizer_model"], record["tokenizer_fingerprint"]
    own = os.path.abspath(tokenizer_copy_path(prefix))
    for path in dict.fromkeys((named, own)):  # the named copy, else prefix's own
        if os.path.isfile(path) and sha256(path) == fingerprint:
            record["tokenizer_model"] = path
            return record
    if os.path.isfile(named):
        raise MetadataError(f"{named} is not the tokenizer {metadata_path(prefix)} records (sha256 "
                            f"{file_sha256(named)[:12]}..., recorded {fingerprint[:12]}...): the copy or the record "
                            "is corrupt, or one was replaced; put the tokenizer the dataset was built with at "
                            f"{named}, or rebuild the dataset with data_prep/preprocess_data.py --overwrite")
    found = (f"{own} is another tokenizer (sha256 {file_sha256(own)[:12]}...)" if os.path.isfile(own)
             else f"neither is {own}")
    raise MetadataError(f"{metadata_path(prefix)} names the tokenizer copy {named}, which does not exist (the "
                        f"dataset was renamed or copied without it?), and {found}; put the tokenizer the dataset was "
                        f"built with (sha256 {fingerprint[:12]}...) at {own}")


def check_record_counts(prefix: str, record: dict[str, Any] | None, shape: dict[str, int]) -> None:
    """Raise :class:`~megamythos.data.indexed_dataset.IndexedDatasetError` if ``prefix``'s record counts other
    documents or tokens than its data holds (``shape``: ``IndexedDataset.shape()``): the ``.bin``/``.idx`` were
    rebuilt beside an old record (Megatron's preprocessing into the same prefix, a copy), so its tokenizer may
    not be theirs."""
    for field, key in (("num_documents", "documents"), ("num_tokens", "tokens")):
        if record is not None and field in record and record[field] != shape[key]:
            raise IndexedDatasetError(f"{prefix}.json records {field}={record[field]} but the dataset holds "
                                      f"{shape[key]} {key}: the record belongs to other data; rebuild the dataset "
                                      "with data_prep/preprocess_data.py (or remove the stale record "
                                      f"{prefix}.json and {prefix}.tokenizer.model if the tokens are Megatron's)")


def check_dataset(dataset: IndexedDataset, record: dict[str, Any] | None) -> None:
    """Raise :class:`~megamythos.data.indexed_dataset.IndexedDatasetError` if ``dataset``'s index is corrupt (every
    pointer checked against the sizes: :meth:`IndexedDataset.validate`) or its ``record`` counts other documents
    or tokens than it holds (:func:`check_record_counts`): what ``inspect_dataset.py`` calls INVALID short of the
    token ids. O(sequences): the ``.bin`` is not read."""
    dataset.validate()
    check_record_counts(dataset.path_prefix, record, dataset.shape())


def verified_token_range(dataset: IndexedDataset, record: dict[str, Any] | None) -> tuple[int, int] | None:
    """``dataset``'s token-id range (:meth:`IndexedDataset.token_range`), in the same pass that checks its ``.idx``
    and ``.bin`` against the checksums its ``record`` holds (:func:`megamythos.data.checksums.verify_file`: raises
    :class:`~megamythos.data.checksums.DatasetCorruptError` naming the first block that differs, or, where the
    record on disk no longer holds the checksums ``record`` does, that the dataset changed while it was read: a
    writer replacing it, not a corrupt byte). A dataset without recorded checksums (made by Megatron, or by
    preprocessing before 2026-12-07) is scanned unverified, with a warning."""
    prefix = dataset.path_prefix
    sums = DatasetChecksums.from_record(record, metadata_path(prefix))
    if sums is None:
        if record is not None:  # a record-less dataset already had its warning (resolve_data)
            logger.warning("dataset %s records no checksums (built before they were recorded): a byte corrupted "
                           "since it was written cannot be detected; `python data_prep/inspect_dataset.py %s "
                           "--add-checksums` records them for its files as they are now", prefix, prefix)
        return dataset.token_range()
    check_record_counts(prefix, record, dataset.shape())  # other tokens beside an old record: said as such
    try:
        verify_file(idx_path(prefix), sums.idx, sums.block_bytes)
        return merge_ranges(verify_file(bin_path(prefix), sums.bin, sums.block_bytes,
                                        lambda block: id_range(np.frombuffer(block, dataset.dtype))))
    except (DatasetCorruptError, FileNotFoundError) as err:
        if _recorded_checksums(prefix) != record[CHECKSUMS_KEY]:  # republished since `record` was read
            raise DatasetCorruptError(f"{metadata_path(prefix)} changed while {prefix} was being read (a preprocessing "
                                      "or merge is replacing the dataset): run again when the writer is done") from err
        if isinstance(err, FileNotFoundError):  # removed between the open and the read, its record left in place
            raise DatasetCorruptError(f"{err.filename} was removed while {prefix} was being read: restore the dataset "
                                      "(or wait for the writer replacing it), then run again") from err
        raise


def _recorded_checksums(prefix: str) -> Any:
    """The checksums ``prefix``'s record holds now, as stored (None where it cannot be read)."""
    try:
        with open(metadata_path(prefix), encoding="utf-8") as handle:
            return json.load(handle).get(CHECKSUMS_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def check_same_vocabulary(name_a: str, record_a: dict[str, Any] | None, name_b: str,
                          record_b: dict[str, Any] | None,
                          remedy: str = "datasets must be tokenised with the same tokenizer model") -> None:
    """Raise :class:`DatasetMismatchError` naming both sides and ``remedy`` if two records disagree on the tokenizer.

    A side without a record (a Megatron-made dataset) cannot be checked and is accepted.
    """
    if record_a is None or record_b is None:
        return
    keys = ("vocab_size", "tokenizer_fingerprint")
    for key, other in (keys, keys[::-1]):
        if record_a[key] != record_b[key]:
            raise DatasetMismatchError(
                f"vocabulary mismatch: {name_a} has {key}={record_a[key]!r} but {name_b} has {key}={record_b[key]!r} "
                f"({other} {record_a[other]!r} vs {record_b[other]!r}); {remedy}"
            )
