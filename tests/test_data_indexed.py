"""MMIDIDX reader/writer: byte-exact format, corruption detection, atomic writes, merge and inspect."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from megamythos.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexedDatasetError,
    optimal_dtype,
)
from megamythos.data.inspection import inspect_dataset
from megamythos.data.merge import merge_datasets
from megamythos.data.metadata import DatasetMismatchError, read_dataset_metadata, write_dataset_metadata
from megamythos.data.tokenizer import Tokenizer


def reference_files(docs: list[list[int]], dtype: type, code: int) -> tuple[bytes, bytes]:
    """.bin and .idx written independently from the MMIDIDX rules (header, int32 lengths, int64 pointers/docs)."""
    itemsize = np.dtype(dtype).itemsize
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code)
    idx += struct.pack("<Q", len(docs)) + struct.pack("<Q", len(docs) + 1)
    idx += b"".join(struct.pack("<i", len(d)) for d in docs)
    pointer = 0
    for d in docs:
        idx += struct.pack("<q", pointer)
        pointer += len(d) * itemsize
    idx += b"".join(struct.pack("<q", i) for i in range(len(docs) + 1))
    fmt = {np.uint16: "<H", np.int32: "<i"}[dtype]
    data = b"".join(struct.pack(fmt, t) for d in docs for t in d)
    return data, idx


def write(prefix: str, docs: list[list[int]], dtype: type) -> None:
    with IndexedDatasetBuilder(prefix, dtype) as builder:
        builder.add_document(docs[0])
        lengths = np.array([len(d) for d in docs[1:]], dtype=np.int32)
        builder.add_documents(np.array([t for d in docs[1:] for t in d], dtype=np.int64), lengths)
        builder.finalize()


@pytest.mark.parametrize("dtype,code", [(np.uint16, 8), (np.int32, 4)])
def test_files_are_byte_identical_to_independent_build(tmp_path, dtype, code) -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 65000, size=n).tolist() for n in (5, 0, 17, 1, 300)]
    prefix = str(tmp_path / "ds")
    write(prefix, docs, dtype)
    ref_bin, ref_idx = reference_files(docs, dtype, code)
    assert open(prefix + ".idx", "rb").read() == ref_idx
    assert open(prefix + ".bin", "rb").read() == ref_bin
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.dtype(dtype) and ds.sizes.dtype == np.int32
    assert [ds[i].tolist() for i in range(len(ds))] == docs
    assert ds.get(4, offset=10, length=5).tolist() == docs[4][10:15]
    assert ds.document_indices.tolist() == list(range(len(docs) + 1))


def test_megatrons_sentence_level_dataset_is_read_and_its_multimodal_index_refused(tmp_path) -> None:
    """Files written by Megatron-LM's ``IndexedDatasetBuilder`` (megatron/core/datasets/indexed_dataset.py, commit
    d98e8a64ddf34856e74b24714e3bedb2f5a39553), uint16 tokens 5 6 7 | 8: ``add_document(.., [2, 1])`` then
    ``add_document(.., [1])`` (two documents of 2 and 1 sequences, as ``preprocess_data.py --split-sentences``
    writes), and the same tokens with ``multimodal=True``, ``add_item`` modes 0 and 1. A multimodal index was
    called "truncated or corrupt; rebuild it" (found 2026-12-07)."""
    tokens = bytes.fromhex("0500060007000800")
    sentences = ("4d4d49444944580000010000000000000008030000000000000003000000000000000200000001000000010000000000"
                 "00000000000004000000000000000600000000000000000000000000000002000000000000000300000000000000")
    multimodal = ("4d4d49444944580000010000000000000008020000000000000003000000000000000300000001000000000000000000"
                  "000006000000000000000000000000000000010000000000000002000000000000000001")
    for name, index in (("sent", sentences), ("mm", multimodal)):
        (tmp_path / f"{name}.bin").write_bytes(tokens)
        (tmp_path / f"{name}.idx").write_bytes(bytes.fromhex(index))
    ds = IndexedDataset(str(tmp_path / "sent"))
    ds.validate()
    assert [ds[i].tolist() for i in range(len(ds))] == [[5, 6], [7], [8]]
    assert ds.document_indices.tolist() == [0, 2, 3] and ds.shape() == {"sequences": 3, "documents": 2, "tokens": 4}
    with pytest.raises(IndexedDatasetError, match=r"mm\.idx holds one byte per sequence after its document "
                                                  "indices: it is a Megatron-LM multimodal index"):
        IndexedDataset(str(tmp_path / "mm"))


def test_reads_are_zero_copy_views(tmp_path) -> None:
    prefix = str(tmp_path / "ds")
    write(prefix, [[1, 2, 3], [4, 5]], np.uint16)
    item = IndexedDataset(prefix)[1]
    assert not item.flags.owndata and not item.flags.writeable


def test_optimal_dtype_follows_megatron() -> None:
    assert optimal_dtype(65499) == np.uint16 and optimal_dtype(65500) == np.int32


def test_token_that_does_not_fit_dtype_is_an_error(tmp_path) -> None:
    with pytest.raises(IndexedDatasetError, match="token id 70000 does not fit .*uint16"):
        write(str(tmp_path / "ds"), [[1], [70000]], np.uint16)
    assert not any(p.name.startswith("ds.") for p in tmp_path.iterdir())  # temporaries removed


def test_unfinished_build_leaves_no_index(tmp_path) -> None:
    builder = IndexedDatasetBuilder(str(tmp_path / "ds"), np.uint16)
    builder.add_document([1, 2, 3])
    assert not (tmp_path / "ds.idx").exists() and not (tmp_path / "ds.bin").exists()
    builder.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage,message", [
    (lambda p: open(p + ".idx", "r+b").truncate(40), "truncated or corrupt"),
    (lambda p: open(p + ".idx", "r+b").write(b"NOTMMIDX"), "not an MMIDIDX index"),
    (lambda p: open(p + ".bin", "r+b").truncate(4), "truncated or belongs to another"),
    (lambda p: os.remove(p + ".bin"), r"ds\.bin does not exist"),
])
def test_corrupt_files_are_detected_at_open(tmp_path, damage, message) -> None:
    prefix = str(tmp_path / "ds")
    write(prefix, [[1, 2, 3], [4, 5, 6, 7]], np.uint16)
    damage(prefix)
    with pytest.raises(IndexedDatasetError, match=message):
        IndexedDataset(prefix)


def test_validate_detects_inconsistent_pointer(tmp_path) -> None:
    prefix = str(tmp_path / "ds")
    write(prefix, [[1, 2], [3, 4], [5]], np.uint16)
    with open(prefix + ".idx", "r+b") as handle:  # pointer of sequence 1: 4 -> 2
        handle.seek(34 + 3 * 4 + 8)
        handle.write(struct.pack("<q", 2))
    with pytest.raises(IndexedDatasetError, match="pointer of sequence 1"):
        inspect_dataset(prefix)


def test_validate_checks_in_chunks_across_their_boundaries(tmp_path, monkeypatch) -> None:
    """The run validates every index before it reads (one pass, bounded memory: chunks of sequences)."""
    import megamythos.data.indexed_dataset as indexed

    monkeypatch.setattr(indexed, "INDEX_SCAN_CHUNK", 2)
    prefix = str(tmp_path / "ds")
    write(prefix, [[1, 2], [3, 4], [5], [6, 7, 8], [9]], np.uint16)
    IndexedDataset(prefix).validate()
    with open(prefix + ".idx", "r+b") as handle:  # pointer of sequence 3 (the second chunk's second): 10 -> 12
        handle.seek(34 + 5 * 4 + 3 * 8)
        handle.write(struct.pack("<q", 12))
    with pytest.raises(IndexedDatasetError, match="pointer of sequence 3 is 12, expected 10"):
        IndexedDataset(prefix).validate()


def test_merge_concatenates_and_keeps_record(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    a, b, out = (str(tmp_path / n) for n in ("a", "b", "out"))
    write(a, [[1, 2], [3]], np.uint16)
    write(b, [[4, 5, 6]], np.uint16)
    for p, documents in ((a, 2), (b, 1)):  # the counts preprocessing records: the merge checks them
        write_dataset_metadata(p, tiny_tokenizer, num_documents=documents)
    merged = merge_datasets([a, b], out)
    assert [merged[i].tolist() for i in range(len(merged))] == [[1, 2], [3], [4, 5, 6]]
    record = read_dataset_metadata(out)
    assert record["num_documents"] == 3 and record["tokenizer_fingerprint"] == tiny_tokenizer.fingerprint
    assert Tokenizer(record["tokenizer_model"]).fingerprint == tiny_tokenizer.fingerprint


def test_merge_rejects_vocabulary_mismatch_naming_both(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write(a, [[1]], np.uint16)
    write(b, [[2]], np.uint16)
    write_dataset_metadata(a, tiny_tokenizer)
    record_b = write_dataset_metadata(b, tiny_tokenizer)
    record_b["vocab_size"] = 999
    with open(b + ".json", "w") as handle:
        json.dump({**record_b, "tokenizer_model": os.path.basename(record_b["tokenizer_model"])}, handle)
    with pytest.raises(DatasetMismatchError, match=f"{a} has vocab_size=400 but {b} has vocab_size=999"):
        merge_datasets([a, b], str(tmp_path / "out"))


def test_inspect_reports_and_decodes(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    prefix = str(tmp_path / "ds")
    texts = ["hello world\n", "    return data\n"]
    write(prefix, tiny_tokenizer.encode(texts), np.uint16)
    write_dataset_metadata(prefix, tiny_tokenizer)
    report = inspect_dataset(prefix, num_samples=2)
    assert report["documents"] == 2 and report["dtype"] == "uint16"
    assert sorted(report["samples"].values()) == sorted(texts)
