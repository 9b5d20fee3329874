"""GPT sample construction, splits, blending, index caching and the resumable sampler."""
from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest

from megamythos.data import index_cache
from megamythos.data.blended_dataset import build_blending_indices, cached_blend_size
from megamythos.data.gpt_dataset import (
    DataConfigError,
    build_gpt_indices,
    build_per_split_datasets,
    build_sample_index,
    build_train_valid_test_datasets,
    document_ids,
    parse_data_path,
    parse_split,
    split_bounds,
)
from megamythos.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megamythos.data.pretraining import DataRecipe, DataSources, build_datasets, held_out_overlap
from megamythos.data.sampler import PretrainingSampler
from tests.helpers import make_dataset


def megatron_sample_index(sizes, document_index, seq_length, num_samples):
    """Literal transcription of Megatron-LM's C++ ``build_sample_idx`` (drop last, one extra token)."""
    out = [(0, 0)]
    doc_pos, offset = 0, 0
    while len(out) <= num_samples:
        remaining = seq_length + 1
        while remaining != 0:
            length = sizes[document_index[doc_pos]] - offset
            remaining -= length
            if remaining <= 0:
                offset += remaining + length - 1
                remaining = 0
            else:
                doc_pos += 1
                offset = 0
        out.append((doc_pos, offset))
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_sample_index_equals_megatron_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, size=200).astype(np.int32)  # includes empty documents
    document_index = rng.permutation(np.tile(np.arange(200, dtype=np.int32), 2))
    seq_length = int(rng.integers(2, 50))
    num_samples = (int(sizes[document_index].sum()) - 1) // seq_length
    ours = build_sample_index(sizes, document_index, seq_length, num_samples)
    assert np.array_equal(ours, megatron_sample_index(sizes, document_index, seq_length, num_samples))


def test_the_first_sample_starts_at_position_0_when_the_shuffle_opens_with_an_empty_document() -> None:
    """Megatron's build_sample_idx (helpers.cpp, commit d98e8a64ddf34856e74b24714e3bedb2f5a39553, compiled and run)
    records sample 0 at (0, 0) whatever document opens the shuffle; ours skipped empty ones, (2, 0) here: the same
    tokens, but not the array Megatron builds."""
    sizes = np.array([0, 0, 3, 2], dtype=np.int32)
    ours = build_sample_index(sizes, np.array([0, 1, 2, 3], dtype=np.int32), 2, 2)
    assert ours.tolist() == [[0, 0], [2, 2], [3, 1]]


def test_epochs_are_shuffled_together_as_megatron_does() -> None:
    """Megatron's ``_build_document_index``: the epochs' copies of the documents in one shuffle, not one per epoch
    (docs/data.md says so); its ``_build_shuffle_index`` then shuffles all samples at once."""
    sizes = np.full(50, 11, dtype=np.int32)  # 550 tokens per epoch, 54 samples of 10 (+1) per epoch
    documents = np.arange(50, dtype=np.int32)
    idx = build_gpt_indices(sizes, documents, num_samples=100, seq_length=10, seed=3)  # 2 epochs, not separate
    rng = np.random.RandomState(3)
    megatron = np.mgrid[0:2, 0:50][1]
    megatron[:] = documents
    megatron = megatron.reshape(-1).astype(np.int32)
    rng.shuffle(megatron)
    assert np.array_equal(idx["document_index"], megatron)
    assert np.bincount(idx["document_index"][:50], minlength=50).max() == 2  # the first epoch's share mixes


def test_epochs_and_iterations_past_2_to_the_53_tokens_are_counted_in_integers() -> None:
    """Found 2026-12-07 (scale audit): the epochs a dataset needs and the iterations of --train-tokens were float
    quotients, exact only below 2^53 (9e15 tokens): 2^43 samples of 1024 tokens from an epoch of 2^20 tokens need
    8589934593 epochs, and the float said 8589934592, one too few for the samples asked."""
    from megamythos.data.gpt_dataset import num_epochs_for
    from megamythos.training.arguments import parse_args

    assert num_epochs_for(2**20, 2**43, 1024) == 8589934593
    assert num_epochs_for(1000, 10, 100) == 2 and num_epochs_for(1001, 10, 100) == 1
    args = parse_args(["--train-tokens", str(2**60 + 1), "--seq-length", "1024"])
    assert args.total_iters(1) == 2**50 + 1  # (2^60 + 1) / 1024 tokens per step, rounded up (a float said 2^50)
    args = parse_args(["--train-tokens", str(2**63 - 1), "--seq-length", "1024"])
    assert args.total_iters(1, (5, 2**63 - 1 - 1024)) == 6


def test_document_ids_past_2_to_the_31_are_kept_not_wrapped_to_other_documents() -> None:
    """A dataset of 2^31 sequences or more (a merged corpus of billions of documents; the .idx counts them in
    uint64): int32 ids, Megatron's, wrap to negative ones past 2^31 - 1, which index the dataset from its end, so
    the split's samples read other documents without a word. Below 2^31 the ids stay int32, Megatron's arrays."""
    assert document_ids(0, 4).dtype == np.int32 and document_ids(0, 2**31).dtype == np.int32
    first = 2**31 - 2
    documents = document_ids(first, first + 4)
    assert documents.tolist() == [first, first + 1, first + 2, first + 3]
    sizes = np.broadcast_to(np.int32(11), (first + 4,))  # one size per sequence, without 8 GB of memory
    idx = build_gpt_indices(sizes, documents, num_samples=6, seq_length=10, seed=0)  # 2 epochs
    assert sorted(idx["document_index"].tolist()) == sorted(2 * documents.tolist())
    assert idx["sample_index"][-1].tolist() == [7, 3]  # sample 8 starts at token 80, the 8th document's 4th


def test_separate_final_epoch_keeps_last_epoch_samples_at_the_end() -> None:
    sizes = np.full(10, 11, dtype=np.int32)  # 110 tokens per epoch, 10 samples of 10 (+1) per epoch
    idx = build_gpt_indices(sizes, np.arange(10, dtype=np.int32), num_samples=12, seq_length=10, seed=0)
    # 2 epochs; the final one supplies 3 < 0.8 * 10 samples, so it is shuffled separately
    assert sorted(idx["shuffle_index"][:10].tolist()) == list(range(10))
    assert sorted(idx["document_index"][:10].tolist()) == list(range(10))


def test_samples_are_seq_length_plus_one_and_pack_across_documents(tmp_path) -> None:
    prefix = make_dataset(tmp_path / "ds", 50)
    train, valid, test = build_train_valid_test_datasets([prefix], "1", 16, 1234, (40, 0, 0), str(tmp_path / "c"))
    assert valid is None and test is None and len(train) >= 40
    flat = np.concatenate([np.full(len(train.indexed[int(d)]), int(d)) for d in train.document_index])
    for i in range(len(train)):
        tokens = train[i]["tokens"]
        assert tokens.dtype == np.int64 and tokens.shape == (17,)
        start = int(train.shuffle_index[i]) * 16
        assert np.array_equal(tokens, flat[start:start + 17])


def test_split_is_document_level_and_disjoint(tmp_path) -> None:
    prefix = make_dataset(tmp_path / "ds", 1000)
    splits = build_train_valid_test_datasets([prefix], "969,30,1", 8, 1, (3000, 100, 10), str(tmp_path / "c"))
    seen = [set(np.concatenate([s[i]["tokens"] for i in range(len(s))]).tolist()) for s in splits]
    bounds = split_bounds(parse_split("969,30,1"), 1000)
    assert bounds == [0, 969, 999, 1000]
    for docs, lo, hi in zip(seen, bounds, bounds[1:]):
        assert docs <= set(range(lo, hi))
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_split_parsing_rules() -> None:
    assert parse_split("98,2") == [0.98, 0.02, 0.0]
    # megatron-core book-ends: round(0), round(1.5) = 2, round(2.25) = 2, round(3)
    assert split_bounds([0.5, 0.25, 0.25], 3) == [0, 2, 2, 3]
    assert parse_split("969/30/1") == parse_split("969,30,1")  # Megatron's two spellings
    for bad in ("", "1.2.3", "nan,1,1", "-1,2", "1,1,1,1", "0,0,0", "1e400"):
        with pytest.raises(DataConfigError, match="is not 1-3 finite non-negative train,valid,test weights"):
            parse_split(bad)


def megatron_blending(weights, size):
    """Literal transcription of Megatron-LM's C++ ``build_blending_indices``."""
    counts = [0] * len(weights)
    chosen = []
    for i in range(size):
        t = max(float(i), 1.0)
        best, best_error = 0, weights[0] * t - counts[0]
        for d in range(1, len(weights)):
            error = weights[d] * t - counts[d]
            if error > best_error:
                best, best_error = d, error
        chosen.append(best)
        counts[best] += 1
    return chosen


def test_blending_indices_equal_megatron_rule() -> None:
    weights = [0.2, 0.5, 0.3]
    ours = build_blending_indices(weights, 3000)
    assert ours["dataset_index"].tolist() == megatron_blending(weights, 3000)
    for d in range(3):
        picks = ours["dataset_index"] == d
        assert ours["dataset_sample_index"][picks].tolist() == list(range(int(picks.sum())))


def test_a_blend_of_more_than_32767_datasets_reads_the_last_ones() -> None:
    """The dataset index is int16 as Megatron's up to 32767 datasets; beyond, where Megatron asserts, int32: an int16
    array took dataset 32768 for an OverflowError traceback once the whole sequential build had run."""
    weights = [0.0] * 40001
    weights[0] = weights[40000] = 0.5
    idx = build_blending_indices(weights, 4)
    assert idx["dataset_index"].tolist() == [0, 40000, 0, 40000]
    assert idx["dataset_sample_index"].tolist() == [0, 0, 1, 1]
    assert build_blending_indices([0.5, 0.5], 2)["dataset_index"].dtype == np.int16


def test_blend_proportions_within_one_percent_over_10k_samples(tmp_path) -> None:
    a = make_dataset(tmp_path / "a", 300, seed=1, base=0)
    b = make_dataset(tmp_path / "b", 300, seed=2, base=10_000)
    train, _, _ = build_train_valid_test_datasets(["0.7", a, "0.3", b], "1", 8, 5, (10_000, 0, 0),
                                                  str(tmp_path / "c"))
    assert len(train) == 10_000
    from_b = sum(int(train[i]["tokens"][0] >= 10_000) for i in range(len(train)))
    assert abs(from_b / 10_000 - 0.3) < 0.01
    again, _, _ = build_train_valid_test_datasets(["0.7", a, "0.3", b], "1", 8, 5, (10_000, 0, 0),
                                                  str(tmp_path / "c2"))
    assert all(np.array_equal(train[i]["tokens"], again[i]["tokens"]) for i in range(0, 10_000, 97))


def test_a_blend_a_little_longer_or_shorter_reuses_the_cached_indices(tmp_path) -> None:
    """A resume after skipped samples asks for a blend of another length; each such resume built and stored the
    whole blend index again (found 2026-12-06). The first n greedy choices do not depend on the length, so one
    cached entry of a rounded-up length serves them all."""
    a = make_dataset(tmp_path / "a", 300, seed=1, base=0)
    b = make_dataset(tmp_path / "b", 300, seed=2, base=10_000)
    cache = tmp_path / "c"

    def blend(size: int):
        return build_train_valid_test_datasets(["0.7", a, "0.3", b], "1", 8, 5, (size, 0, 0), str(cache))[0]

    def blend_entries() -> int:
        return sum('"BlendedDataset"' in p.read_text() for p in cache.glob("*-description.json"))

    first = blend(1000)  # cached as 1024
    assert blend_entries() == 1
    for size in (1010, 1024, 990):  # the last one past a rounding boundary: cached as 992, a second entry
        again = blend(size)
        exact = build_blending_indices(again.weights, size)
        assert len(again) == size and np.array_equal(again.dataset_index, exact["dataset_index"])
        assert np.array_equal(again.dataset_sample_index, exact["dataset_sample_index"])
        assert np.array_equal(again.dataset_index[:990], first.dataset_index[:990])
        assert blend_entries() == 1 + (size == 990)
    assert [cached_blend_size(n) for n in (1, 31, 32, 33, 1000, 1024, 1025)] == [1, 31, 32, 34, 1024, 1024, 1088]


# Expected values below come from running Megatron-LM's own megatron/core/datasets (blended_megatron_dataset_builder.py,
# gpt_dataset.py, blended_dataset.py, utils.py, helpers.cpp compiled) at commit d98e8a64ddf34856e74b24714e3bedb2f5a39553
# on the same make_dataset datasets, seq_length 8, seed 5; the first token of a sample is its document's id + base.
def first_tokens(dataset, count: int) -> list[int]:
    return [int(dataset[i]["tokens"][0]) for i in range(count)]


def test_unweighted_prefixes_blend_each_split_by_its_epoch_samples_as_megatron_does(tmp_path) -> None:
    """Megatron's ``--data-path A B`` blends each split's components, one epoch each, by the samples that epoch holds;
    they were blended by the datasets' whole token counts, so every split's samples differed from Megatron's
    (found 2026-12-07, checked against Megatron's code). Past one epoch of each, where Megatron stops, the blend
    goes on with the same weights."""
    a = make_dataset(tmp_path / "a", 300, seed=1, base=0)
    b = make_dataset(tmp_path / "b", 100, seed=2, base=10_000)
    splits = build_train_valid_test_datasets([a, b], "90,8,2", 8, 5, (200, 20, 10), str(tmp_path / "c"))
    assert [ds.weights for ds in splits] == [[0.7410071942446043, 0.2589928057553957],
                                             [0.8245614035087719, 0.17543859649122806],
                                             [0.8823529411764706, 0.11764705882352941]]
    assert first_tokens(splits[0], 24) == [199, 10045, 210, 51, 10056, 76, 238, 92, 10041, 211, 71, 145, 10008, 51,
                                           168, 227, 10046, 94, 172, 257, 10005, 106, 11, 174]
    assert first_tokens(splits[1], 20) == [274, 10092, 284, 292, 289, 293, 10092, 273, 278, 279, 279, 277, 10093, 270,
                                           275, 284, 276, 270, 10090, 272]
    assert first_tokens(splits[2], 10) == [298, 10098, 296, 295, 295, 298, 296, 294, 294, 10098]
    longer = build_train_valid_test_datasets([a, b], "90,8,2", 8, 5, (10_000, 0, 0), str(tmp_path / "c"))[0]
    assert len(longer) == 10_000 and longer.weights == splits[0].weights
    # a split of fraction 0 asked for samples (the trainer builds its test set apart) is no dataset
    assert build_train_valid_test_datasets([a, b], "90,10,0", 8, 5, (0, 0, 10), str(tmp_path / "c")) == (None,) * 3
    for mixed in (["0.7", a, b], ["0.7", a, b, "0.3"], [a, "0.7", b, "0.3"]):
        with pytest.raises(DataConfigError, match="give prefixes, or 'weight prefix' pairs"):
            parse_data_path(mixed)


def test_a_single_weighted_prefix_is_built_with_megatrons_surplus(tmp_path) -> None:
    """``--data-path 1.0 A`` is a blend of one to Megatron: its dataset is built for 0.5% more samples than asked,
    here past one epoch (578 samples), so another shuffle than ``--data-path A``'s; it was built as ``A``."""
    a = make_dataset(tmp_path / "a", 300, seed=1, base=0)
    weighted = build_train_valid_test_datasets(["1.0", a], "1", 8, 5, (578, 0, 0), str(tmp_path / "c"))[0]
    assert first_tokens(weighted, 12) == [24, 265, 17, 263, 49, 222, 24, 257, 31, 168, 158, 93]
    plain = build_train_valid_test_datasets([a], "1", 8, 5, (578, 0, 0), str(tmp_path / "c"))[0]
    assert len(plain) == 578 and first_tokens(plain, 12) != first_tokens(weighted, 12)


def test_the_weights_of_eight_datasets_are_normalised_as_megatron_does(tmp_path) -> None:
    """numpy sums 8 or more weights pairwise, Python's ``sum`` left to right: the normalised weights differed in
    the last bit from Megatron's, and the greedy rule broke its tie at sample 2 the other way."""
    weights = [0.2, 0.7, 0.1, 2, 0.1, 0.1, 0.2, 0.2]
    parts = [make_dataset(tmp_path / f"d{k}", 40, seed=k, base=1000 * k) for k in range(8)]
    blend = [item for w, p in zip(weights, parts) for item in (str(w), p)]
    train = build_train_valid_test_datasets(blend, "1", 8, 5, (24, 0, 0), str(tmp_path / "c"))[0]
    assert [float(w).hex() for w in train.weights[:4]] == [
        "0x1.c71c71c71c71dp-5", "0x1.8e38e38e38e38p-3", "0x1.c71c71c71c71dp-6", "0x1.1c71c71c71c72p-1"]
    assert train.dataset_index.tolist() == [3, 1, 3, 0, 3, 6, 3, 7, 1, 3, 3, 2, 3, 1, 3, 4, 3, 5, 3, 1, 3, 3, 1, 3]


def test_a_dataset_named_twice_is_blended_once_with_the_summed_weight(tmp_path, caplog) -> None:
    """``--data-path A A`` (or ``0.3 A 0.4 B 0.3 ./A``) made two components with the same indices, so the blend
    read each sample of A twice in a row (found 2026-12-06: 10 distinct samples of the first 20)."""
    a = make_dataset(tmp_path / "a", 300, seed=1, base=0)
    b = make_dataset(tmp_path / "b", 300, seed=2, base=10_000)
    alone, _, _ = build_train_valid_test_datasets([a], "1", 8, 5, (200, 0, 0), str(tmp_path / "c"))
    twice, _, _ = build_train_valid_test_datasets([a, a], "1", 8, 5, (200, 0, 0), str(tmp_path / "c"))
    assert all(np.array_equal(twice[i]["tokens"], alone[i]["tokens"]) for i in range(200))
    assert "names a dataset more than once" in caplog.text
    spelled = str(tmp_path / "." / "a")
    blend, _, _ = build_train_valid_test_datasets(["0.3", a, "0.4", b, "0.3", spelled], "1", 8, 5, (200, 0, 0),
                                                  str(tmp_path / "c"))
    once, _, _ = build_train_valid_test_datasets(["0.6", a, "0.4", b], "1", 8, 5, (200, 0, 0), str(tmp_path / "c"))
    assert all(np.array_equal(blend[i]["tokens"], once[i]["tokens"]) for i in range(200))


def test_a_dataset_of_weight_zero_is_left_out_of_the_blend_with_a_warning(tmp_path, caplog) -> None:
    """``--data-path 0 A 1 B`` left A out without a word (found 2026-12-06; Megatron asserts), and the blend's
    log then called B "dataset 0". It still reads B alone, the same samples as ``--data-path 1 B``, and says so."""
    a = make_dataset(tmp_path / "a", 300, seed=1, base=0)
    b = make_dataset(tmp_path / "b", 300, seed=2, base=10_000)
    alone, _, _ = build_train_valid_test_datasets(["1", b], "1", 8, 5, (200, 0, 0), str(tmp_path / "c"))
    blend, _, _ = build_train_valid_test_datasets(["0", a, "1", b], "1", 8, 5, (200, 0, 0), str(tmp_path / "c"))
    assert len(blend) == len(alone) and all(np.array_equal(blend[i]["tokens"], alone[i]["tokens"])
                                            for i in range(len(alone)))
    assert f"--data-path gives {a} the weight 0: left out of the blend" in caplog.text


def test_the_blend_warnings_of_per_split_data_name_its_flag(tmp_path, caplog) -> None:
    """Found 2026-12-07: a 0 weight (or a dataset named twice) in ``--valid-data-path`` was warned about as
    "--data-path gives ...", a flag the run was not given; each split's blend names its own flag."""
    a = make_dataset(tmp_path / "a", 300, seed=1, base=0)
    b = make_dataset(tmp_path / "b", 300, seed=2, base=10_000)
    build_per_split_datasets([[a], ["0", a, "1", b], [a, f"{tmp_path}/./a"]], 8, 5, (20, 20, 20), str(tmp_path / "c"))
    assert f"--valid-data-path gives {a} the weight 0: left out of the blend" in caplog.text
    assert "--test-data-path names a dataset more than once" in caplog.text
    assert "--data-path gives" not in caplog.text and "--data-path names" not in caplog.text


def test_index_cache_is_reused_and_keyed_by_parameters(tmp_path) -> None:
    prefix = make_dataset(tmp_path / "ds", 100)
    cache = tmp_path / "cache"
    first, _, _ = build_train_valid_test_datasets([prefix], "1", 8, 1, (50, 0, 0), str(cache))
    files = sorted(p.name for p in cache.iterdir())
    second, _, _ = build_train_valid_test_datasets([prefix], "1", 8, 1, (50, 0, 0), str(cache))
    assert sorted(p.name for p in cache.iterdir()) == files  # hit: nothing new written
    assert isinstance(second.shuffle_index, np.memmap)
    assert np.array_equal(first.shuffle_index, second.shuffle_index)
    build_train_valid_test_datasets([prefix], "1", 8, 2, (50, 0, 0), str(cache))  # new seed -> new key
    assert len(list(cache.iterdir())) == 2 * len(files)
    # a few more samples of the same epochs (a resume after skipped samples) reuse the entry: found 2026-12-06,
    # each such resume built and stored the same index again; more epochs are a new entry
    assert 60 < len(first)  # the one epoch holds 60 samples too
    build_train_valid_test_datasets([prefix], "1", 8, 1, (60, 0, 0), str(cache))
    assert len(list(cache.iterdir())) == 2 * len(files)
    more = build_train_valid_test_datasets([prefix], "1", 8, 1, (len(first) + 1, 0, 0), str(cache))[0]
    assert len(list(cache.iterdir())) == 3 * len(files) and len(more) > len(first)


def test_non_zero_ranks_only_load_the_cache(tmp_path, monkeypatch) -> None:
    prefix = make_dataset(tmp_path / "ds", 100)
    barriers = []
    monkeypatch.setattr(index_cache, "_barrier", lambda: barriers.append(1))
    monkeypatch.setattr(index_cache, "_distributed_rank", lambda: 1)
    with pytest.raises(index_cache.IndexCacheError, match="missing on rank 1.*shared"):
        build_train_valid_test_datasets([prefix], "1", 8, 1, (50, 0, 0), str(tmp_path / "c"))
    assert barriers == [1]
    monkeypatch.setattr(index_cache, "_distributed_rank", lambda: 0)
    built, _, _ = build_train_valid_test_datasets([prefix], "1", 8, 1, (50, 0, 0), str(tmp_path / "c"))
    monkeypatch.setattr(index_cache, "_distributed_rank", lambda: 1)
    loaded, _, _ = build_train_valid_test_datasets([prefix], "1", 8, 1, (50, 0, 0), str(tmp_path / "c"))
    assert np.array_equal(built.sample_index, loaded.sample_index)


def test_unwritable_cache_is_a_clear_error(tmp_path) -> None:
    prefix = make_dataset(tmp_path / "ds", 100)
    (tmp_path / "file").write_text("")
    with pytest.raises(index_cache.IndexCacheError, match="cannot write the index cache in .*file/sub"):
        build_train_valid_test_datasets([prefix], "1", 8, 1, (50, 0, 0), str(tmp_path / "file" / "sub"))


def test_too_small_split_is_a_clear_error(tmp_path) -> None:
    prefix = make_dataset(tmp_path / "ds", 3)
    with pytest.raises(DataConfigError, match="none of which fall in the valid split"):
        build_train_valid_test_datasets([prefix], "98,1,1", 8, 1, (10, 10, 0), str(tmp_path / "c"))


def test_a_split_too_short_for_one_sample_is_named_on_every_rank(tmp_path, monkeypatch) -> None:
    """Documents in the valid split but fewer tokens than one sample: the error named neither the split nor the
    dataset (a blend of ten could be any of them), and only rank 0 raised it, inside the cache build, while the
    other ranks waited at the cache's barrier (found 2026-12-06)."""
    prefix = str(tmp_path / "tail")
    with IndexedDatasetBuilder(prefix, np.int32) as builder:
        for size in [20] * 97 + [5, 3, 2]:
            builder.add_document(np.ones(size, dtype=np.int32))
        builder.finalize()
    barriers = []
    monkeypatch.setattr(index_cache, "_barrier", lambda: barriers.append(1))
    for rank in (0, 1):
        monkeypatch.setattr(index_cache, "_distributed_rank", lambda rank=rank: rank)
        with pytest.raises(DataConfigError, match=f"the valid split of {prefix} .documents 97-99. has 10 tokens, "
                                                  "not enough for one sample of 17"):
            build_train_valid_test_datasets([prefix], "97,3,0", 16, 1, (10, 4, 0), str(tmp_path / "c"))
    assert barriers == [1, 1]  # each rank's train split; no rank reached the valid split's barrier


def stream(sampler: PretrainingSampler) -> list[list[int]]:
    return list(sampler)


def megatron_sampler(total, consumed, mbs, rank, size):
    """Literal transcription of Megatron-LM's ``MegatronPretrainingSampler.__iter__`` (drop_last=True)."""
    batch = []
    for idx in range(consumed, total):
        batch.append(idx)
        if len(batch) == mbs * size:
            yield batch[rank * mbs:(rank + 1) * mbs]
            batch = []


@pytest.mark.parametrize("total,consumed,mbs,size", [(100, 0, 4, 2), (101, 37, 3, 4), (9, 8, 1, 1), (50, 3, 7, 3)])
def test_sampler_equals_megatron(total: int, consumed: int, mbs: int, size: int) -> None:
    for rank in range(size):
        assert stream(PretrainingSampler(total, consumed, mbs, rank, size)) == \
            list(megatron_sampler(total, consumed, mbs, rank, size))


def test_sampler_splits_global_batches_across_ranks_and_drops_last() -> None:
    ranks = [stream(PretrainingSampler(23, 0, 2, r, 3)) for r in range(3)]
    assert ranks[0][:2] == [[0, 1], [6, 7]] and ranks[2][:2] == [[4, 5], [10, 11]]
    assert all(len(r) == 3 for r in ranks)  # 23 // 6 full global batches; 5 leftover samples dropped
    assert len(PretrainingSampler(23, 0, 2, 0, 3)) == 3


@pytest.mark.parametrize("consumed", [0, 6, 12, 18])
def test_resume_from_consumed_samples_equals_uninterrupted_stream(tmp_path, consumed: int) -> None:
    prefix = make_dataset(tmp_path / "ds", 200)
    train, _, _ = build_train_valid_test_datasets([prefix], "1", 8, 3, (60, 0, 0), str(tmp_path / "c"))
    for rank in range(2):
        full = stream(PretrainingSampler(60, 0, 3, rank, 2))
        resumed = stream(PretrainingSampler(60, consumed, 3, rank, 2))
        assert resumed == full[consumed // 6:]
        tokens = [[train[i]["tokens"].tolist() for i in batch] for batch in resumed]
        assert tokens == [[train[i]["tokens"].tolist() for i in batch] for batch in full[consumed // 6:]]


@pytest.mark.parametrize("kwargs,field", [({"consumed_samples": 60}, "consumed_samples"),
                                          ({"data_parallel_rank": 2}, "data_parallel_rank")])
def test_sampler_rejects_invalid_arguments(kwargs, field) -> None:
    args = {"total_samples": 60, "consumed_samples": 0, "micro_batch_size": 3, "data_parallel_rank": 0,
            "data_parallel_size": 2, **kwargs}
    with pytest.raises(ValueError, match=field):
        PretrainingSampler(**args)


def test_datasets_pickle_by_reference_for_dataloader_workers(tmp_path) -> None:
    a = make_dataset(tmp_path / "a", 400, seed=1)
    b = make_dataset(tmp_path / "b", 400, seed=2, base=1000)
    for data_path in ([a], ["0.5", a, "0.5", b]):
        train, _, _ = build_train_valid_test_datasets(data_path, "1", 8, 1, (2000, 0, 0), str(tmp_path / "c"))
        blob = pickle.dumps(train)
        assert len(blob) < 20_000  # file names, not the index arrays or the tokens
        clone = pickle.loads(blob)
        assert all(np.array_equal(clone[i]["tokens"], train[i]["tokens"]) for i in range(0, len(train), 50))


def dataset_tokens(dataset) -> set[int]:
    return {int(t) for i in range(len(dataset)) for t in dataset[i]["tokens"]}


def test_per_split_paths_read_each_splits_own_data_whole(tmp_path) -> None:
    """Megatron's blend_per_split: each split reads every document of its own blend (no --split), a weighted blend
    included; the training set is Megatron's sample order over all of its dataset's documents; the test set (the
    same batches each time) is none without test data."""
    train = make_dataset(tmp_path / "train", 40, seed=1)  # a document's tokens are its id: 0..39
    valid = make_dataset(tmp_path / "valid", 10, seed=2, base=100)
    test_a = make_dataset(tmp_path / "test_a", 10, seed=3, base=200)
    test_b = make_dataset(tmp_path / "test_b", 10, seed=4, base=300)
    recipe = DataRecipe(seq_length=8, seed=5, eval_interval=1, eval_iters=2)
    sources = DataSources(per_split=[[train], [valid], ["0.5", test_a, "0.5", test_b]])
    tr, va, te = build_datasets(recipe, sources, total_iters=10, global_batch=4)
    assert dataset_tokens(tr) == set(range(40))
    assert dataset_tokens(va) == set(range(100, 110))
    test_tokens = dataset_tokens(te)
    assert test_tokens <= set(range(200, 210)) | set(range(300, 310))
    assert test_tokens & set(range(200, 210)) and test_tokens & set(range(300, 310)) and len(te) == 2 * 4
    indexed = IndexedDataset(train)
    whole = build_gpt_indices(indexed.sizes, np.arange(len(indexed), dtype=np.int32), 40, 8, 5)
    assert np.array_equal(tr.shuffle_index, whole["shuffle_index"])
    assert np.array_equal(tr.document_index, whole["document_index"])
    again = build_datasets(recipe, sources, total_iters=10, global_batch=4)[2]
    assert all(np.array_equal(te[i]["tokens"], again[i]["tokens"]) for i in range(len(te)))
    untested = DataSources(per_split=[[train], [valid], []])
    assert build_datasets(recipe, untested, total_iters=10, global_batch=4)[2] is None


def test_a_blend_whose_small_dataset_has_no_test_document_keeps_the_others_test_split(tmp_path, caplog) -> None:
    """``--data-path 0.3 A 0.7 B`` under 969,30,1 with A of 400 documents (none in the test split) and B of 1000 (one):
    each split draws the weights' share of its samples from each dataset (60/140 training, 12/28 validation
    samples), and the test set reads B's test documents, a warning naming A. Found 2026-12-07: A's empty test share
    dropped the test set of the whole blend (one info line, `no test set`), B's test document never read."""
    a, b = make_dataset(tmp_path / "A", 400, seed=1), make_dataset(tmp_path / "B", 1000, seed=2, base=10_000)
    recipe = DataRecipe(split="969,30,1", seq_length=4, seed=1, eval_interval=1, eval_iters=10)
    with caplog.at_level(logging.WARNING, logger="megamythos.data.gpt_dataset"):
        splits = build_datasets(recipe, DataSources(["0.3", a, "0.7", b]), total_iters=50, global_batch=4)
    counts = [[sum(int(ds[i]["tokens"][0] < 10_000) for i in range(len(ds))), len(ds)] for ds in splits]
    # [samples of A, samples]; the test set B's alone, built as Megatron builds `--data-path 0.7 B` (0.5% more
    # samples asked of it than the 40 read, in whole epochs)
    assert counts == [[60, 200], [12, 40], [0, 42]]
    assert dataset_tokens(splits[2]) <= {10_000 + 999}  # B's one test document (999 of 0..999)
    assert [r.getMessage().split(": ")[:2] for r in caplog.records] == [
        ["--data-path", f"the test split blends {b} alone (weights 1.0000 {b})"]]
    assert f"{a} has 400 documents, none of which fall in the test split" in caplog.records[0].getMessage()


def test_a_blend_whose_only_weighted_dataset_has_no_test_document_has_no_test_set(tmp_path, caplog) -> None:
    """``--data-path 1 A 0 B`` under 969,30,1, A without a test document: the test split has no data to draw from
    (B is read nowhere), so it is no test set with one info line, as for A alone. Found 2026-12-07: B, weight 0, was
    kept as the test split's blend and its weights divided by their sum, 0 (ZeroDivisionError)."""
    a, b = make_dataset(tmp_path / "A", 400, seed=1), make_dataset(tmp_path / "B", 1000, seed=2, base=10_000)
    recipe = DataRecipe(split="969,30,1", seq_length=4, seed=1, eval_interval=1, eval_iters=10)
    with caplog.at_level(logging.INFO):
        train, valid, test = build_datasets(recipe, DataSources(["1", a, "0", b]), total_iters=50, global_batch=4)
    assert test is None and "no test set" in caplog.text
    assert max(dataset_tokens(train) | dataset_tokens(valid)) < 10_000  # B is read in no split


def test_a_test_split_leaves_the_train_and_valid_samples_alone(tmp_path, caplog) -> None:
    """The test set is built apart: with --data-path the training and validation samples are those built before it
    existed (a checkpoint written then resumes on the same samples); a test share without documents (a small
    corpus under 969,30,1) gives no test set and one info line, never an error."""
    prefix = make_dataset(tmp_path / "corpus", 60, seed=6)
    recipe = DataRecipe(split="80,10,10", seq_length=8, seed=5, eval_interval=1, eval_iters=2)
    train, valid, test = build_datasets(recipe, DataSources([prefix]), total_iters=10, global_batch=4)
    before = build_train_valid_test_datasets([prefix], "80,10,10", 8, 5, (40, 8, 0))
    for built, old in ((train, before[0]), (valid, before[1])):
        assert len(built) == len(old)
        assert all(np.array_equal(built[i]["tokens"], old[i]["tokens"]) for i in range(len(old)))
    assert dataset_tokens(test) <= set(range(54, 60)) and len(test) >= 8  # documents 54..59
    small = make_dataset(tmp_path / "small", 30, seed=7)  # 969,30,1 of 30 documents: none in the test split
    with caplog.at_level(logging.INFO, logger="megamythos.data.pretraining"):
        *_, none = build_datasets(DataRecipe(seq_length=8), DataSources([small]), total_iters=2, global_batch=4)
    assert none is None
    assert [r.getMessage() for r in caplog.records if r.name == "megamythos.data.pretraining"] == [
        f"no test set: {small} has 30 documents, none of which fall in the test split (fraction 0.0010; splits take "
        "whole documents); use a dataset of more documents (a text file is one unless preprocessed with "
        "--txt-blank-line-documents) or change --split"]


def test_a_finetune_that_validates_on_what_its_base_trained_on_is_told(tmp_path) -> None:
    """--finetune from a run on the same 1000 documents under 969,30,1 (documents 0-968 trained, 969-998 validated,
    999 tested): another --split validates (and tests) on documents the base trained on, or trains on those it
    held out, and a per-split training path of the whole dataset trains on its held-out ones; each is named with
    the count. The same split reads the same documents per split whatever the seed (the split takes document
    ranges, the seed shuffles within them): nothing to say."""
    prefix = make_dataset(tmp_path / "P", 1000, seed=1)
    shapes = {os.path.realpath(prefix): IndexedDataset(prefix).shape()}
    base = {"args": {"split": "969,30,1", "seed": 1234}, "data_path": [prefix]}
    key = os.path.realpath(prefix)

    def told(sources: DataSources, split: str = "969,30,1") -> str | None:
        return held_out_overlap(base, sources, split, shapes, "BASE")

    assert told(DataSources([prefix])) is None and told(DataSources(["1", prefix])) is None
    assert told(DataSources([prefix]), "900,50,50").startswith(
        f"--finetune: its validation split holds 50 documents of {key} that BASE trained on; its test split holds 19 "
        f"documents of {key} that BASE trained on (BASE read {prefix} under --split 969,30,1): ")
    assert f"its training split holds 11 documents of {key} that BASE held out for validation (" in told(
        DataSources([prefix]), "980,10,10")
    assert "its training split holds 30 documents" in told(DataSources(per_split=[[prefix], [], []]))
    assert held_out_overlap({"args": {}}, DataSources([prefix]), "900,50,50", shapes, "BASE") is None  # no record


def test_a_finetune_on_the_base_runs_data_at_another_path_is_told_too(tmp_path) -> None:
    """Found 2026-12-07 (audit): the check matched the datasets by path, so the base run's data copied to another
    machine or folder skipped it. A dataset the base run recorded (its shape) at a path this run does not read is
    matched to the one dataset of this run, at a path the base did not read, of that shape; an ambiguous shape is
    matched to none."""
    prefix = make_dataset(tmp_path / "P", 1000, seed=1)
    shape = IndexedDataset(prefix).shape()
    base = {"args": {"split": "969,30,1"}, "data_path": ["/old/machine/P"],
            "dataset_shapes": {"/old/machine/P": shape}}
    key = os.path.realpath(prefix)
    told = held_out_overlap(base, DataSources([prefix]), "900,50,50", {key: shape}, "BASE")
    assert told is not None and told.startswith(
        f"--finetune: its validation split holds 50 documents of {key} that BASE trained on; ")
    assert held_out_overlap(base, DataSources([prefix]), "969,30,1", {key: shape}, "BASE") is None
    other = make_dataset(tmp_path / "Q", 1000, seed=1)  # two datasets of the base's shape: which one moved is unknown
    both = {key: shape, os.path.realpath(other): IndexedDataset(other).shape()}
    assert held_out_overlap(base, DataSources([prefix, other]), "900,50,50", both, "BASE") is None


def test_a_finetune_on_data_its_base_read_through_a_link_is_told_at_another_path(tmp_path) -> None:
    """Found 2026-12-07 (review): a base run that read its data through a link (``/data -> /lustre/...``) records the
    path given and each dataset's shape under its real path; on another machine, where that link is absent, the
    given path named none of the recorded shapes, so the data copied there skipped the check without a word. The
    base run's datasets are its recorded real paths, in the order it read them."""
    prefix = make_dataset(tmp_path / "P", 1000, seed=1)
    shape = IndexedDataset(prefix).shape()
    base = {"args": {"split": "969,30,1"}, "data_path": ["/old/machine/link/P"],
            "dataset_shapes": {"/old/machine/lustre/P": shape}}
    key = os.path.realpath(prefix)
    told = held_out_overlap(base, DataSources([prefix]), "900,50,50", {key: shape}, "BASE")
    assert told is not None and told.startswith(
        f"--finetune: its validation split holds 50 documents of {key} that BASE trained on; "), told
    assert "(BASE read /old/machine/link/P under --split 969,30,1)" in told  # the path it was given
