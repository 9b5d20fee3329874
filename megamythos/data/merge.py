"""Concatenate indexed datasets (documents of each input, in argument order) into one."""
from __future__ import annotations

import logging

from megamythos.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexedDatasetError,
    refuse_to_replace,
)
from megamythos.data.metadata import announce_dataset, check_same_vocabulary, read_dataset_metadata
from megamythos.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def merge_datasets(prefixes: list[str], output_prefix: str, overwrite: bool = False) -> IndexedDataset:
    """Write ``output_prefix.{bin,idx}`` holding every document of ``prefixes`` in order; returns it opened.

    All inputs must share a dtype and, where they carry a tokenizer record, the same tokenizer; the record of
    the first input that has one is carried over with updated counts, and is in place before the ``.idx`` is
    (:func:`~megamythos.data.metadata.announce_dataset`). An existing dataset at ``output_prefix`` is replaced
    only with ``overwrite``.
    """
    if not prefixes:
        raise ValueError("merge_datasets needs at least one input prefix")
    refuse_to_replace(output_prefix, overwrite)
    datasets = [IndexedDataset(p) for p in prefixes]
    records = [read_dataset_metadata(p) for p in prefixes]
    for prefix, dataset, record in zip(prefixes[1:], datasets[1:], records[1:]):
        if dataset.dtype != datasets[0].dtype:
            raise IndexedDatasetError(
                f"dtype mismatch: {prefixes[0]} stores {datasets[0].dtype} but {prefix} stores {dataset.dtype}"
            )
        check_same_vocabulary(prefixes[0], records[0], prefix, record)
    first = next((r for r in records if r is not None), None)
    with IndexedDatasetBuilder(output_prefix, datasets[0].dtype) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
        if first is None:
            announce_dataset(output_prefix, None)
        else:
            fields = {k: v for k, v in first.items()
                      if k not in ("format", "vocab_size", "tokenizer_fingerprint", "tokenizer_model")}
            fields.update(num_documents=sum(len(d.document_indices) - 1 for d in datasets),
                          num_tokens=builder.num_tokens)
            announce_dataset(output_prefix, Tokenizer(first["tokenizer_model"]), **fields)
        builder.finalize()
    logger.info("merged %d datasets into %s", len(prefixes), output_prefix)
    return IndexedDataset(output_prefix)
