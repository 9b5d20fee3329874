"""Concatenate indexed datasets (documents of each input, in argument order) into one."""
from __future__ import annotations

import logging

from megamythos.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder, IndexedDatasetError
from megamythos.data.metadata import check_same_vocabulary, read_dataset_metadata, write_dataset_metadata
from megamythos.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def merge_datasets(prefixes: list[str], output_prefix: str) -> IndexedDataset:
    """Write ``output_prefix.{bin,idx}`` holding every document of ``prefixes`` in order; returns it opened.

    All inputs must share a dtype and, where they carry a tokenizer record, the same tokenizer; the record of
    the first input that has one is carried over with updated counts.
    """
    if not prefixes:
        raise ValueError("merge_datasets needs at least one input prefix")
    datasets = [IndexedDataset(p) for p in prefixes]
    records = [read_dataset_metadata(p) for p in prefixes]
    for prefix, dataset, record in zip(prefixes[1:], datasets[1:], records[1:]):
        if dataset.dtype != datasets[0].dtype:
            raise IndexedDatasetError(
                f"dtype mismatch: {prefixes[0]} stores {datasets[0].dtype} but {prefix} stores {dataset.dtype}"
            )
        check_same_vocabulary(prefixes[0], records[0], prefix, record)
    with IndexedDatasetBuilder(output_prefix, datasets[0].dtype) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
        builder.finalize()
    first = next((r for r in records if r is not None), None)
    if first is not None:
        fields = {k: v for k, v in first.items()
                  if k not in ("format", "vocab_size", "tokenizer_fingerprint", "tokenizer_model")}
        fields.update(num_documents=sum(len(d.document_indices) - 1 for d in datasets), num_tokens=builder.num_tokens)
        write_dataset_metadata(output_prefix, Tokenizer(first["tokenizer_model"]), **fields)
    logger.info("merged %d datasets into %s", len(prefixes), output_prefix)
    return IndexedDataset(output_prefix)
