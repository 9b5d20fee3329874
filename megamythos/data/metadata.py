"""The tokenizer record kept next to a dataset.

For a dataset prefix ``P`` (e.g. ``out/corpus_text_document``) preprocessing writes

* ``P.json``: ``{"format": "MMIDIDX", "vocab_size", "tokenizer_fingerprint" (sha256 of the .model),
  "tokenizer_model" (file name of the copy below), "dtype", "num_documents", "num_tokens", "append_eod",
  "eod_id", "json_key"}``;
* ``P.tokenizer.model``: a copy of the SentencePiece model that produced the tokens.

Both are written after the ``.bin``/``.idx`` are in place. Megatron ignores both files, and datasets made by Megatron simply have no record (:func:`read_dataset_metadata`
returns None for them).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

from megamythos.data.atomic import atomic_open
from megamythos.tokenizer import Tokenizer


class DatasetMismatchError(ValueError):
    """Two datasets (or a dataset and a tokenizer) were made with different vocabularies."""


def metadata_path(prefix: str) -> str:
    return prefix + ".json"


def tokenizer_copy_path(prefix: str) -> str:
    return prefix + ".tokenizer.model"


def write_dataset_metadata(prefix: str, tokenizer: Tokenizer, **fields: Any) -> dict[str, Any]:
    """Copy the tokenizer next to ``prefix`` and write ``prefix.json``; returns the record written."""
    copy = tokenizer_copy_path(prefix)
    if os.path.abspath(copy) != tokenizer.model_path:
        with atomic_open(copy) as dst, open(tokenizer.model_path, "rb") as src:
            shutil.copyfileobj(src, dst)
    record = {
        "format": "MMIDIDX",
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "tokenizer_model": os.path.basename(copy),
        **fields,
    }
    with atomic_open(metadata_path(prefix), "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
    return record


def read_dataset_metadata(prefix: str) -> dict[str, Any] | None:
    """The record of ``prefix`` with ``tokenizer_model`` resolved to an absolute path, or None if there is none."""
    path = metadata_path(prefix)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        record = json.load(handle)
    record["tokenizer_model"] = os.path.join(os.path.dirname(os.path.abspath(path)), record["tokenizer_model"])
    return record


def check_same_vocabulary(name_a: str, record_a: dict[str, Any] | None, name_b: str,
                          record_b: dict[str, Any] | None) -> None:
    """Raise :class:`DatasetMismatchError` naming both sides if two records disagree on the tokenizer.

    A side without a record (a Megatron-made dataset) cannot be checked and is accepted.
    """
    if record_a is None or record_b is None:
        return
    for key in ("vocab_size", "tokenizer_fingerprint"):
        if record_a[key] != record_b[key]:
            raise DatasetMismatchError(
                f"vocabulary mismatch: {name_a} has {key}={record_a[key]!r} but {name_b} has {key}={record_b[key]!r}; "
                "datasets must be tokenised with the same tokenizer model"
            )
