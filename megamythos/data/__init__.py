"""Data pipeline: Megatron-compatible indexed datasets, offline preprocessing, GPT sample construction.

Modules: :mod:`indexed_dataset` (MMIDIDX reader/writer), :mod:`metadata` (tokenizer record next to a dataset),
:mod:`checksums` (block checksums of a dataset's files, recorded and verified),
:mod:`sources` (input formats), :mod:`preprocess` (multiprocess tokenisation), :mod:`merge`, :mod:`inspection`,
:mod:`gpt_dataset` (samples, splits, blending), :mod:`sampler` (resumable batch sampler),
:mod:`default_corpus` (the stdlib corpus the default run trains on), :mod:`pretraining` (a run's checked datasets
and micro-batches from its recorded settings, shared by the trainer and evaluation), :mod:`atomic` (files written
whole or not at all), :mod:`manifest` (reading and checking a directory's ``checksums.json``).
"""
from megamythos.data.metadata import read_dataset_metadata

__all__ = ["read_dataset_metadata"]
