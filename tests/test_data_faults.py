"""Faults of the data tools found by trying them as a new user would (2026-12-06): damaged compressed inputs,
JSON that spells a lone surrogate, a text file with a byte that is not UTF-8, a folder given as an input, the
skipped-record report of a failed run, a tokenizer without an eos piece, the tokenizer trainer's refusals and its
reading of a large text file, blend weights that are not finite, partition processes outliving a preprocessing run
killed alone; and (2026-12-07) Ctrl-C tracebacks of encoding and partition processes, a killed encoding process, a
strict error in one partition, a pipe as input. Replacing existing outputs: ``test_data_preprocess.py``."""
from __future__ import annotations

import contextlib
import errno
import gzip
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import sentencepiece as spm
import zstandard

from megamythos.data import sources
from megamythos.data import tokenizer as tokenizer_module
from megamythos.data.checksums import DatasetCorruptError
from megamythos.data.cli import inspect_main, preprocess_main, train_tokenizer_main
from megamythos.data.gpt_dataset import DataConfigError, parse_data_path
from megamythos.data.index_cache import IndexCacheError, load_or_build
from megamythos.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexedDatasetError,
    dataset_exists,
)
from megamythos.data.inspection import inspect_dataset
from megamythos.data.merge import merge_datasets
from megamythos.data.metadata import DatasetMismatchError, MetadataError, read_dataset_metadata
from megamythos.data.preprocess import BadInputError, PreprocessConfig, preprocess
from megamythos.data.pretraining import DataError, DataSources, resolve_data
from megamythos.data.sources import (
    ParsedRecord,
    Replacements,
    decode_replacing,
    iter_file_records,
    iter_texts,
    iter_training_texts,
    parse_record,
)
from megamythos.data.tokenizer import Tokenizer, line_chunks
from tests.helpers import REPO, dead_pid, launch_env, one_error_line, synthetic_documents, write_jsonl

DOCS = synthetic_documents(30, seed=3)


def error_of(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one ``error:`` line of a command line that must refuse ``argv`` with exit code 2 (argparse's refusals
    exit)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    return one_error_line(capsys.readouterr().err)


def preprocess_args(inputs: list[Path], out: Path, tokenizer: Tokenizer, *extra: str) -> list[str]:
    return ["--input", *map(str, inputs), "--output-prefix", str(out), "--tokenizer-model", tokenizer.model_path,
            "--no-progress", *extra]


@pytest.mark.parametrize("damage", ["truncated zst", "truncated gz", "not zst", "not gz"])
def test_a_damaged_compressed_input_is_one_line_naming_it(damage: str, tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A cut download was read up to the cut and the run ended with exit code 0 (zstd), or a traceback (gzip)."""
    data = "".join(json.dumps({"text": d}) + "\n" for d in DOCS * 20).encode()
    suffix = ".jsonl.zst" if "zst" in damage else ".jsonl.gz"
    packed = zstandard.ZstdCompressor().compress(data) if "zst" in damage else gzip.compress(data)
    path = tmp_path / f"in{suffix}"
    path.write_bytes(packed[: len(packed) // 2] if damage.startswith("truncated") else b"no compressed data here")
    for main, argv in ((preprocess_main, preprocess_args([path], tmp_path / "o", tiny_tokenizer)),
                       (train_tokenizer_main, ["--input", str(path), "--vocab-size", "400", "--model-prefix",
                                               str(tmp_path / "tok"), "--num-threads", "1"])):
        line = error_of(main, argv, capsys)
        assert str(path) in line and "re-download" in line, line
    assert not dataset_exists(str(tmp_path / "o_text_document")) and not (tmp_path / "tok.model").exists()


def test_a_whole_multi_frame_zst_is_read(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.zst"
    path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(json.dumps({"text": d}).encode() + b"\n")
                              for d in DOCS))
    assert list(iter_texts([str(path)])) == DOCS


def test_a_json_lone_surrogate_is_a_skipped_record(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """``"\\ud800"`` is valid JSON but no UTF-8 text: it crashed preprocessing and tokenizer training."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "lone \\ud800 x"}\n{"text": "pair \\ud83d\\ude00 ok"}\n')
    stats = preprocess(PreprocessConfig(inputs=[str(path)], output_prefix=str(tmp_path / "o"),
                                        tokenizer_model=tiny_tokenizer.model_path))
    dataset = IndexedDataset(str(tmp_path / "o_text_document"))
    assert [tiny_tokenizer.decode(dataset[i].tolist()) for i in range(len(dataset))] == ["fine", "pair \U0001F600 ok"]
    assert dict(stats.skipped_by_reason) == {"lone surrogate": 1}
    assert list(iter_texts([str(path)])) == ["fine", "pair \U0001F600 ok"]


def test_a_text_file_with_a_byte_that_is_not_utf8_is_kept_and_the_bytes_counted(
        tmp_path: Path, tiny_tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    """A .txt file is one document: one Latin-1 byte skipped the whole file, counted as one skipped record without
    its size. Now the byte becomes U+FFFD, the rest is kept, and a warning counts the bytes and names the first;
    a JSON line with such a byte is still skipped (its size told), ``--strict`` refuses, the default corpus's
    verbatim reading still skips the file (its data unchanged)."""
    book = tmp_path / "book.txt"
    book.write_bytes("Chapter 1\n\nIt was a fine day.\nThe caf\xe9 opened.\nThe end.\n".encode("latin-1"))
    kept = "Chapter 1\n\nIt was a fine day.\nThe caf\ufffd opened.\nThe end.\n"
    bad_json = b'{"text": "caf\xe9"}\n'
    (tmp_path / "lines.jsonl").write_bytes(json.dumps({"text": DOCS[0]}).encode() + b"\n" + bad_json)
    with caplog.at_level(logging.WARNING):
        stats = preprocess(PreprocessConfig(inputs=[str(book), str(tmp_path / "lines.jsonl")],
                                            output_prefix=str(tmp_path / "o"),
                                            tokenizer_model=tiny_tokenizer.model_path))
    dataset = IndexedDataset(str(tmp_path / "o_text_document"))
    assert [tiny_tokenizer.decode(dataset[i].tolist()) for i in range(len(dataset))] == [kept, DOCS[0]]
    assert stats.replaced == Replacements(1, 1, f"{book} line 4")
    told = f"1 invalid UTF-8 bytes replaced by U+FFFD in 1 text documents (first: {book} line 4)"
    assert [r.levelno for r in caplog.records if told in r.getMessage()] == [logging.WARNING], caplog.text
    assert dict(stats.skipped_by_reason) == {"non-UTF-8 bytes": 1}
    assert f"skipped=1 (1 non-UTF-8 bytes ({len(bad_json)} bytes)" in stats.summary()
    assert f"replaced={told}" in stats.summary()
    with pytest.raises(BadInputError, match=f"{book} line 4: invalid UTF-8 bytes in a text document"):
        preprocess(PreprocessConfig(inputs=[str(book)], output_prefix=str(tmp_path / "s"), strict=True,
                                    tokenizer_model=tiny_tokenizer.model_path))
    replaced, skipped = Replacements(), Counter()
    assert list(iter_texts([str(book)], replaced=replaced)) == [kept] and replaced == stats.replaced
    assert list(iter_texts([str(book)], skipped=skipped, verbatim=True)) == [] and skipped == {"non-UTF-8 bytes": 1}
    image = tmp_path / "picture.txt"  # binary data under a text name: skipped, not read as U+FFFD
    image.write_bytes(bytes(range(256)) * 4)
    (record,) = iter_file_records(str(image), ("text",))
    assert parse_record(record, ("text",)).reason == ("non-UTF-8 bytes (512 of 1024 invalid, 104 control bytes: "
                                                      "binary, or text in another encoding such as UTF-16; re-encode "
                                                      "it as UTF-8)")


def test_utf16_text_and_files_of_token_ids_are_no_text(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """Found 2026-12-06: a UTF-16 text file (a Windows export) was tokenised as NUL-interleaved characters, and
    ``--input 'data/*'`` took a dataset's .bin and .idx for text documents, each with a warning about a few
    replaced bytes at most: NUL and the other control bytes are valid UTF-8. A document that many of them make no
    text is skipped, by preprocessing and by tokenizer training; text with a few (a form feed, a stray NUL) is kept."""
    prose = "A document of plain prose, saved from a Windows editor.\n" * 20
    (tmp_path / "utf16.txt").write_bytes(prose.encode("utf-16"))
    (tmp_path / "ok.txt").write_text(prose + "\f\0\x1b[0m")
    preprocess(PreprocessConfig(inputs=[str(write_jsonl(tmp_path / "a.jsonl", DOCS))],
                                output_prefix=str(tmp_path / "data"), tokenizer_model=tiny_tokenizer.model_path))
    data = str(tmp_path / "data_text_document")
    inputs = [str(tmp_path / "utf16.txt"), str(tmp_path / "ok.txt"), f"{data}.bin", f"{data}.idx"]
    stats = preprocess(PreprocessConfig(inputs=inputs, output_prefix=str(tmp_path / "out"),
                                        tokenizer_model=tiny_tokenizer.model_path))
    assert (stats.documents, dict(stats.skipped_by_reason)) == (1, {"non-UTF-8 bytes": 3})
    assert "control bytes: binary, or text in another encoding such as UTF-16" in (
        tmp_path / "out.skipped.tsv").read_text().splitlines()[0]
    skipped = Counter()
    assert len(list(iter_training_texts(inputs, skipped=skipped))) == 1 and skipped == {"non-UTF-8 bytes": 3}


def test_invalid_utf8_is_counted_per_byte_and_document_in_input_order(tmp_path: Path,
                                                                      tiny_tokenizer: Tokenizer) -> None:
    """Blank-line separated documents: each names the line of its first invalid byte; the count and the first
    place do not depend on the workers, nor do the dataset's files."""
    book = tmp_path / "book.txt"
    book.write_bytes(b"Chapter 1\n\nIt was a fine day.\nThe caf\xe9 opened.\n")
    docs = tmp_path / "docs.txt"  # blank-line separated; an encoded U+FFFD is valid UTF-8, kept and not counted
    docs.write_bytes(b"one\n\ntwo \xff\xfe\n\nthree \xe2\x82 \xef\xbf\xbd\n")
    parsed = [parse_record(r, ("text",)) for r in iter_file_records(str(docs), ("text",), blank_line_separated=True)]
    assert parsed == [ParsedRecord(["one\n"]), ParsedRecord(["two \ufffd\ufffd\n"], None, 2, 3),
                      ParsedRecord(["three \ufffd \ufffd\n"], None, 2, 5)]
    assert decode_replacing(b"a\xe2\x82b\xff") == ("a\ufffdb\ufffd", 3, 1)
    runs = [preprocess(PreprocessConfig(inputs=[str(docs), str(book)], output_prefix=str(tmp_path / name),
                                        tokenizer_model=tiny_tokenizer.model_path, blank_line_documents=True,
                                        batch_documents=1, **options))
            for name, options in (("one", {}), ("two", {"workers": 2}))]
    assert runs[0].replaced == runs[1].replaced == Replacements(5, 3, f"{docs} line 3")
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"two_text_document{suffix}").read_bytes() == \
            (tmp_path / f"one_text_document{suffix}").read_bytes()
    records = [json.loads((tmp_path / f"{name}_text_document.json").read_text()) for name in ("one", "two")]
    assert records[1] == {**records[0], "tokenizer_model": "two_text_document.tokenizer.model"}


def test_a_folder_that_is_no_dataset_gets_a_glob_hint(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                      capsys: pytest.CaptureFixture) -> None:
    write_jsonl((tmp_path / "corpus").mkdir() or tmp_path / "corpus" / "a.jsonl", DOCS)
    line = error_of(preprocess_main, preprocess_args([tmp_path / "corpus"], tmp_path / "o", tiny_tokenizer), capsys)
    assert "is a folder but not a save_to_disk dataset" in line and f"{tmp_path / 'corpus'}/*.jsonl" in line, line


def _pipe_of(data: bytes, opened: list[int]) -> str:
    """A path that reads ``data`` from a pipe, as ``<(cat FILE)`` gives (``/dev/fd/N``; at most a pipe's buffer);
    its read end is added to ``opened``, for the caller to close."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    opened.append(read_end)
    return f"/dev/fd/{read_end}"


def test_a_pipe_is_read_as_json_lines_or_refused_in_one_line(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                              capsys: pytest.CaptureFixture) -> None:
    """``--input <(xzcat corpus.txt.xz)`` or ``/dev/stdin``: a text input is read more than once (its first line, to
    tell JSON lines; for the tokenizer, a scan and then its lines), which a pipe cannot be. Before: preprocessing
    said ``preprocessing into OUT failed: File or stream is not seekable``, blaming its output, and the tokenizer
    trainer ended in an ``io.UnsupportedOperation`` traceback. JSON lines, read once, stream from a pipe."""
    text, opened = "".join(DOCS).encode(), []
    try:
        for main, argv in [(preprocess_main, preprocess_args([Path(_pipe_of(text, opened))], tmp_path / "o",
                                                             tiny_tokenizer)),
                           (train_tokenizer_main, ["--input", _pipe_of(text, opened), "--vocab-size", "400",
                                                   "--model-prefix", str(tmp_path / "tok")])]:
            line = error_of(main, argv, capsys)
            assert "is a pipe or device, not a file" in line and "--input-format jsonl" in line, line
        assert not list(tmp_path.iterdir())
        jsonl = _pipe_of("".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode(), opened)
        assert preprocess_main(preprocess_args([Path(jsonl)], tmp_path / "o", tiny_tokenizer, "--input-format",
                                               "jsonl")) == 0
    finally:
        for fd in opened:
            os.close(fd)
    assert read_dataset_metadata(str(tmp_path / "o_text_document"))["num_documents"] == len(DOCS)


def test_a_failed_run_leaves_the_report_of_the_dataset_it_did_not_replace(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """The report was removed up front and rewritten as the run went: a failed run left its own bad records listed
    beside the old dataset (or, after ``--strict``, none). A clean run removes the old report."""
    messy, bad, clean = tmp_path / "messy.jsonl", tmp_path / "bad.jsonl", tmp_path / "clean.jsonl"
    messy.write_text(json.dumps({"text": DOCS[0]}) + "\nnot json\n")
    bad.write_text("not json\n")
    write_jsonl(clean, DOCS)
    report = tmp_path / "o.skipped.tsv"
    assert preprocess_main(preprocess_args([messy], tmp_path / "o", tiny_tokenizer)) == 0
    listed = report.read_text()
    assert listed == f"{messy}\t2\tmalformed JSON (Expecting value)\n"
    for extra in ([], ["--strict"]):
        error_of(preprocess_main, preprocess_args([bad], tmp_path / "o", tiny_tokenizer, "--overwrite", *extra),
                 capsys)
        assert report.read_text() == listed
    assert preprocess_main(preprocess_args([clean], tmp_path / "o", tiny_tokenizer, "--overwrite")) == 0
    assert not report.exists() and not list(tmp_path.glob("*.tmp.*"))


def test_append_eod_with_a_tokenizer_without_eos_is_refused_up_front(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    spm.SentencePieceTrainer.Train(sentence_iterator=iter(DOCS), model_prefix=str(tmp_path / "noeos"),
                                   vocab_size=200, hard_vocab_limit=False, eos_id=-1, minloglevel=2)
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    line = error_of(preprocess_main, preprocess_args([tmp_path / "a.jsonl"], tmp_path / "o",
                                                     Tokenizer(str(tmp_path / "noeos.model")), "--append-eod"), capsys)
    assert "--append-eod" in line and "no end-of-document piece" in line, line


def test_tokenizer_training_refusals_name_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    write_jsonl(tmp_path / "content.jsonl", DOCS, key="content")
    (tmp_path / "tiny.txt").write_text("ab ab")

    def refused(inputs: str, vocab: int, prefix: str) -> str:
        return error_of(train_tokenizer_main, ["--input", str(tmp_path / inputs), "--vocab-size", str(vocab),
                                               "--model-prefix", prefix, "--num-threads", "1"], capsys)

    assert train_tokenizer_main(["--input", str(tmp_path / "a.jsonl"), "--vocab-size", "400", "--model-prefix",
                                 str(tmp_path / "tok"), "--num-threads", "1"]) == 0
    model = (tmp_path / "tok.model").read_bytes()
    assert f"{tmp_path / 'tok.model'} exists; pass --overwrite" in refused("a.jsonl", 500, str(tmp_path / "tok"))
    assert (tmp_path / "tok.model").read_bytes() == model and not list(tmp_path.glob("*.tmp.*"))
    assert "argument --vocab-size: must be >= 300, got 299" in refused("a.jsonl", 299, str(tmp_path / "t1"))
    assert "names a folder" in refused("a.jsonl", 400, f"{tmp_path}/")
    for suffix in (".model", ".vocab"):  # a folder in the model's place: a traceback after training, before
        (tmp_path / f"dir{suffix}").mkdir()
        for extra in ([], ["--overwrite"]):
            line = error_of(train_tokenizer_main, ["--input", str(tmp_path / "a.jsonl"), "--vocab-size", "400",
                                                   "--model-prefix", str(tmp_path / "dir"), *extra], capsys)
            assert f"{tmp_path / 'dir'}{suffix} is a folder" in line, line
        (tmp_path / f"dir{suffix}").rmdir()
    assert not list(tmp_path.glob("*.tmp.*"))
    line = refused("content.jsonl", 400, str(tmp_path / "t2"))
    assert "30 missing key" in line and "pass --json-key KEY (now 'text')" in line, line
    line = refused("a.jsonl", 300, str(tmp_path / "t3"))  # more distinct characters than 300 - 260 pieces
    assert "--vocab-size 300 is fewer pieces than this text needs" in line and "or more" in line, line
    assert "yields only" in refused("tiny.txt", 400, str(tmp_path / "t4")), "advised a size it refuses"


def test_a_tokenizer_that_cannot_be_written_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-06: a full disk or a read-only file system when the trained model was written (after reading
    the whole sample) was an OSError traceback (``--model-prefix /proc/tok`` as root, a writable-looking folder)."""
    write_jsonl(tmp_path / "a.jsonl", DOCS)

    def disk_full(path: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(tokenizer_module, "_drop_unrecorded_fields", disk_full)
    line = error_of(train_tokenizer_main, ["--input", str(tmp_path / "a.jsonl"), "--vocab-size", "400",
                                           "--model-prefix", str(tmp_path / "tok"), "--num-threads", "1"], capsys)
    assert f"--model-prefix {tmp_path / 'tok'}: the tokenizer cannot be written (" in line, line
    assert "the disk is full" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_tokenizer_training_reads_a_large_text_file_in_bounded_memory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A .txt input (one document per file, spm_train's usual one big corpus file) was read whole, then decoded
    and split into lines: about 5x its size in memory (a 17 MB file: 127 MB peak RSS), whatever --max-sentences.
    Now it is read in blocks of whole lines: a file 4x larger takes no more of the Python heap."""
    monkeypatch.setattr(sources, "STREAM_BLOCK_BYTES", 1 << 16, raising=False)
    text = "".join(synthetic_documents(300, seed=5)) * 40

    def peak_bytes(copies: int) -> tuple[int, int]:
        corpus = tmp_path / f"corpus{copies}.txt"
        corpus.write_text(text * copies)
        tracemalloc.start()
        try:
            assert train_tokenizer_main(["--input", str(corpus), "--vocab-size", "400", "--model-prefix",
                                         str(tmp_path / f"tok{copies}"), "--max-sentences", "20",
                                         "--num-threads", "1"]) == 0
            return tracemalloc.get_traced_memory()[1], corpus.stat().st_size
        finally:
            tracemalloc.stop()

    (small, size), (large, _) = peak_bytes(1), peak_bytes(4)
    assert size > 2_000_000
    assert large < small + size / 2, f"peak {small} bytes for {size} bytes of text, {large} for 4x as much"


def test_a_text_file_streamed_for_tokenizer_training_gives_what_reading_it_whole_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines, skips and U+FFFD counts of a text file read in blocks (any block size) are those of the file read
    whole: BOM, CRLF, other line breaks, invalid and cut UTF-8, binary and blank files, a line longer than a block."""
    bodies = {"mixed": (b"\xef\xbb\xbfa b\r\nc\xff d\re\xe2\x80\xa8f\x0bg\xc2\x85" + b"x" * 40
                        + b"\xe4\xb8\n\n\xe4\xb8\xad\r\n"),
              "tail": b"no final newline \xe4", "binary": bytes(range(256)) * 2, "blank": b" \n\t\r\n",
              "json.txt": b"[1, 2]\n"}
    paths = []
    for name, body in bodies.items():
        (tmp_path / name).write_bytes(body)
        paths.append(str(tmp_path / name))
    whole, whole_skipped, whole_replaced = [], Counter(), Replacements()
    for text in iter_texts(paths, skipped=whole_skipped, replaced=whole_replaced):
        whole.append(list(line_chunks(text, 8)))
    assert whole_skipped == {"non-UTF-8 bytes": 1, "empty document": 1} and whole_replaced.invalid_bytes == 4
    for block in (1, 2, 3, 7, 1 << 20):
        monkeypatch.setattr(sources, "STREAM_BLOCK_BYTES", block)
        streamed, skipped, replaced = [], Counter(), Replacements()
        for text in iter_training_texts(paths, skipped=skipped, replaced=replaced):
            assert not isinstance(text, str)
            streamed.append(list(line_chunks(text, 8)))
        assert (streamed, skipped, replaced) == (whole, whole_skipped, whole_replaced), block


def test_inspect_finds_a_record_that_belongs_to_other_data(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                            capsys: pytest.CaptureFixture) -> None:
    """A record left beside other tokens (an old merge, files copied over) was reported valid."""
    for name, docs in (("a", DOCS), ("b", DOCS[:3])):
        assert preprocess_main(preprocess_args([write_jsonl(tmp_path / f"{name}.jsonl", docs)], tmp_path / name,
                                               tiny_tokenizer)) == 0
    for suffix in (".bin", ".idx"):
        shutil.copy(tmp_path / f"b_text_document{suffix}", tmp_path / f"a_text_document{suffix}")
    with pytest.raises(SystemExit) as exit_info:
        inspect_main([str(tmp_path / "a_text_document")])
    assert exit_info.value.code == 1
    assert "records num_documents=30 but the dataset holds 3 documents" in capsys.readouterr().err


def test_inspect_refuses_a_tokenizer_model_that_is_not_the_recorded_one(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """``inspect_dataset.py --tokenizer-model`` of another tokenizer decoded the samples to other text under
    ``valid: ...`` (exit 0), or, with fewer ids than the data uses, said ``INVALID: ... the .bin is corrupt``
    (exit 1) of a sound dataset. Now it is refused, as evaluate's and generate's ``--tokenizer`` are."""
    assert preprocess_main(preprocess_args([write_jsonl(tmp_path / "a.jsonl", DOCS)], tmp_path / "a",
                                           tiny_tokenizer)) == 0
    prefix = str(tmp_path / "a_text_document")
    small = train_tokenizer_main(["--input", str(tmp_path / "a.jsonl"), "--vocab-size", "320", "--model-prefix",
                                  str(tmp_path / "small"), "--num-threads", "1"])
    other = train_tokenizer_main(["--input", str(tmp_path / "a.jsonl"), "--vocab-size", "400", "--model-prefix",
                                  str(tmp_path / "other"), "--num-threads", "1", "--max-sentences", "5"])
    assert (small, other) == (0, 0) and Tokenizer(tmp_path / "other.model").fingerprint != tiny_tokenizer.fingerprint
    capsys.readouterr()
    for model in ("small.model", "other.model"):
        line = error_of(inspect_main, [prefix, "--tokenizer-model", str(tmp_path / model)], capsys)
        assert "vocabulary mismatch" in line and "leave out --tokenizer-model" in line, line
    assert inspect_main([prefix, "--samples", "1", "--tokenizer-model", tiny_tokenizer.model_path]) == 0
    assert "valid: sizes" in capsys.readouterr().out


@pytest.mark.parametrize("weights", [("nan", "1"), ("inf", "1"), ("1e308", "1e308")])
def test_blend_weights_must_be_finite(weights: tuple[str, str]) -> None:
    """NaN or infinite weights passed the preflight and failed inside every rank with a traceback."""
    with pytest.raises(DataConfigError, match="finite numbers >= 0"):
        parse_data_path([weights[0], "A", weights[1], "B"])


@pytest.mark.parametrize("sources, flag, blend", [
    (DataSources(["0.5", "A", "x", "B"]), "--data-path", "0.5 A x B"),
    (DataSources(per_split=[["A"], ["-1", "B", "2", "C"], []]), "--valid-data-path", "-1 B 2 C"),
    (DataSources(per_split=[["A"], [], ["0.5", "B", "C"]]), "--test-data-path", "0.5 B C")])
def test_a_malformed_blend_names_the_flag_that_gave_it(sources: DataSources, flag: str, blend: str) -> None:
    """Found 2026-12-07: ``--data-path 0.5 A x B`` was refused as ``data_path ['0.5', 'A', 'x', 'B'] is invalid``,
    naming a field where the user gave a flag (and per-split paths read ``--valid-data-path: data_path ...``)."""
    with pytest.raises(DataConfigError, match=rf"^{flag}: '{blend}' is invalid: "):
        sources.prefixes()


def test_partitions_log_the_first_skipped_records_in_input_order_once(tmp_path: Path,
                                                                     tiny_tokenizer: Tokenizer) -> None:
    """Found 2026-12-07: ``--partitions K`` logged up to K x 20 ``skipped`` lines, each partition process its first
    20 as they came, interleaved in an order that changed from run to run."""
    inputs = []
    for i in range(3):  # 15 bad records each, on the odd lines
        inputs.append(tmp_path / f"{i}.jsonl")
        inputs[-1].write_text("".join("{bad\n" if line % 2 else json.dumps({"text": doc}) + "\n"
                                      for line, doc in enumerate(DOCS, 1)))
    done = subprocess.run([sys.executable, str(REPO / "data_prep" / "preprocess_data.py"),
                           *preprocess_args(inputs, tmp_path / "o", tiny_tokenizer, "--partitions", "3")],
                          env=launch_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    logged = [line.split(": skipped ", 1)[1].split(": ")[0] for line in done.stderr.splitlines()
              if ": skipped " in line]
    assert logged == [f"{path}:{line}" for path in inputs for line in range(1, len(DOCS) + 1, 2)][:20]
    assert "skipped=45 (45 malformed JSON" in done.stdout


def test_partition_processes_end_when_preprocessing_is_killed_alone(tmp_path: Path,
                                                                    tiny_tokenizer: Tokenizer) -> None:
    """A SIGTERM to the main process only (not its group) left every partition process waiting for work, for ever:
    each holds the work queue's write end, so its read never ends."""
    docs = synthetic_documents(400, seed=4) * 60
    inputs = [write_jsonl(tmp_path / f"{i}.jsonl", docs) for i in range(2)]
    proc = subprocess.Popen([sys.executable, str(REPO / "data_prep" / "preprocess_data.py"),
                             *preprocess_args(inputs, tmp_path / "o", tiny_tokenizer, "--partitions", "2")],
                            env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(children := psutil.Process(proc.pid).children()) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the partition processes never started"
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: give it more input"
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=20)
    for child in alive:
        child.kill()
    assert not alive, f"{len(alive)} partition process(es) outlived the run"
    assert not dataset_exists(str(tmp_path / "o_text_document"))


def _ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (bit 1 of its ``SigIgn`` mask in ``/proc/PID/status``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


def _check_hears_sigint(pid: int) -> None:
    """Fail at once, naming the cause, where the process to be interrupted ignores SIGINT: a SIG_IGN it inherited
    (from this test's process: ``signal.getsignal`` here) would turn the test into a 60-s hang (seen once in
    ``make test-fast``, 2026-12-08, cause not found)."""
    assert not _ignores_sigint(pid), (f"process {pid} ignores SIGINT; this test process's SIGINT handler: "
                                      f"{signal.getsignal(signal.SIGINT)!r}")


def test_ctrl_c_with_workers_is_one_line(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """Ctrl-C (SIGINT to the process group) while ``--workers 2`` encode: ``error: interrupted``, exit 130, no
    temporaries. Before: each encoding process printed a ``KeyboardInterrupt`` traceback above that line. The input
    is a FIFO, so the run is still reading when the signal comes, however fast the machine."""
    fifo = tmp_path / "live.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, str(REPO / "data_prep" / "preprocess_data.py"),
                             *preprocess_args([fifo], tmp_path / "o", tiny_tokenizer, "--workers", "2")],
                            env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    with open(fifo, "w") as writer:  # opens once the run reads it: its pool is forked by then
        writer.write("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
        writer.flush()
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2, [w.cmdline() for w in workers]
        deadline = time.monotonic() + 10  # the workers' start-up, where a signal would still be Python's to handle
        while not all(map(_ignores_sigint, (w.pid for w in workers))) and time.monotonic() < deadline:
            time.sleep(0.05)
        _check_hears_sigint(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert one_error_line(err) == "error: interrupted"
    assert [p.name for p in tmp_path.iterdir()] == [fifo.name]


# Preprocessing in which every batch kills the process that encodes it, as the out-of-memory killer would.
_DYING_ENCODER = """
import os, sys
from megamythos.data import preprocess
from megamythos.data.cli import preprocess_main

def killed(*args):
    os._exit(137)

preprocess._encode_batch = killed
sys.exit(preprocess_main(sys.argv[1:]))
"""


@pytest.mark.parametrize("flags", [("--workers", "2"), ("--partitions", "2")])
def test_a_killed_encoding_or_partition_process_ends_the_run_in_one_line(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                                         flags: tuple[str, str]) -> None:
    """A process of ``--workers`` or ``--partitions`` that dies holding a batch (the out-of-memory killer's SIGKILL
    on a large corpus): one line naming the flag, exit 2, nothing written, no process left. Before: with
    ``--workers`` the run waited for the lost batch for ever (``multiprocessing.Pool`` starts a new worker and
    never answers); with ``--partitions`` a ``BrokenProcessPool`` traceback."""
    inputs = [write_jsonl(tmp_path / f"{i}.jsonl", DOCS) for i in range(2)]
    proc = subprocess.Popen([sys.executable, "-c", _DYING_ENCODER, *preprocess_args(inputs, tmp_path / "o",
                                                                                      tiny_tokenizer, *flags)],
                            env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its pool, if the test failed by timing out
    assert proc.returncode == 2
    assert one_error_line(err).startswith(f"error: a process of {flags[0]} ended without its result")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.jsonl", "1.jsonl"]
    _, alive = psutil.wait_procs([p for p in psutil.process_iter() if _group_of(p) == proc.pid], timeout=10)
    assert not alive, f"{len(alive)} process(es) of the run outlived it"


def _group_of(process: psutil.Process) -> int | None:
    """The process group of ``process``, None if it has ended."""
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def _start_partitions(tmp_path: Path, tokenizer: Tokenizer, first: Path, second: Path,
                      *extra: str) -> tuple[subprocess.Popen, int]:
    """``preprocess_data.py --partitions 2`` on ``first`` and ``second`` (one partition each), in a session of its
    own; one of them is ``tmp_path/live.jsonl``, a FIFO that is never written: its partition waits for ever. Returns
    the process and the FIFO's descriptor held open here (for its reader's open not to wait), for the caller to
    close."""
    held = os.open(tmp_path / "live.jsonl", os.O_RDWR)
    proc = subprocess.Popen([sys.executable, str(REPO / "data_prep" / "preprocess_data.py"),
                             *preprocess_args([first, second], tmp_path / "o", tokenizer, "--partitions", "2",
                                              *extra)],
                            env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc, held


def _finish(proc: subprocess.Popen, held: int) -> str:
    """The stderr of ``proc`` once it ends (killed with its group after 60 s, failing the test); closes ``held``."""
    try:
        return proc.communicate(timeout=60)[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(held)


def test_a_strict_error_in_one_partition_ends_the_others(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """Before: the run reported the bad record only once every other partition had read its whole share of the
    input (``ProcessPoolExecutor`` waits for its tasks on the way out): here, for ever."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS) + "{not json}\n")
    os.mkfifo(tmp_path / "live.jsonl")
    proc, held = _start_partitions(tmp_path, tiny_tokenizer, bad, tmp_path / "live.jsonl", "--strict")
    err = _finish(proc, held)
    assert proc.returncode == 2
    assert one_error_line(err).startswith(f"error: {bad}:{len(DOCS) + 1}: malformed JSON")


def test_ctrl_c_while_a_partition_has_finished_is_one_line(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """Ctrl-C while one partition is done and another still reads. Before: the finished partition's process,
    waiting for work, printed a ``KeyboardInterrupt`` traceback above ``error: interrupted``."""
    done = write_jsonl(tmp_path / "done.jsonl", DOCS)
    os.mkfifo(tmp_path / "live.jsonl")
    proc, held = _start_partitions(tmp_path, tiny_tokenizer, done, tmp_path / "live.jsonl")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("o.parts.tmp.*/000_text.idx")) and proc.poll() is None:  # the first part written
        assert time.monotonic() < deadline, "the first partition never finished"
        time.sleep(0.05)
    _check_hears_sigint(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    err = _finish(proc, held)
    assert proc.returncode == 130
    assert one_error_line(err) == "error: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.jsonl", "live.jsonl"]


# ------------------------------------------------------------ datasets a run reads (found 2026-12-06, a Megatron user)
def _dataset(tmp_path: Path, name: str, docs: list[str], tokenizer: Tokenizer) -> str:
    assert preprocess_main(preprocess_args([write_jsonl(tmp_path / f"{name}.jsonl", docs)], tmp_path / name,
                                           tokenizer, "--append-eod")) == 0
    return str(tmp_path / f"{name}_text_document")


def test_a_run_refuses_tokens_rebuilt_beside_an_old_record(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """Megatron's preprocessing into the same prefix leaves our record (and tokenizer copy) beside other tokens:
    inspect refused it, while the trainer and evaluate trained and evaluated on it."""
    prefix, other = _dataset(tmp_path, "a", DOCS, tiny_tokenizer), _dataset(tmp_path, "b", DOCS[:3], tiny_tokenizer)
    for suffix in (".bin", ".idx"):
        shutil.copy(other + suffix, prefix + suffix)
    with pytest.raises(IndexedDatasetError, match="a_text_document.json records num_documents=30 but the dataset "
                                                  "holds 3 documents: the record belongs to other data"):
        resolve_data([prefix], tiny_tokenizer.vocab_size)


def test_a_run_refuses_a_corrupt_index(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """One flipped bit in a sequence length: the run read the next sequences' tokens again, exit 0."""
    prefix = _dataset(tmp_path, "a", DOCS, tiny_tokenizer)
    index = bytearray(Path(prefix + ".idx").read_bytes())
    index[34 + 4 * 10 + 1] ^= 1  # header 34 bytes, then int32 sizes: sequence 10's length + 256
    Path(prefix + ".idx").write_bytes(bytes(index))
    with pytest.raises(IndexedDatasetError, match=r"a_text_document\.idx: pointer of sequence 11 .* corrupt"):
        resolve_data([prefix], tiny_tokenizer.vocab_size)


def test_a_renamed_dataset_reads_its_own_tokenizer_copy(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """The record names the copy by its old prefix: the error said to train a tokenizer. The old prefix rebuilt
    with another tokenizer holds another copy there: the copy's own one is read, not refused (found 2026-12-07)."""
    prefix = _dataset(tmp_path, "a", DOCS, tiny_tokenizer)
    renamed = str(tmp_path / "renamed")
    for suffix in (".bin", ".idx", ".json", ".tokenizer.model"):
        shutil.copy(prefix + suffix, renamed + suffix)
    Path(prefix + ".tokenizer.model").write_bytes(b"another tokenizer")
    assert resolve_data([renamed], tiny_tokenizer.vocab_size).tokenizer_model == renamed + ".tokenizer.model"
    os.remove(prefix + ".tokenizer.model")
    assert resolve_data([renamed], tiny_tokenizer.vocab_size).tokenizer_model == renamed + ".tokenizer.model"
    os.remove(renamed + ".tokenizer.model")
    with pytest.raises(MetadataError, match=r"renamed\.json names the tokenizer copy .*a_text_document\.tokenizer"
                                            r"\.model, which does not exist .* at .*renamed\.tokenizer\.model"):
        resolve_data([renamed], tiny_tokenizer.vocab_size)


def test_a_tokenizer_copy_that_is_not_the_recorded_one_is_refused(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """A flipped byte in a dataset's ``PREFIX.tokenizer.model``, or in the fingerprint its ``PREFIX.json`` records:
    the trainer and evaluate took the copy without comparing it with the record (found 2026-12-07), and a run
    carries that tokenizer into every checkpoint, where generate, evaluate and the exports encode with it."""
    prefix = _dataset(tmp_path, "a", DOCS, tiny_tokenizer)
    copy, record = Path(prefix + ".tokenizer.model"), Path(prefix + ".json")
    good_copy, good_record = copy.read_bytes(), record.read_text()
    middle = len(good_copy) // 2
    copy.write_bytes(good_copy[:middle] + bytes([good_copy[middle] ^ 1]) + good_copy[middle + 1:])
    with pytest.raises(MetadataError, match=rf"{copy} is not the tokenizer {record} records \(sha256 "):
        resolve_data([prefix], tiny_tokenizer.vocab_size)
    copy.write_bytes(good_copy)
    fingerprint = json.loads(good_record)["tokenizer_fingerprint"]
    record.write_text(good_record.replace(fingerprint, ("1" if fingerprint[0] == "0" else "0") + fingerprint[1:]))
    with pytest.raises(MetadataError, match=rf"{copy} is not the tokenizer {record} records"):
        resolve_data([prefix], tiny_tokenizer.vocab_size)
    record.write_text(good_record)
    assert resolve_data([prefix], tiny_tokenizer.vocab_size).tokenizer_model == str(copy)


def test_merge_refuses_a_dataset_without_a_record_among_recorded_ones(tmp_path: Path,
                                                                      tiny_tokenizer: Tokenizer) -> None:
    """A record-less first input let every other record go unchecked against each other, and the merged record
    claimed all tokens for one tokenizer."""
    recorded = _dataset(tmp_path, "a", DOCS, tiny_tokenizer)
    bare = str(tmp_path / "bare")
    for suffix in (".bin", ".idx"):
        shutil.copy(recorded + suffix, bare + suffix)
    with pytest.raises(DatasetMismatchError, match=r"bare has no tokenizer record"):
        merge_datasets([bare, recorded], str(tmp_path / "merged"))
    plain = str(tmp_path / "plain")
    assert preprocess_main(preprocess_args([write_jsonl(tmp_path / "p.jsonl", DOCS)], tmp_path / "plain",
                                           tiny_tokenizer)) == 0
    merge_datasets([recorded, plain + "_text_document"], str(tmp_path / "both"))
    assert read_dataset_metadata(str(tmp_path / "both"))["append_eod"] is False  # was the first input's: True


def test_merge_refuses_an_input_inspect_calls_invalid(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """The merge recomputes pointers and counts, so an input with a record left beside other tokens (Megatron's
    preprocessing into the same prefix) or a corrupt index came out as a dataset every check passed: the stale
    record then claimed the other tokens for its tokenizer."""
    good, stale = _dataset(tmp_path, "a", DOCS, tiny_tokenizer), _dataset(tmp_path, "b", DOCS, tiny_tokenizer)
    other = _dataset(tmp_path, "c", DOCS[:3], tiny_tokenizer)
    for suffix in (".bin", ".idx"):
        shutil.copy(other + suffix, stale + suffix)
    with pytest.raises(IndexedDatasetError, match="b_text_document.json records num_documents=30 but the dataset "
                                                  "holds 3 documents"):
        merge_datasets([good, stale], str(tmp_path / "merged"))
    corrupt = str(tmp_path / "corrupt")
    for suffix in (".bin", ".idx", ".json", ".tokenizer.model"):
        shutil.copy(good + suffix, corrupt + suffix)
    index = bytearray(Path(corrupt + ".idx").read_bytes())
    sizes = np.frombuffer(index, np.int32, len(DOCS), 34).copy()
    sizes[4:6] += (1, -1)  # a token moved from document 5 to 4: the .bin size still agrees
    index[34:34 + 4 * len(DOCS)] = sizes.tobytes()
    Path(corrupt + ".idx").write_bytes(bytes(index))
    with pytest.raises(IndexedDatasetError, match=r"corrupt\.idx: pointer of sequence 5 .* the index is corrupt"):
        merge_datasets([good, corrupt], str(tmp_path / "merged"))
    assert not dataset_exists(str(tmp_path / "merged"))
    assert len(merge_datasets([good, other], str(tmp_path / "merged"))) == len(DOCS) + 3


def test_a_damaged_index_cache_entry_is_built_again_or_one_line(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Found 2026-12-07: a byte changed in a cached sample index (a disk, a copy) read other samples, or past the
    dataset, without a word; the description now records each array's sha256, and the loading rank 0 builds a
    damaged entry again. An entry written before the digests were recorded is still one line when it cannot be
    read."""
    arrays = load_or_build(str(tmp_path), {"class": "T"}, lambda: {"x": np.arange(1000)})
    data = bytearray(Path(arrays["x"].filename).read_bytes())
    data[-8] ^= 1  # one bit of the last value: a valid index, another sample
    Path(arrays["x"].filename).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = load_or_build(str(tmp_path), {"class": "T"}, lambda: {"x": np.arange(1000)})
    assert "-x.npy differs from its recorded sha256): building it again" in caplog.text
    assert np.array_equal(again["x"], np.arange(1000))
    description = next(tmp_path.glob("*-description.json"))
    old = json.loads(description.read_text())
    del old["array_sha256"]  # an entry written before 2026-12-07
    description.write_text(json.dumps(old))
    os.truncate(again["x"].filename, 200)
    with pytest.raises(IndexCacheError, match="is damaged .* remove its files and run again"):
        load_or_build(str(tmp_path), {"class": "T"}, lambda: {"x": np.arange(1000)})


def test_a_damaged_index_cache_entry_another_run_is_rebuilding_is_built_again(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07: two runs starting together on a damaged cache entry (a job array, a sweep) both judged it
    damaged and removed its description; the second removal was a FileNotFoundError traceback (12 of 12 real
    two-process races). The state that race leaves: the description gone between the check and the rebuild."""
    from megamythos.data import index_cache

    arrays = load_or_build(str(tmp_path), {"class": "T"}, lambda: {"x": np.arange(1000)})
    data = bytearray(Path(arrays["x"].filename).read_bytes())
    data[-8] ^= 1
    Path(arrays["x"].filename).write_bytes(bytes(data))
    judge = index_cache.damaged_entry

    def judged_while_another_run_rebuilds(cache_dir: str, key: str) -> str | None:
        damage = judge(cache_dir, key)
        next(tmp_path.glob("*-description.json")).unlink()  # the other run's rebuild
        return damage

    monkeypatch.setattr(index_cache, "damaged_entry", judged_while_another_run_rebuilds)
    again = load_or_build(str(tmp_path), {"class": "T"}, lambda: {"x": np.arange(1000)})
    assert np.array_equal(again["x"], np.arange(1000))
    monkeypatch.undo()
    assert index_cache.damaged_entry(str(tmp_path), next(tmp_path.glob("*-description.json")).name[:32]) is None


def test_temporaries_of_a_killed_index_build_are_removed_by_the_next(tmp_path: Path) -> None:
    """A rank killed while it writes the index cache (SIGTERM during start-up, before the trainer's signal
    handlers are set) leaves ``KEY-NAME.npy.tmp.<host>.<pid>``; found 2026-12-07: kept for good, the next build
    writing its own. The next build of that cache entry removes those of dead processes of this host."""
    load_or_build(str(tmp_path), {"class": "T"}, lambda: {"x": np.arange(10)})
    built = {p.name for p in tmp_path.iterdir()}
    for p in tmp_path.iterdir():
        p.rename(f"{p}.tmp.{socket.gethostname()}.{dead_pid()}")  # a killed build's temporary
    load_or_build(str(tmp_path), {"class": "T"}, lambda: {"x": np.arange(10)})
    assert {p.name for p in tmp_path.iterdir()} == built


def test_the_data_scan_is_cached_and_redone_when_the_data_changes(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every start, on every rank, read every byte of every dataset (2 TB per rank for a 1T-token corpus)."""
    prefix, vocab, cache = _dataset(tmp_path, "a", DOCS, tiny_tokenizer), tiny_tokenizer.vocab_size, tmp_path / "c"
    bare = str(tmp_path / "bare")  # without a record (Megatron's tools): only the token ids tell the vocabulary
    for suffix in (".bin", ".idx"):
        shutil.copy(prefix + suffix, bare + suffix)
    scanned = resolve_data([prefix], vocab, str(cache))
    resolve_data([bare], vocab, str(cache))
    assert len(list(cache.glob("*-scan.json"))) == 2
    largest = IndexedDataset(bare).token_range()[1]

    def no_scan(self: IndexedDataset) -> None:
        raise AssertionError(f"{self.path_prefix} scanned again")

    with monkeypatch.context() as patch:
        patch.setattr(IndexedDataset, "validate", no_scan)
        patch.setattr(IndexedDataset, "token_range", no_scan)
        assert resolve_data([prefix], vocab, str(cache)).shapes == scanned.shapes
        with pytest.raises(IndexedDatasetError, match=f"holds token id {largest} but the vocabulary has {largest} "):
            resolve_data([bare], largest, str(cache))  # checked against the cached range
    for damaged in cache.glob("*-scan.json"):
        damaged.write_text("{")
    assert resolve_data([prefix], vocab, str(cache)).shapes == scanned.shapes  # scanned again
    tokens = np.memmap(prefix + ".bin", dtype=IndexedDataset(prefix).dtype, mode="r+")
    tokens[5] = vocab
    tokens.flush()
    del tokens
    with pytest.raises(DatasetCorruptError, match="differ from the sha256 its record holds"):  # scanned again
        resolve_data([prefix], vocab, str(cache))
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(DatasetCorruptError, match="differ from the sha256"):  # no cache: scanned all the same
        resolve_data([prefix], vocab, str(not_a_folder))


def test_a_padded_vocabulary_reads_a_dataset_of_a_smaller_tokenizer(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A model vocabulary padded past the tokenizer's (Megatron's --make-vocab-size-divisible-by) was refused."""
    prefix = _dataset(tmp_path, "a", DOCS, tiny_tokenizer)
    with caplog.at_level("INFO"):
        resolve_data([prefix], 512)
    assert "a 400-token vocabulary in a model of vocab_size=512, padded" in caplog.text
    with pytest.raises(DataError, match="400-token vocabulary but the model has vocab_size=399; pass --override "
                                        r"vocab_size=400 \(or more: a padded vocabulary\)"):
        resolve_data([prefix], 399)
    record = json.loads(Path(prefix + ".json").read_text())
    del record["checksums"]  # built before they were recorded: the token bound is what finds the id
    Path(prefix + ".json").write_text(json.dumps(record))
    tokens = np.memmap(prefix + ".bin", dtype=np.uint16, mode="r+")
    tokens[7] = 450  # past the tokenizer's 400 ids, inside the padded 512: no tokenizer made it
    tokens.flush()
    del tokens
    with pytest.raises(IndexedDatasetError, match=r"a_text_document\.bin holds token id 450 but the vocabulary has "
                                                  "400 ids"):
        resolve_data([prefix], 512, str(tmp_path / "c"))  # found 2026-12-06: trained on; inspect said INVALID


def test_output_prefixes_that_name_no_file_or_an_input_are_refused(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-06: ``--output-prefix ''`` wrote hidden ``.bin``/``.idx``/``.json`` files into the working
    directory (the repository root, for the merge) and ``DIR/`` wrote ``DIR/_text_document.*`` (the merge: a
    traceback); an existing ``PREFIX_text_document.json`` was replaced without --overwrite, even when it was the
    input; a merge into one of its inputs was accepted with --overwrite."""
    from megamythos.data.cli import merge_main

    monkeypatch.chdir(tmp_path)
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    (tmp_path / "folder").mkdir()
    for prefix in ("", "folder/", str(tmp_path / "folder") + os.sep):
        line = error_of(preprocess_main, preprocess_args([source], prefix, tiny_tokenizer), capsys)
        assert f"--output-prefix {prefix!r} names a directory, not a file prefix" in line, line
    record = tmp_path / "q_text_document.json"
    record.write_text('{"mine": 1}\n')
    line = error_of(preprocess_main, preprocess_args([source], tmp_path / "q", tiny_tokenizer), capsys)
    assert f"{record} already exists (the record of a dataset" in line and "pass --overwrite" in line, line
    line = error_of(preprocess_main, preprocess_args([record], tmp_path / "q", tiny_tokenizer, "--overwrite"), capsys)
    assert f"--input {record} is a file this run writes" in line, line
    assert record.read_text() == '{"mine": 1}\n'
    dataset = _dataset(tmp_path, "a", DOCS, tiny_tokenizer)
    for prefix in ("", "folder/"):
        line = error_of(merge_main, ["--input", dataset, "--output-prefix", prefix], capsys)
        assert "names a directory, not a file prefix" in line, line
    line = error_of(merge_main, ["--input", dataset, "--output-prefix", dataset, "--overwrite"], capsys)
    assert f"--output-prefix {dataset} is one of the inputs" in line, line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_merge_of_inputs_that_hold_no_token_is_refused_and_writes_nothing(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07: inputs of 0 documents merged into a dataset with an empty ``.bin``, which Megatron's reader
    cannot map (``cannot mmap an empty file``), with exit code 0."""
    from megamythos.data.cli import merge_main

    empty = [str(tmp_path / name) for name in ("e1", "e2")]
    for prefix in empty:
        with IndexedDatasetBuilder(prefix, np.uint16) as builder:
            builder.finalize()
    before = sorted(tmp_path.iterdir())
    line = error_of(merge_main, ["--input", *empty, "--output-prefix", str(tmp_path / "out")], capsys)
    assert f"--input {' '.join(empty)}: every input is empty (no token)" in line, line
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("documents", [0, 1, 2])
def test_a_dataset_that_holds_no_token_is_invalid_and_refused_by_the_data_check(
        documents: int, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07: a dataset of no document, or of empty documents only (an empty ``.bin``, which Megatron's
    reader cannot map), was called valid by ``inspect_dataset.py`` (exit 0) and passed the trainer's data check: the
    run then stopped at the index build blaming ``--split`` or ``--seq-length``, or started without a word where
    its split went unread (a ``--valid-data-path`` with no validations)."""
    empty, good = str(tmp_path / "empty"), str(tmp_path / "good")
    with IndexedDatasetBuilder(empty, np.uint16) as builder:
        for _ in range(documents):
            builder.add_document([])
        builder.finalize()
    with IndexedDatasetBuilder(good, np.uint16) as builder:
        builder.add_document(np.arange(40))
        builder.finalize()
    says = (f"holds no token ({documents} document{'' if documents == 1 else 's'}): its .bin is empty, which "
            "Megatron's reader cannot map")
    with pytest.raises(SystemExit, match="1"):
        inspect_main([empty, "--samples", "0"])
    assert capsys.readouterr().err.strip().splitlines() == [
        f"INVALID: {empty} {says}; rebuild it from text with data_prep/preprocess_data.py"]
    for data in (DataSources([empty]), DataSources(["1", good, "0", empty]),
                 DataSources(per_split=[[good], [empty], []])):
        with pytest.raises(DataError) as refused:
            resolve_data(data.prefixes(), 400)
        assert str(refused.value) == (f"dataset {empty!r} {says}; preprocess text into it "
                                      "(data_prep/preprocess_data.py), or leave it out of the data paths")
    assert resolve_data([good], 400).shapes[os.path.realpath(good)]["tokens"] == 40


def test_a_merge_of_a_dataset_with_itself_is_said_and_one_into_an_input_through_links_is_refused(
        tmp_path: Path, tiny_tokenizer: Tokenizer, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    """Found 2026-12-07: a dataset merged with itself (named twice, or through a linked folder) doubled its
    documents without a word; ``--output-prefix A --overwrite`` with an input whose files are links to ``A``'s
    replaced ``A`` (the input's data) by the merge, exit code 0."""
    from megamythos.data.cli import merge_main

    dataset = _dataset(tmp_path, "a", DOCS, tiny_tokenizer)
    (tmp_path / "alias").symlink_to(tmp_path)
    again = str(tmp_path / "alias" / "a_text_document")
    with caplog.at_level(logging.WARNING):
        assert len(merge_datasets([dataset, again], str(tmp_path / "twice"))) == 2 * len(DOCS)  # still merged
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"--input {again} is {dataset} again (the same "), warnings
    assert "holds its documents twice" in warnings[0]
    linked = tmp_path / "in" / "a_text_document"
    linked.parent.mkdir()
    for suffix in (".bin", ".idx", ".json", ".tokenizer.model"):
        Path(f"{linked}{suffix}").symlink_to(dataset + suffix)
    data = {suffix: Path(dataset + suffix).read_bytes() for suffix in (".bin", ".idx", ".json")}
    line = error_of(merge_main, ["--input", str(linked), str(tmp_path / "twice"), "--output-prefix", dataset,
                                 "--overwrite"], capsys)
    assert f"--output-prefix {dataset} is one of the inputs ({linked}: the same files or links to them)" in line, line
    assert {suffix: Path(dataset + suffix).read_bytes() for suffix in data} == data


def test_a_merge_into_a_link_an_input_is_read_through_is_refused(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07 (review): an input whose ``.bin`` links to the output's ``.bin``, itself a link into a store
    (``in/a.bin -> data/o.bin -> store/a.bin``), was not seen as one the merge replaces: ``--overwrite`` renamed the
    merge onto ``data/o.bin``, and the input then read the merged tokens against its own ``.idx``, exit code 0."""
    from megamythos.data.cli import merge_main

    (tmp_path / "store").mkdir()
    stored = _dataset(tmp_path / "store", "a", DOCS, tiny_tokenizer)
    other = _dataset(tmp_path, "b", DOCS, tiny_tokenizer)
    out, linked = tmp_path / "data" / "o", tmp_path / "in" / "a"
    for prefix in (out, linked):
        prefix.parent.mkdir()
    for suffix in (".bin", ".idx", ".json", ".tokenizer.model"):
        Path(f"{out}{suffix}").symlink_to(stored + suffix)
        Path(f"{linked}{suffix}").symlink_to(os.path.relpath(f"{out}{suffix}", linked.parent))
    data = {suffix: Path(f"{linked}{suffix}").read_bytes() for suffix in (".bin", ".idx", ".json")}
    line = error_of(merge_main, ["--input", str(linked), other, "--output-prefix", str(out), "--overwrite"], capsys)
    assert f"--output-prefix {out} is one of the inputs ({linked}: the same files or links to them)" in line, line
    assert {suffix: Path(f"{linked}{suffix}").read_bytes() for suffix in data} == data


def test_a_merge_into_the_tokenizer_copy_an_input_links_to_rewrites_the_same_tokenizer(
        tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """Found 2026-12-07 (review): an input whose ``.tokenizer.model`` alone is a link to the output's (copies of one
    tokenizer shared by links) was refused as one the merge replaces, though the merge writes there the tokenizer
    every input's record names, the same bytes; its ``.bin``, ``.idx`` and record are what the merge must not
    replace."""
    out, linked = _dataset(tmp_path, "o", DOCS, tiny_tokenizer), _dataset(tmp_path, "b", DOCS[:10], tiny_tokenizer)
    other = _dataset(tmp_path, "c", DOCS[:5], tiny_tokenizer)
    os.remove(linked + ".tokenizer.model")
    os.symlink(out + ".tokenizer.model", linked + ".tokenizer.model")
    before = {suffix: Path(linked + suffix).read_bytes() for suffix in (".bin", ".idx", ".json", ".tokenizer.model")}
    assert len(merge_datasets([linked, other], out, overwrite=True)) == 15
    assert {suffix: Path(linked + suffix).read_bytes() for suffix in before} == before
    for prefix in (linked, out):  # both read their tokenizer, the one they were built with
        assert read_dataset_metadata(prefix)["tokenizer_fingerprint"] == tiny_tokenizer.fingerprint
        inspect_dataset(prefix, 0)


def test_a_folder_given_to_merge_as_an_input_gets_the_prefixes_in_it(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Found 2026-12-07: ``merge_datasets.py --input DIR`` said only ``missing DIR.bin, DIR.idx``."""
    from megamythos.data.cli import merge_main

    dataset = _dataset(tmp_path, "a", DOCS, tiny_tokenizer)
    (tmp_path / "empty").mkdir()
    for folder, listed in ((tmp_path, f", e.g. {dataset}"), (tmp_path / "empty", f"; none is in {tmp_path / 'empty'}")):
        line = error_of(merge_main, ["--input", str(folder), "--output-prefix", str(tmp_path / "out")], capsys)
        assert line.startswith(f"error: --input: dataset '{folder}' not found: missing "), line
        assert line.endswith(f"; {folder} is a folder: pass dataset prefixes (PREFIX, for PREFIX.bin/PREFIX.idx)"
                             f"{listed}"), line


def test_a_folder_that_cannot_be_listed_given_to_merge_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07 (review): the folder hint listed the folder, and one the user may not read (another user's,
    mode 700; the tests run as root, so a refused listing stands in) ended the merge with a PermissionError
    traceback instead of its one line."""
    from megamythos.data import indexed_dataset
    from megamythos.data.cli import merge_main

    def refused(path: str) -> list[str]:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(indexed_dataset.os, "listdir", refused)
    line = error_of(merge_main, ["--input", str(tmp_path), "--output-prefix", str(tmp_path / "out")], capsys)
    assert line == (f"error: --input: dataset '{tmp_path}' not found: missing {tmp_path}.bin, {tmp_path}.idx; "
                    f"{tmp_path} is a folder: pass dataset prefixes (PREFIX, for PREFIX.bin/PREFIX.idx)"), line


def test_more_workers_than_cpus_is_said(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """Found 2026-12-06: ``--workers 1000`` forked 1000 tokenizer processes on 2 cores without a word."""
    too_many = len(os.sched_getaffinity(0)) + 1
    with caplog.at_level("WARNING"):
        preprocess(PreprocessConfig(inputs=[str(write_jsonl(tmp_path / "d.jsonl", DOCS))],
                                    output_prefix=str(tmp_path / "o"), tokenizer_model=tiny_tokenizer.model_path,
                                    workers=too_many))
    assert f"--workers {too_many} x --partitions 1 is more than the {too_many - 1} CPUs" in caplog.text
