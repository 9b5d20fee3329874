"""Statistics, full validation and sample decoding of an indexed dataset (``data_prep/inspect_dataset.py``)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from megamythos.data.indexed_dataset import IndexedDataset, bin_path, idx_path
from megamythos.data.metadata import read_dataset_metadata
from megamythos.data.tokenizer import Tokenizer


def inspect_dataset(prefix: str, num_samples: int = 3, tokenizer_model: str | None = None,
                    max_sample_tokens: int = 200, seed: int = 0) -> dict[str, Any]:
    """Open and fully validate ``prefix`` (raises :class:`IndexedDatasetError`), then report on it.

    Returns ``{"prefix", "dtype", "sequences", "documents", "tokens", "bin_bytes", "idx_bytes", "length_min",
    "length_mean", "length_max", "metadata", "samples"}`` where ``samples`` maps a document index to its first
    ``max_sample_tokens`` tokens decoded (with the recorded tokenizer, or ``tokenizer_model`` if given).
    """
    dataset = IndexedDataset(prefix)
    dataset.validate()
    metadata = read_dataset_metadata(prefix)
    sizes = dataset.sizes
    report: dict[str, Any] = {
        "prefix": prefix,
        "dtype": dataset.dtype.name,
        "sequences": len(dataset),
        "documents": len(dataset.document_indices) - 1,
        "tokens": dataset.num_tokens,
        "bin_bytes": os.path.getsize(bin_path(prefix)),
        "idx_bytes": os.path.getsize(idx_path(prefix)),
        "length_min": int(sizes.min()) if len(sizes) else 0,
        "length_mean": float(sizes.mean()) if len(sizes) else 0.0,
        "length_max": int(sizes.max()) if len(sizes) else 0,
        "metadata": metadata,
        "samples": {},
    }
    model = tokenizer_model or (metadata or {}).get("tokenizer_model")
    if model and len(dataset):
        tokenizer = Tokenizer(model)
        picks = np.random.default_rng(seed).choice(len(dataset), size=min(num_samples, len(dataset)), replace=False)
        for i in sorted(int(p) for p in picks):
            report["samples"][i] = tokenizer.decode(dataset.get(i, 0, min(int(sizes[i]), max_sample_tokens)))
    return report
