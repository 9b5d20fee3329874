"""GPT-style training samples from indexed datasets, following Megatron-LM's ``GPTDataset`` rules.

A split's documents are repeated for as many epochs as the requested sample count needs, the copies shuffled
together (``document_index``: one shuffle over all epochs, as Megatron's, not one per epoch), flattened, and cut
into samples of ``seq_length + 1`` tokens that overlap by one token (``sample_index``: the (position in
document_index, token offset) where each sample starts); the sample order is shuffled (``shuffle_index``). When the
last epoch would provide fewer than 80% of an epoch's samples it is shuffled separately so that it does not dilute
the earlier epochs (Megatron's ``separate_final_epoch``).

The three arrays equal megatron-core's for the same sizes, split and seed (same ``RandomState`` call sequence;
``bench/bench_data.py`` compares them with megatron-core 0.16 itself); the sample index is built with
vectorised numpy instead of Megatron's C++ helper, so no compiler is needed.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from megamythos.data.blended_dataset import BlendedDataset, normalize_weights
from megamythos.data.index_cache import MappedArraysPickle, load_or_build
from megamythos.data.indexed_dataset import IndexedDataset, bin_path, idx_path
from megamythos.errors import UserError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
# Megatron builds 0.5% more samples per blended component than its weight asks for, to satiate the blend.
BLEND_SURPLUS = 0.005
# Megatron shuffles the final epoch separately when it contributes fewer than this fraction of an epoch.
SEPARATE_FINAL_EPOCH_THRESHOLD = 0.80
# The rule by which blends become samples, recorded in each checkpoint ("sample_rule"; absent: rule 1). Rule 2 builds
# Megatron-LM's blends (:func:`build_train_valid_test_datasets`); rule 1 blended unweighted prefixes by their
# whole-dataset tokens, read a single weighted --data-path as the plain prefix and normalised weights by Python's sum.
SAMPLE_RULE = 2
INDEX_FORMAT_VERSION = 1


class DataConfigError(UserError, ValueError):
    """A data path, split string or sample request cannot be satisfied."""


def parse_split(split: str) -> list[float]:
    """``"969,30,1"`` (or ``969/30/1``, Megatron's two spellings) -> normalised train/valid/test fractions
    (missing parts are 0)."""
    invalid = f"{split!r} is not 1-3 finite non-negative train,valid,test weights such as '969,30,1'"
    try:
        parts = [float(p) for p in re.split(r"[,/]", split)]
    except ValueError as err:
        raise DataConfigError(invalid) from err
    if not 1 <= len(parts) <= 3 or not all(0 <= p < math.inf for p in parts) or not 0 < sum(parts) < math.inf:
        raise DataConfigError(invalid)
    parts += [0.0] * (3 - len(parts))
    return (np.array(parts, dtype=np.float64) / np.sum(parts)).tolist()


def split_bounds(fractions: list[float], num_documents: int) -> list[int]:
    """Document boundaries ``[0, a, b, num_documents]`` of the splits.

    Megatron-core's book-end rule: split ``i`` is ``[round(c_i * N), round(c_{i+1} * N))`` where ``c`` are the
    cumulative fractions (``convert_split_vector_to_split_matrix``).
    """
    cumulative = [0.0]
    for fraction in fractions:
        cumulative.append(cumulative[-1] + fraction)
    return [int(round(c * float(num_documents))) for c in cumulative]


def parse_data_path(data_path: list[str]) -> tuple[list[str], list[float] | None]:
    """``["P"]`` -> (["P"], None); ``["A", "B"]`` -> (["A", "B"], None), Megatron's unweighted form, each split
    blended by its datasets' epoch samples; ``["0.7", "A", "0.3", "B"]`` -> (["A", "B"], [0.7, 0.3] normalised).
    A malformed blend raises :class:`DataConfigError` quoting it; the caller, which knows the flag that gave it
    (``--data-path``, ``--train-data-path``, ...), names that flag before it."""
    def is_number(item: str) -> bool:
        try:
            float(item)
        except ValueError:
            return False
        return True

    if len(data_path) == 1 or not any(map(is_number, data_path)):
        return list(data_path), None
    blend = repr(" ".join(data_path))
    if len(data_path) % 2 != 0 or any(map(is_number, data_path[1::2])):
        raise DataConfigError(f"{blend} is invalid: give prefixes, or 'weight prefix' pairs")
    try:
        weights = [float(w) for w in data_path[0::2]]
    except ValueError as err:
        raise DataConfigError(f"{blend} is invalid: weights must be numbers ({err})") from err
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not 0 < sum(weights) < math.inf:
        raise DataConfigError(f"{blend} is invalid: weights must be finite numbers >= 0 with a positive, finite sum")
    return list(data_path[1::2]), normalize_weights(weights)


def combine_repeated(prefixes: list[str], weights: list[float],
                     flag: str = "--data-path") -> tuple[list[str], list[float]]:
    """``prefixes`` with each dataset named more than once (the same file by any path) kept once, at its first
    place, with the sum of its weights (a warning naming ``flag``, the blend's, says so). Two components of one
    dataset build the same indices (same documents, same seed), so a blend of both read every sample twice in a
    row; one component with the summed weight draws as many samples from it, each once per epoch."""
    combined: dict[str, tuple[str, float]] = {}
    for prefix, weight in zip(prefixes, weights):
        key = os.path.realpath(bin_path(prefix))
        first, total = combined.get(key, (prefix, 0.0))
        combined[key] = (first, total + weight)
    if len(combined) < len(prefixes):
        logger.warning("%s names a dataset more than once: blended once with the sum of its weights (%s), not as "
                       "copies that would read each sample twice in a row", flag,
                       ", ".join(f"{w:.4f} {p}" for p, w in combined.values()))
    return [p for p, _ in combined.values()], [w for _, w in combined.values()]


def num_epochs_for(tokens_per_epoch: int, num_samples: int, seq_length: int) -> int:
    """Fewest epochs holding ``num_samples * seq_length + 1`` tokens, in integers (a float quotient rounds past
    2^53)."""
    return max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))


def samples_before_final_epoch(tokens_per_epoch: int, num_epochs: int, seq_length: int) -> int:
    """Samples the epochs before the last one hold."""
    return ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length


def epoch_plan(tokens_per_epoch: int, num_samples: int, seq_length: int) -> tuple[int, bool]:
    """(epochs, whether the last one is shuffled apart) of ``num_samples`` samples, Megatron's rule: the fewest
    epochs holding them; the last one separate when the run takes less than ``SEPARATE_FINAL_EPOCH_THRESHOLD`` of
    it. The indices depend on ``num_samples`` only through these two."""
    num_epochs = num_epochs_for(tokens_per_epoch, num_samples, seq_length)
    if num_epochs == 1:
        return 1, False
    before_final = samples_before_final_epoch(tokens_per_epoch, num_epochs, seq_length)
    per_epoch = (tokens_per_epoch - 1) // seq_length
    return num_epochs, num_samples - before_final < int(SEPARATE_FINAL_EPOCH_THRESHOLD * per_epoch)


def id_dtype(largest: int) -> type[np.signedinteger]:
    """The dtype of document ids up to ``largest``: int32, Megatron's, where it holds them, else int64 (a dataset
    of 2^31 sequences or more, whose ids int32 would wrap to negative ones that read other documents)."""
    return np.int32 if largest <= np.iinfo(np.int32).max else np.int64


def document_ids(first: int, end: int) -> np.ndarray:
    """The ids ``[first, end)`` of a split's documents, in :func:`id_dtype`."""
    return np.arange(first, end, dtype=id_dtype(end - 1))


def build_document_index(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState,
                         separate_final_epoch: bool) -> np.ndarray:
    """``(num_epochs * len(documents),)`` in :func:`id_dtype` (int32 below 2^31 documents): ``num_epochs`` copies of
    the document ids shuffled together (Megatron's rule), the final epoch's copy apart when
    ``separate_final_epoch``. Epochs mix: the first ``len(documents)`` entries may hold a document twice and miss
    another."""
    if not separate_final_epoch or num_epochs == 1:
        largest = int(np.max(documents)) if len(documents) else 0
        index = np.tile(np.asarray(documents, dtype=id_dtype(largest)), num_epochs)
        rng.shuffle(index)
        return index
    first = build_document_index(documents, num_epochs - 1, rng, False)
    last = build_document_index(documents, 1, rng, False)
    return np.concatenate((first, last))


def build_sample_index(sizes: np.ndarray, document_index: np.ndarray, seq_length: int,
                       num_samples: int) -> np.ndarray:
    """int64 ``(num_samples + 1, 2)``: (position in ``document_index``, token offset) where each sample starts.

    Sample ``i`` covers flattened tokens ``[i * seq_length, (i + 1) * seq_length]`` (inclusive: seq_length + 1
    tokens). A start on a document boundary is recorded at offset 0 of the next non-empty document, and the first
    sample at (0, 0) even where ``document_index`` opens with empty documents, exactly as Megatron's
    ``build_sample_idx``.
    """
    ends = np.cumsum(sizes[document_index].astype(np.int64))
    starts = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    position = np.searchsorted(ends, starts, side="right")
    position[0] = 0
    offset = starts - (ends[position] - sizes[document_index[position]])
    return np.stack([position, offset], axis=1)


def build_shuffle_index(num_samples: int, total_size: int, rng: np.random.RandomState) -> np.ndarray:
    """Shuffled ``[0, num_samples)`` followed by shuffled ``[num_samples, total_size)`` (Megatron's rule)."""
    dtype = np.uint32 if total_size < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


def check_enough_tokens(tokens_per_epoch: int, seq_length: int, where: str = "the split") -> None:
    """Raise :class:`DataConfigError` naming ``where`` when its ``tokens_per_epoch`` hold no sample of
    ``seq_length + 1`` tokens."""
    if tokens_per_epoch <= seq_length:
        raise DataConfigError(
            f"{where} has {tokens_per_epoch} tokens, not enough for one sample of {seq_length + 1}; use more "
            "data, a smaller seq_length, or a larger share in --split"
        )


def build_gpt_indices(sizes: np.ndarray, documents: np.ndarray, num_samples: int, seq_length: int,
                      seed: int) -> dict[str, np.ndarray]:
    """``document_index``, ``sample_index`` and ``shuffle_index`` for ``num_samples`` samples of ``documents``."""
    tokens_per_epoch = int(sizes[documents].sum(dtype=np.int64))
    check_enough_tokens(tokens_per_epoch, seq_length)
    num_epochs, separate_final_epoch = epoch_plan(tokens_per_epoch, num_samples, seq_length)
    rng = np.random.RandomState(seed)
    document_index = build_document_index(documents, num_epochs, rng, separate_final_epoch)
    total = (num_epochs * tokens_per_epoch - 1) // seq_length
    sample_index = build_sample_index(sizes, document_index, seq_length, total)
    shuffled = samples_before_final_epoch(tokens_per_epoch, num_epochs, seq_length) if separate_final_epoch else total
    shuffle_index = build_shuffle_index(shuffled, total, rng)
    logger.info("GPT indices: %d sequences, %d tokens/epoch, %d epochs, %d samples (separate final epoch: %s)",
                len(documents), tokens_per_epoch, num_epochs, total, separate_final_epoch)
    return {"document_index": document_index, "sample_index": sample_index, "shuffle_index": shuffle_index}


def dataset_identity(prefix: str) -> dict[str, Any]:
    """What the indices of ``prefix`` depend on in its files: path, sizes and the .idx modification time."""
    stat = os.stat(idx_path(prefix))
    return {"prefix": os.path.abspath(prefix), "idx_bytes": stat.st_size, "idx_mtime_ns": stat.st_mtime_ns,
            "bin_bytes": os.path.getsize(prefix + ".bin")}


@dataclass(eq=False)
class GPTDataset(MappedArraysPickle):
    """``num_samples`` (or more: whole epochs) samples of ``seq_length + 1`` tokens from ``documents`` of ``indexed``.

    ``ds[i]`` -> ``{"tokens": int64 (seq_length + 1,)}``; ``tokens[:-1]`` are inputs and ``tokens[1:]`` labels.
    """

    indexed: IndexedDataset = field(repr=False)
    documents: np.ndarray = field(repr=False)
    num_samples: int
    seq_length: int
    seed: int
    split_name: str
    cache_dir: str

    def __post_init__(self) -> None:
        # keyed by the epochs, not the sample count: a resume after skipped samples (a rollback, the non-finite
        # guard) asks for a few more samples of the same epochs, which once built and stored the same index again
        first, end = int(self.documents[0]), int(self.documents[-1]) + 1  # a split is a range of documents
        tokens_per_epoch = int(self.indexed.sizes[first:end].sum(dtype=np.int64))
        # on every rank, before the cache's barrier (rank 0 alone would fail in the build, the others wait)
        check_enough_tokens(tokens_per_epoch, self.seq_length,
                            f"the {self.split_name} split of {self.indexed.path_prefix} (documents {first}-{end - 1})")
        self.tokens_per_epoch = tokens_per_epoch
        epochs = self.epochs_for(self.num_samples)
        self.description = {
            "class": "GPTDataset", "version": INDEX_FORMAT_VERSION, **dataset_identity(self.indexed.path_prefix),
            "split": self.split_name, "documents": [first, end], "epochs": epochs[0],
            "separate_final_epoch": epochs[1], "seq_length": self.seq_length, "seed": self.seed,
        }
        arrays = load_or_build(self.cache_dir, self.description, lambda: build_gpt_indices(
            self.indexed.sizes, self.documents, self.num_samples, self.seq_length, self.seed))
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]

    def epochs_for(self, num_samples: int) -> tuple[int, bool]:
        """:func:`epoch_plan` of this dataset's documents for ``num_samples`` samples: a count of the same plan as
        ``num_samples``'s reads the same sample order."""
        return epoch_plan(self.tokens_per_epoch, num_samples, self.seq_length)

    def __len__(self) -> int:
        return self.sample_index.shape[0] - 1

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        sample = int(self.shuffle_index[idx])
        doc_first, offset_first = (int(v) for v in self.sample_index[sample])
        doc_last, offset_last = (int(v) for v in self.sample_index[sample + 1])
        if doc_first == doc_last:
            parts = [self.indexed.get(int(self.document_index[doc_first]), offset_first,
                                      offset_last - offset_first + 1)]
        else:
            parts = [self.indexed.get(int(self.document_index[doc_first]), offset_first)]
            parts += [self.indexed.get(int(self.document_index[d])) for d in range(doc_first + 1, doc_last)]
            parts.append(self.indexed.get(int(self.document_index[doc_last]), 0, offset_last + 1))
        return {"tokens": np.concatenate(parts).astype(np.int64)}


def index_cache_dir(prefix: str, cache_dir: str | None) -> str:
    """Where ``prefix``'s cached files go: ``cache_dir`` (``--data-cache-dir``), else ``index-cache/`` beside it."""
    return cache_dir or os.path.join(os.path.dirname(os.path.abspath(prefix)), "index-cache")


def samples_per_epoch(dataset: Any) -> int | None:
    """Samples one pass over a :class:`GPTDataset`'s documents holds ((tokens - 1) // seq_length); None for a
    blend (its components' epochs differ)."""
    if not isinstance(dataset, GPTDataset):
        return None
    tokens = int(dataset.indexed.sizes[dataset.documents].sum(dtype=np.int64))
    return (tokens - 1) // dataset.seq_length


def split_problem(indexed: IndexedDataset, fractions: list[float], index: int, seq_length: int) -> str | None:
    """Why split ``index`` (of ``SPLIT_NAMES``) of ``indexed`` under the split ``fractions`` holds no sample of
    ``seq_length + 1`` tokens (no document falls in it, or its documents hold too few tokens), and what to do;
    None when it holds one."""
    first, end = split_bounds(fractions, len(indexed))[index:index + 2]
    name, prefix = SPLIT_NAMES[index], indexed.path_prefix
    if end <= first:
        return (f"{prefix} has {len(indexed)} documents, none of which fall in the {name} split (fraction "
                f"{fractions[index]:.4f}; splits take whole documents); use a dataset of more documents (a text file "
                "is one unless preprocessed with --txt-blank-line-documents) or change --split")
    try:
        check_enough_tokens(int(indexed.sizes[first:end].sum(dtype=np.int64)), seq_length,
                            f"the {name} split of {prefix} (documents {first}-{end - 1})")
    except DataConfigError as err:
        return str(err)
    return None


def _split_datasets(prefix: str, fractions: list[float], nums: list[int], seq_length: int, seed: int,
                    cache_dir: str | None) -> list[GPTDataset | None]:
    indexed = IndexedDataset(prefix)
    bounds = split_bounds(fractions, len(indexed))
    out: list[GPTDataset | None] = []
    for i, name in enumerate(SPLIT_NAMES):
        if fractions[i] == 0 or nums[i] == 0:
            out.append(None)
            continue
        if problem := split_problem(indexed, fractions, i, seq_length):
            raise DataConfigError(problem)
        documents = document_ids(bounds[i], bounds[i + 1])
        out.append(GPTDataset(indexed, documents, nums[i], seq_length, seed, name, index_cache_dir(prefix, cache_dir)))
    return out


def epoch_samples(prefix: str, fractions: list[float], seq_length: int) -> list[int]:
    """Per split (of ``SPLIT_NAMES``), the samples one epoch of ``prefix``'s share under ``fractions`` holds,
    ``(tokens - 1) // seq_length`` (0 where it holds fewer than ``seq_length + 1`` tokens)."""
    sizes = IndexedDataset(prefix).sizes
    bounds = split_bounds(fractions, len(sizes))
    return [max(int(sizes[bounds[i]:bounds[i + 1]].sum(dtype=np.int64)) - 1, 0) // seq_length
            for i in range(len(SPLIT_NAMES))]


def surplus_samples(weights: list[float], num: int) -> list[int]:
    """Samples to build of each weighted component of a blend of ``num`` (Megatron's
    ``_get_size_per_split_per_dataset`` with its surplus): ``ceil(ceil(num * w) * (1 + BLEND_SURPLUS))``."""
    return [math.ceil(math.ceil(num * w) * (1 + BLEND_SURPLUS)) for w in weights]


def unweighted_samples(epochs: list[int], num: int) -> list[int]:
    """Samples to build of each component of Megatron's unweighted blend of one split, blended by ``epochs`` (the
    samples one epoch of each component holds): one epoch each where ``num`` fits in their sum, as Megatron builds
    them; otherwise, where Megatron stops at one epoch of each, enough epochs for ``num`` (as for weights
    proportional to ``epochs``). A component of no sample asks for one, so that its split's problem is raised (or, in
    a split of fraction 0, that it is no dataset); one named twice (``A A B``) has twice its epoch's samples, and
    twice the weight."""
    total = sum(epochs)
    sizes = epochs if num <= total or not total else surplus_samples(normalize_weights(epochs), num)
    return [max(size, 1) for size in sizes]


def samples_changed_with_rule(data_path: list[str], one_weighted: bool = True) -> bool:
    """Whether the samples of the blend ``data_path`` differ between rule 1 and :data:`SAMPLE_RULE`: an unweighted
    blend of more than one dataset, a single weighted prefix where ``one_weighted`` (``--data-path``; a per-split path
    reads it as the prefix under both), or 8 weights or more (whose normalised values may differ in the last bit)."""
    prefixes, weights = parse_data_path(data_path)
    if weights is None:
        return len(set(prefixes)) > 1
    return (len(prefixes) == 1 and one_weighted) or len(prefixes) >= 8


def build_train_valid_test_datasets(
    data_path: list[str], split: str, seq_length: int, seed: int,
    train_valid_test_num_samples: tuple[int, int, int], cache_dir: str | None = None, flag: str = "--data-path",
    blend_one_weighted: bool = True,
) -> tuple[Any, Any, Any]:
    """Train/valid/test datasets with at least the requested sample counts (None where a split is empty or 0 asked).

    ``data_path`` is ``["PREFIX"]``, ``["P1", "P2", ...]`` or ``["w1", "P1", "w2", "P2", ...]``; with several
    prefixes each split is a :class:`BlendedDataset` of exactly the requested size over per-prefix
    :class:`GPTDataset` splits. As Megatron's ``BlendedMegatronDatasetBuilder``: a weighted component is built with
    :func:`surplus_samples`, a weighted single prefix too where ``blend_one_weighted`` (its blend's samples are the
    component's own); an unweighted blend weighs each split's components by the samples one epoch of their share
    holds (:func:`unweighted_samples`). A dataset named more than once is one component with the sum of its
    weights (:func:`combine_repeated`). Index arrays are cached in ``cache_dir`` (default: ``index-cache/`` next to
    each dataset). ``flag``: the flag that gave ``data_path``, named in the log lines about the blend.
    """
    if seq_length < 1:
        raise DataConfigError(f"seq_length={seq_length} is invalid: must be >= 1")
    if len(train_valid_test_num_samples) != 3 or any(n < 0 for n in train_valid_test_num_samples):
        raise DataConfigError(f"train_valid_test_num_samples={train_valid_test_num_samples} must be 3 counts >= 0")
    prefixes, weights = parse_data_path(data_path)
    fractions = parse_split(split)
    nums = list(train_valid_test_num_samples)
    copies: list[int] = []  # of an unweighted blend: how many times each dataset is named
    if len(prefixes) > 1:
        prefixes, combined = combine_repeated(prefixes, weights or [1.0] * len(prefixes), flag)
        if weights is None:
            copies = [round(c) for c in combined]
        elif unread := [p for p, w in zip(prefixes, combined) if w == 0]:  # Megatron asserts; its intent is plain
            logger.warning("%s gives %s the weight 0: left out of the blend", flag, ", ".join(unread))
            kept = [i for i, w in enumerate(combined) if w > 0]
            prefixes, weights = [prefixes[i] for i in kept], [combined[i] for i in kept]
        else:
            weights = combined
    if len(prefixes) == 1:
        if weights is not None and blend_one_weighted:
            nums = [surplus_samples([1.0], n)[0] for n in nums]
        return tuple(_split_datasets(prefixes[0], fractions, nums, seq_length, seed, cache_dir))  # type: ignore
    if weights is None:  # per split: by the samples an epoch of each dataset's share holds, as Megatron blends
        split_weights = [[c * e for c, e in zip(copies, epochs)]
                         for epochs in zip(*(epoch_samples(p, fractions, seq_length) for p in prefixes))]
        per_split = [unweighted_samples(w, n) if n else [0] * len(prefixes) for w, n in zip(split_weights, nums)]
        logger.info("unweighted %s: each split blends its datasets by the samples an epoch of their share holds: %s",
                    flag, "; ".join(f"{name} {', '.join(f'{w} {p}' for w, p in zip(ws, prefixes))}"
                                    for name, ws, n, f in zip(SPLIT_NAMES, split_weights, nums, fractions) if n and f))
    else:
        split_weights = [list(weights)] * len(SPLIT_NAMES)
        per_split = [surplus_samples(weights, n) for n in nums]
    components = [_split_datasets(p, fractions, list(n), seq_length, seed, cache_dir)
                  for p, n in zip(prefixes, zip(*per_split))]
    blended: list[BlendedDataset | None] = []
    for i, name in enumerate(SPLIT_NAMES):
        parts = [c[i] for c in components]
        if nums[i] == 0 or all(p is None for p in parts):
            blended.append(None)
            continue
        kept = [(p, w) for p, w in zip(parts, split_weights[i]) if p is not None]
        blended.append(BlendedDataset([p for p, _ in kept], [float(w) for _, w in kept], nums[i], name,
                                      cache_dir or kept[0][0].cache_dir))
    return tuple(blended)  # type: ignore[return-value]


def blend_of_split(data_path: list[str], split: str, index: int, seq_length: int,
                   flag: str = "--data-path") -> list[str]:
    """``data_path`` less the datasets whose share of split ``index`` (of ``SPLIT_NAMES``) under ``split`` holds no
    sample (:func:`split_problem`), with a warning naming them, why, and the weights the others are blended by;
    ``data_path`` itself when every dataset of a weight above 0 holds one, or none does (the build then says why the
    split is empty). A dataset of weight 0, read in no split, counts for neither (and is left out of a smaller blend).

    A small dataset in a blend (969,30,1 of fewer than 500 documents: no test document) would otherwise take the
    split away from the whole blend, the other datasets' held-out documents unread."""
    prefixes, weights = parse_data_path(data_path)
    fractions = parse_split(split)
    problems = [None if weights is not None and weights[i] == 0 else
                split_problem(IndexedDataset(prefix), fractions, index, seq_length)
                for i, prefix in enumerate(prefixes)]
    weighted = [i for i in range(len(prefixes)) if weights is None or weights[i] > 0]
    kept = [i for i in weighted if problems[i] is None]
    if len(kept) in (0, len(weighted)):
        return list(data_path)
    if weights is None:
        blend, how = [prefixes[i] for i in kept], "by size"
    else:
        blend = [item for i in kept for item in data_path[2 * i:2 * i + 2]]
        total = sum(weights[i] for i in kept)
        how = "weights " + ", ".join(f"{weights[i] / total:.4f} {prefixes[i]}" for i in kept)
    logger.warning("%s: the %s split blends %s alone (%s): %s", flag, SPLIT_NAMES[index],
                   " ".join(prefixes[i] for i in kept), how, "; ".join(p for p in problems if p))
    return blend


def build_per_split_datasets(
    blends: list[list[str]], seq_length: int, seed: int, train_valid_test_num_samples: tuple[int, int, int],
    cache_dir: str | None = None,
) -> tuple[Any, Any, Any]:
    """Megatron's ``blend_per_split``: split ``i`` reads the whole of ``blends[i]`` (every document; no ``--split``),
    each blend in ``--data-path``'s forms, built as :func:`build_train_valid_test_datasets` builds that split from a
    split string giving it everything, so its indices are those Megatron builds for the split. None where the blend
    is empty or 0 samples are asked."""
    out = []
    for i, (blend, num) in enumerate(zip(blends, train_valid_test_num_samples, strict=True)):
        if not blend or num == 0:
            out.append(None)
            continue
        whole = ",".join("1" if j == i else "0" for j in range(len(SPLIT_NAMES)))
        nums = tuple(num if j == i else 0 for j in range(len(SPLIT_NAMES)))
        out.append(build_train_valid_test_datasets(blend, whole, seq_length, seed, nums, cache_dir,
                                                   f"--{SPLIT_NAMES[i]}-data-path", False)[i])  # type: ignore
    return tuple(out)  # type: ignore[return-value]
