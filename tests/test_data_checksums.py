"""Block checksums of a dataset's ``.bin`` and ``.idx`` (found 2026-12-07: Megatron's files carry none, so a byte
a bad copy or disk changed was trained on without a word): recorded when preprocessing or a merge writes a dataset,
verified by the run's data scan, ``inspect_dataset.py`` and the merge's inputs."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megamythos.data import checksums
from megamythos.data.checksums import (
    MAX_BLOCK_BYTES,
    BlockHasher,
    DatasetCorruptError,
    file_block_digests,
    verify_file,
)
from megamythos.data.cli import inspect_main, preprocess_main
from megamythos.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder, dataset_exists
from megamythos.data.merge import merge_datasets
from megamythos.data.metadata import MetadataError, read_dataset_metadata, verified_token_range
from megamythos.data.pretraining import documents_eod, resolve_data
from megamythos.data.tokenizer import Tokenizer
from tests.helpers import REPO, synthetic_documents, write_jsonl

DOCS = synthetic_documents(30, seed=5)


def dataset(tmp_path: Path, name: str, tokenizer: Tokenizer) -> str:
    assert preprocess_main(["--input", str(write_jsonl(tmp_path / f"{name}.jsonl", DOCS)), "--output-prefix",
                            str(tmp_path / name), "--tokenizer-model", tokenizer.model_path, "--no-progress",
                            "--append-eod"]) == 0
    return str(tmp_path / f"{name}_text_document")


def flip(path: str, offset: int) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 1
    Path(path).write_bytes(bytes(data))


def record(prefix: str) -> dict:
    return json.loads(Path(prefix + ".json").read_text())


def test_block_hasher_gives_the_sha256_of_every_block_whatever_pieces_the_bytes_come_in() -> None:
    data = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    hasher, at = BlockHasher(64), 0
    for piece in (1, 63, 64, 200, 7, 665):
        hasher.update(data[at:at + piece])
        at += piece
    assert hasher.finish() == [hashlib.sha256(data[i:i + 64]).hexdigest() for i in range(0, 1000, 64)]
    assert BlockHasher(64).finish() == []


def test_a_builder_hashes_what_it_writes_and_a_verification_names_the_block_that_differs(tmp_path: Path,
                                                                                          tiny_tokenizer) -> None:
    prefix, other = str(tmp_path / "built"), dataset(tmp_path, "a", tiny_tokenizer)
    with IndexedDatasetBuilder(prefix, np.uint16, block_bytes=64) as builder:
        builder.add_documents(np.arange(100, dtype=np.uint16), np.array([30, 70]))
        builder.add_index(other)  # copied: hashed as written
        sums = builder.checksums()
        builder.finalize()
    assert list(sums.bin) == file_block_digests(prefix + ".bin", 64) and len(sums.bin) > 2
    assert list(sums.idx) == file_block_digests(prefix + ".idx", 64)
    flip(prefix + ".bin", 64 * 2 + 5)
    with pytest.raises(DatasetCorruptError, match=r"built\.bin: bytes 128\.\.191 \(block 2 of \d+\) differ from the "
                                                  "sha256 its record holds: the file is corrupt"):
        verify_file(prefix + ".bin", sums.bin, 64)
    with pytest.raises(DatasetCorruptError, match=r"is \d+ bytes, \d+ blocks of 64, but its record holds checksums "
                                                  r"of \d+ blocks: the file is truncated"):
        verify_file(prefix + ".bin", sums.bin[:-1], 64)



@pytest.mark.parametrize("block_bytes", [0, 12, MAX_BLOCK_BYTES + 8])
def test_blocks_no_reader_takes_are_refused_when_the_builder_is_made(block_bytes: int, tmp_path: Path) -> None:
    """Found 2026-12-07 (review): a builder given blocks of 12 bytes wrote a dataset every reader refused as corrupt
    ("the recorded checksums are malformed ... rebuild the dataset"), and blocks of 0 bytes hashed for ever; blocks
    past MAX_BLOCK_BYTES are what a verification would hold in memory, per thread."""
    with pytest.raises(ValueError, match=f"block_bytes {block_bytes}: blocks must be a positive multiple of 8"):
        IndexedDatasetBuilder(str(tmp_path / "built"), np.uint16, block_bytes=block_bytes)
    assert not list(tmp_path.iterdir())

@pytest.mark.parametrize("where", ["bin", "document index"])
def test_a_flipped_byte_is_refused_by_the_run_inspect_and_merge(where: str, tmp_path: Path, tiny_tokenizer,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """A flipped bit in a token is another valid token id; one in a document index (5 -> 4) keeps them
    non-decreasing: both passed every check before."""
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    assert record(prefix)["checksums"]["bin"] == file_block_digests(prefix + ".bin")
    count = len(IndexedDataset(prefix))
    if where == "bin":
        flip(prefix + ".bin", 101)
    else:
        flip(prefix + ".idx", 34 + 12 * count + 8 * 5)  # header, sizes, pointers, then document index 5
        IndexedDataset(prefix).validate()  # what was checked before: it passes
    file = prefix + (".bin" if where == "bin" else ".idx")
    message = rf"{file}: bytes 0\.\.\d+ \(block 0 of 1\) differ from the sha256 its record holds"
    with pytest.raises(DatasetCorruptError, match=message):
        resolve_data([prefix], tiny_tokenizer.vocab_size, str(tmp_path / "cache"))
    with pytest.raises(SystemExit, match="1"):
        inspect_main([prefix, "--samples", "0"])
    out = capsys.readouterr().err.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"INVALID: {file}: bytes 0..")
    with pytest.raises(DatasetCorruptError, match=message):
        merge_datasets([prefix], str(tmp_path / "merged"))
    assert not dataset_exists(str(tmp_path / "merged"))


def test_a_merge_records_checksums_of_its_own_files(tmp_path: Path, tiny_tokenizer) -> None:
    a, b = dataset(tmp_path, "a", tiny_tokenizer), dataset(tmp_path, "b", tiny_tokenizer)
    merged = str(tmp_path / "merged")
    merge_datasets([a, b], merged)
    sums = record(merged)["checksums"]
    assert sums["bin"] == file_block_digests(merged + ".bin") != record(a)["checksums"]["bin"]
    assert sums["idx"] == file_block_digests(merged + ".idx")
    resolve_data([merged], tiny_tokenizer.vocab_size, str(tmp_path / "cache"))


def test_a_dataset_without_checksums_is_read_with_a_warning_and_malformed_ones_are_refused(
        tmp_path: Path, tiny_tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    old = record(prefix)
    unchecked = {k: v for k, v in old.items() if k != "checksums"}  # a dataset built before 2026-12-07
    Path(prefix + ".json").write_text(json.dumps(unchecked))
    with caplog.at_level(logging.WARNING):
        resolve_data([prefix], tiny_tokenizer.vocab_size, str(tmp_path / "c1"))
    assert "records no checksums (built before they were recorded)" in caplog.text
    Path(prefix + ".json").write_text(json.dumps({**old, "checksums": {**old["checksums"], "bin": ["ab"]}}))
    with pytest.raises(DatasetCorruptError, match=r"a_text_document\.json: the recorded checksums are malformed"):
        resolve_data([prefix], tiny_tokenizer.vocab_size, str(tmp_path / "c2"))


@pytest.mark.parametrize("block_bytes", [(64 << 20) + 0.5, 1 << 40])
def test_a_record_whose_block_size_no_builder_writes_is_refused_and_add_checksums_mends_it(
        block_bytes: float, tmp_path: Path, tiny_tokenizer, capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07: a float ``block_bytes`` (a hand-edited record) was truncated to a whole size without a word,
    and a huge one (a corrupt record) made the verifier read each file whole into memory; the remedy then named,
    ``inspect_dataset.py PREFIX --add-checksums``, refused such a record as one that records checksums already."""
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    built = record(prefix)
    Path(prefix + ".json").write_text(json.dumps({**built, "checksums": {**built["checksums"],
                                                                         "block_bytes": block_bytes}}))
    with pytest.raises(DatasetCorruptError, match=rf"a_text_document\.json: the recorded checksums are malformed "
                                                  rf"\(block_bytes {block_bytes!r}, expected a whole number of bytes.*"
                                                  rf"if the data is sound, `python data_prep/inspect_dataset.py "
                                                  rf"{prefix} --add-checksums` checks it and records them again"):
        resolve_data([prefix], tiny_tokenizer.vocab_size, str(tmp_path / "cache"))
    assert inspect_main([prefix, "--samples", "0", "--add-checksums"]) == 0, capsys.readouterr().err
    assert "recorded checksums of 1 + 1 blocks" in capsys.readouterr().out
    assert record(prefix) == built


@pytest.mark.parametrize("digest", ["z" * 64, "A" * 64, int("1" * 64)])
def test_a_digest_that_is_no_sha256_is_a_malformed_record_not_a_corrupt_block(
        digest: object, tmp_path: Path, tiny_tokenizer, capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07 (review): a digest of 64 characters that no sha256 hexdigest has (a hand-edited record) passed
    as well-formed, so a verification called the dataset's block corrupt ("copy it again") and ``--add-checksums``,
    the remedy for a malformed record, refused it as one that records checksums already."""
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    built = record(prefix)
    Path(prefix + ".json").write_text(json.dumps({**built, "checksums": {**built["checksums"], "idx": [digest]}}))
    with pytest.raises(DatasetCorruptError, match=r"the recorded checksums are malformed \(a digest that is not 64 "):
        resolve_data([prefix], tiny_tokenizer.vocab_size, str(tmp_path / "cache"))
    assert inspect_main([prefix, "--samples", "0", "--add-checksums"]) == 0, capsys.readouterr().err
    assert record(prefix) == built


def _twelve_byte_blocks(sums: dict, prefix: str) -> dict:
    """Checksums in blocks of 12 bytes, as a builder wrote them before it refused such blocks."""
    files = {name: Path(f"{prefix}.{name}").read_bytes() for name in ("bin", "idx")}
    return {**sums, "block_bytes": 12, **{name: [hashlib.sha256(data[k:k + 12]).hexdigest()
                                                 for k in range(0, len(data), 12)] for name, data in files.items()}}


@pytest.mark.parametrize("edit", [
    lambda sums, _: {**sums, "block_bytes": 1 << 40},  # a corrupt size: one block of each file
    _twelve_byte_blocks,
    lambda sums, _: {**sums, "block_bytes": float(sums["block_bytes"])},
    lambda sums, _: {**sums, "idx": ["ab"]},  # a malformed list beside a well-formed one
    lambda sums, _: {k: v for k, v in sums.items() if k != "algorithm"},
], ids=["huge block_bytes", "12-byte blocks", "float block_bytes", "malformed idx digests", "no algorithm"])
def test_add_checksums_replaces_malformed_ones_only_where_the_data_matches_the_digests_they_hold(
        edit, tmp_path: Path, tiny_tokenizer, capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07 (review): ``--add-checksums`` replaced a malformed record's checksums by the data's digests
    unchecked, where well-formed digests survived beside the malformed field (their block size still told): a
    ``.bin`` corrupted since it was built got checksums vouching for it."""
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    built = record(prefix)
    malformed = {**built, "checksums": edit(built["checksums"], prefix)}
    Path(prefix + ".json").write_text(json.dumps(malformed))
    flip(prefix + ".bin", 3)
    with pytest.raises(SystemExit, match="1"):
        inspect_main([prefix, "--samples", "0", "--add-checksums"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"INVALID: {prefix}.bin does not match its record: "), err
    assert "the dataset may be corrupt, and nothing was recorded" in err[0]
    assert record(prefix) == malformed
    flip(prefix + ".bin", 3)  # the data as built: the malformed checksums are replaced
    assert inspect_main([prefix, "--samples", "0", "--add-checksums"]) == 0, capsys.readouterr().err
    assert record(prefix) == built


def test_a_copy_of_a_dataset_is_verified_at_its_first_start(tmp_path: Path, tiny_tokenizer) -> None:
    """The scan is cached by the files' path, inode and time: a copy (the usual way bytes go bad) is read whole."""
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    resolve_data([prefix], tiny_tokenizer.vocab_size, str(tmp_path / "cache"))
    os.makedirs(tmp_path / "copy")
    copy = str(tmp_path / "copy" / "a_text_document")
    for suffix in (".bin", ".idx", ".json", ".tokenizer.model"):
        shutil.copy(prefix + suffix, copy + suffix)
    flip(copy + ".bin", 7)
    with pytest.raises(DatasetCorruptError, match=r"copy/a_text_document\.bin: bytes 0\.\."):
        resolve_data([copy], tiny_tokenizer.vocab_size, str(tmp_path / "cache"))


def test_a_copy_over_the_files_that_keeps_their_times_is_verified_again(tmp_path: Path, tiny_tokenizer) -> None:
    """Found 2026-12-07 (review): ``cp -p`` (or ``rsync -a --inplace``) of the dataset from its source over a copy
    verified before writes the same inode, size and modification time; the scan cache, keyed by those, vouched for
    the new bytes unread. The change time, which no copy can set, tells them apart."""
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    resolve_data([prefix], tiny_tokenizer.vocab_size, str(tmp_path / "cache"))
    before = os.stat(prefix + ".bin")
    flip(prefix + ".bin", 7)  # written in place: the same inode and size
    os.utime(prefix + ".bin", ns=(before.st_atime_ns, before.st_mtime_ns))  # the source's time, as cp -p sets it
    after = os.stat(prefix + ".bin")
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    with pytest.raises(DatasetCorruptError, match=r"a_text_document\.bin: bytes 0\.\."):
        resolve_data([prefix], tiny_tokenizer.vocab_size, str(tmp_path / "cache"))


def test_add_checksums_records_them_for_a_dataset_built_before_and_refuses_the_rest(
        tmp_path: Path, tiny_tokenizer, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    """Found 2026-12-07: while it ran, ``--add-checksums`` warned that the dataset records no checksums and that
    ``--add-checksums`` records them."""
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    built = record(prefix)
    Path(prefix + ".json").write_text(json.dumps({k: v for k, v in built.items() if k != "checksums"}))
    with caplog.at_level(logging.WARNING):
        assert inspect_main([prefix, "--samples", "0", "--add-checksums"]) == 0
    assert "recorded checksums of 1 + 1 blocks" in capsys.readouterr().out
    assert not [r.getMessage() for r in caplog.records if "records no checksums" in r.getMessage()]
    assert record(prefix) == built  # what preprocessing recorded
    for given, says in ((prefix, "already records checksums: nothing to add"),
                        (str(tmp_path / "bare"), "bare.json; a dataset made by Megatron's tools), which is where")):
        if given != prefix:
            for suffix in (".bin", ".idx"):
                shutil.copy(prefix + suffix, given + suffix)
        assert inspect_main([given, "--samples", "0", "--add-checksums"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert record(prefix) == built


def test_a_dataset_replaced_while_it_is_verified_is_said_to_have_changed_not_to_be_corrupt(
        tmp_path: Path, tiny_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07: a run that read a dataset's record, then verified its files after a merge or preprocessing
    had replaced them (or while a copy wrote over them in place), called the dataset corrupt: "copy it again ... or
    rebuild it"."""
    prefix, other = dataset(tmp_path, "a", tiny_tokenizer), dataset(tmp_path, "b", tiny_tokenizer)
    opened, recorded = IndexedDataset(prefix), read_dataset_metadata(prefix)
    merge_datasets([other, other], prefix, overwrite=True)  # the writer, between the record's read and the scan
    with pytest.raises(DatasetCorruptError, match=rf"^{prefix}\.json changed while {prefix} was being read \(a "
                                                  r"preprocessing or merge is replacing the dataset\): run again when "
                                                  "the writer is done$"):
        verified_token_range(opened, recorded)
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(4 * 4096))
    digests, before = tuple(file_block_digests(str(path), 4096)), os.stat(path)

    def write_in_place(block: memoryview) -> None:  # rsync --inplace of other bytes, past the block being read
        if block.nbytes and not os.path.exists(tmp_path / "written"):
            (tmp_path / "written").touch()
            with open(path, "r+b") as handle:
                handle.seek(3 * 4096)
                handle.write(os.urandom(4096))
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))

    monkeypatch.setattr(checksums, "hashing_threads", lambda: 1)  # blocks in order: the write lands between two
    with pytest.raises(DatasetCorruptError, match=rf"^{path} changed while it was read \(it is being replaced or "
                                                  r"written\): run again when the writer is done$"):
        verify_file(str(path), digests, 4096, write_in_place)


def test_a_bin_removed_while_its_dataset_is_verified_is_one_line(tmp_path: Path, tiny_tokenizer) -> None:
    """Found 2026-12-07: a .bin removed between the dataset's opening and its scan (its record left in place) was a
    FileNotFoundError traceback."""
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    opened, recorded = IndexedDataset(prefix), read_dataset_metadata(prefix)
    os.remove(f"{prefix}.bin")
    with pytest.raises(DatasetCorruptError, match=rf"^{prefix}\.bin was removed while {prefix} was being read: "
                                                  "restore the dataset"):
        verified_token_range(opened, recorded)


SHRINKS_WHILE_READ = """
import os, sys
from megamythos.data import checksums
path = sys.argv[1]
digests = tuple(checksums.file_block_digests(path, 4096))
checksums.hashing_threads = lambda: 1  # blocks in order: the copy lands between two of them
try:
    checksums.verify_file(path, digests, 4096, lambda block: os.truncate(path, 0))
except checksums.DatasetCorruptError as err:
    print(err)
"""


def test_a_file_copied_over_while_it_is_verified_is_one_error_not_a_crash(tmp_path: Path) -> None:
    """Found 2026-12-07 (review): the blocks were hashed through a memory map, and a file truncated under it (``cp``
    of a new copy over the dataset while rank 0 scans it) killed the process with SIGBUS, without a word."""
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(4 * 4096))
    done = subprocess.run([sys.executable, "-c", SHRINKS_WHILE_READ, str(path)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout == f"{path} shrank below 16384 bytes while it was read (it is being replaced or copied " \
                          "over): run again once it is in place\n"


def test_a_start_hashes_each_tokenizer_file_once_and_the_next_start_none_unless_it_changed(
        tmp_path: Path, tiny_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07 (audit): every rank hashed each dataset's tokenizer copy at every start (a blend of 3000
    datasets with 1 MB copies on 4096 ranks: 12 million reads of a shared filesystem). Rank 0 now hashes each
    distinct file once (datasets that share one copy through links) and caches the digest with its scans, which a
    later start (another rank) reads; a copy changed since is hashed again, and refused. The document flags' check
    (:func:`documents_eod`, every rank) hashed each copy again and loaded it: it now loads each tokenizer once."""
    prefix = dataset(tmp_path, "a", tiny_tokenizer)
    prefixes = [prefix]
    for name in ("b", "c"):  # the same dataset in two more folders, its files hard links of a's
        os.makedirs(tmp_path / name)
        prefixes.append(str(tmp_path / name / "a_text_document"))
        for suffix in (".bin", ".idx", ".json", ".tokenizer.model"):
            os.link(prefix + suffix, prefixes[-1] + suffix)
    opened: list[str] = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith(".tokenizer.model"):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    cache = str(tmp_path / "cache")
    resolve_data(prefixes, tiny_tokenizer.vocab_size, cache)
    assert len(opened) == 1, opened  # rank 0: one file, hashed once
    opened.clear()
    resolve_data(prefixes, tiny_tokenizer.vocab_size, cache)
    assert opened == []  # the other ranks (and the next start): rank 0's digest
    Tokenizer(prefix + ".tokenizer.model")
    loading, opened[:] = len(opened), []
    assert documents_eod({"eod_mask_loss": True}, prefixes, cache_dir=cache) == tiny_tokenizer.eos_id
    assert len(opened) == loading  # the one tokenizer loaded once, no copy hashed
    with real_open(prefix + ".tokenizer.model", "r+b") as copy:  # changed in place, under every link
        copy.write(b"\0")
    with pytest.raises(MetadataError, match=r"is not the tokenizer .* records"):
        resolve_data(prefixes, tiny_tokenizer.vocab_size, cache)
