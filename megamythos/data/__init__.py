"""Data pipeline: Megatron-compatible indexed datasets, offline preprocessing, GPT sample construction.

Modules: :mod:`indexed_dataset` (MMIDIDX reader/writer), :mod:`metadata` (tokenizer record next to a dataset),
:mod:`sources` (input formats), :mod:`preprocess` (multiprocess tokenisation), :mod:`merge`, :mod:`inspect`,
:mod:`gpt_dataset` (samples, splits, blending), :mod:`sampler` (resumable batch sampler),
:mod:`default_corpus` (the stdlib corpus the default run trains on).
"""
from megamythos.data.metadata import read_dataset_metadata

__all__ = ["read_dataset_metadata"]
