"""Weighted, deterministic blending of several datasets (Megatron-LM's ``BlendedDataset``).

Sample ``i`` of the blend comes from the dataset whose count lags its target the most: the argmax over ``d`` of
``weights[d] * max(i, 1) - count[d]`` (first index wins ties), exactly Megatron's ``build_blending_indices``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from megamythos.data.index_cache import MappedArraysPickle, load_or_build
from megamythos.errors import UserError

logger = logging.getLogger(__name__)


class BlendError(UserError, ValueError):
    """The blend asks a component for more samples than it has."""


def normalize_weights(weights: Sequence[float]) -> list[float]:
    """``weights / sum(weights)`` in float64, the sum taken by ``numpy.sum`` as Megatron's ``normalize`` takes it.

    numpy adds 8 or more values pairwise, not left to right as Python's ``sum`` does, so the two quotients can
    differ in the last bit; the greedy rule's ties and the components' ``ceil(n * w)`` sizes then differ too."""
    w = np.asarray(weights, dtype=np.float64)
    return (w / np.sum(w)).tolist()


def build_blending_indices(weights: Sequence[float], size: int) -> dict[str, np.ndarray]:
    """``dataset_index`` ``(size,)`` (which dataset: int16, Megatron's, for up to 32767 datasets, int32 beyond) and
    ``dataset_sample_index`` int64 ``(size,)`` (which of its samples) under Megatron's greedy largest-error rule.

    The rule is sequential, so the choices are one pass of scalar Python (timed in bench/README.md, "Data pipeline");
    the per-dataset sample numbers are then numbered with numpy. The caller caches the result.
    """
    w = [float(x) for x in weights]
    counts = [0] * len(w)
    rest = list(enumerate(w))[1:]
    chosen: list[int] = []
    for i in range(size):
        t = float(i) if i > 1 else 1.0
        best, best_error = 0, w[0] * t - counts[0]
        for d, weight in rest:
            error = weight * t - counts[d]
            if error > best_error:
                best, best_error = d, error
        chosen.append(best)
        counts[best] += 1
    dataset_index = np.array(chosen, dtype=np.int16 if len(w) <= np.iinfo(np.int16).max else np.int32)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    for d, count in enumerate(counts):
        dataset_sample_index[dataset_index == d] = np.arange(count)
    return {"dataset_index": dataset_index, "dataset_sample_index": dataset_sample_index}


def cached_blend_size(size: int) -> int:
    """The length of the blend cached for ``size`` samples: ``size`` rounded up to m * 2^e with 16 <= m < 32, at
    most 1/16 more. The greedy rule's first n choices do not depend on the length, so a blend of ``size`` is the
    first ``size`` entries of the cached one, and a resume whose length moved a little (skipped samples) reuses
    the entry instead of building and storing the whole index again."""
    shift = max(size.bit_length() - 5, 0)
    return -(-size >> shift) << shift


class BlendedDataset(MappedArraysPickle):
    """``size`` samples drawn from ``datasets`` in proportion to ``weights``; ``ds[i]`` is a component's sample."""

    def __init__(self, datasets: list[Any], weights: list[float], size: int, split_name: str,
                 cache_dir: str) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise BlendError(f"{len(datasets)} datasets but {len(weights)} weights")
        self.datasets = datasets
        self.weights = normalize_weights(weights)
        self.size = size
        cached = cached_blend_size(size)
        self.description = {
            "class": "BlendedDataset", "split": split_name, "size": cached, "weights": self.weights,
            "datasets": [d.description for d in datasets],
        }
        arrays = load_or_build(cache_dir, self.description, lambda: build_blending_indices(self.weights, cached))
        self.dataset_index = arrays["dataset_index"][:size]
        self.dataset_sample_index = arrays["dataset_sample_index"][:size]
        for d, (dataset, used) in enumerate(zip(datasets, np.bincount(self.dataset_index, minlength=len(datasets)))):
            if used > len(dataset):
                raise BlendError(f"the blend takes {used} samples from {dataset.description.get('prefix')} "
                                 f"which has {len(dataset)}")
            logger.info("%s blend: dataset %d weight %.4f achieved %.4f", split_name, d, self.weights[d],
                        used / max(size, 1))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        return self.datasets[int(self.dataset_index[idx])][int(self.dataset_sample_index[idx])]
