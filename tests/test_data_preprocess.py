"""Preprocessing: every input format, bad-input handling, determinism across workers/partitions, CLIs."""
from __future__ import annotations

import codecs
import gzip
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from megamythos.data.cli import inspect_main, merge_main, preprocess_main, train_tokenizer_main
from megamythos.data.indexed_dataset import DatasetExistsError, IndexedDataset
from megamythos.data.merge import merge_datasets
from megamythos.data.metadata import read_dataset_metadata
from megamythos.data.preprocess import BadInputError, PreprocessConfig, preprocess
from megamythos.data.sources import InputError, iter_texts
from megamythos.data.tokenizer import Tokenizer, TokenizerTrainConfig, train_tokenizer
from tests.helpers import synthetic_documents, write_jsonl

DOCS = synthetic_documents(60, seed=3)


def run(tok: Tokenizer, inputs: list[str], prefix: Path, **kwargs) -> tuple[IndexedDataset, object]:
    stats = preprocess(PreprocessConfig(inputs=inputs, output_prefix=str(prefix), tokenizer_model=tok.model_path,
                                        **kwargs))
    return IndexedDataset(f"{prefix}_text_document"), stats


def decoded(tok: Tokenizer, ds: IndexedDataset) -> list[str]:
    return [tok.decode(ds[i]) for i in range(len(ds))]


def test_round_trip_text_to_tokens_to_files_to_text(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    ds, stats = run(tiny_tokenizer, [str(write_jsonl(tmp_path / "a.jsonl", DOCS))], tmp_path / "out")
    assert decoded(tiny_tokenizer, ds) == DOCS
    assert stats.documents == len(DOCS) and stats.tokens == ds.num_tokens and stats.skipped == 0
    record = read_dataset_metadata(str(tmp_path / "out_text_document"))
    assert record["vocab_size"] == 400 and record["tokenizer_fingerprint"] == tiny_tokenizer.fingerprint


def test_append_eod(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    ds, _ = run(tiny_tokenizer, [str(write_jsonl(tmp_path / "a.jsonl", DOCS[:3]))], tmp_path / "o", append_eod=True)
    assert all(ds[i][-1] == tiny_tokenizer.eos_id for i in range(3))
    assert decoded(tiny_tokenizer, ds) == DOCS[:3]


def _inputs_of_every_format(root: Path) -> dict[str, list[str]]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    lines = "".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode()
    (root / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (root / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": DOCS}), root / "a.parquet")
    txt_dir = root / "txt"
    txt_dir.mkdir()
    for i, d in enumerate(DOCS):
        (txt_dir / f"{i:03d}.txt").write_text(d)
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(root / "hf_disk"))
    inputs = {"gz": [str(root / "a.jsonl.gz")], "zst": [str(root / "a.jsonl.zst")],
              "parquet": [str(root / "a.parquet")], "txt": [str(txt_dir / "*.txt")], "disk": [str(root / "hf_disk")]}
    # JSON lines under the other usual suffixes, in any case, and after a byte-order mark (found 2026-12-06: read
    # as one text document, JSON syntax and all; the BOM made the first record malformed)
    for name in ("a.ndjson", "a.jsonlines", "A.JSONL"):
        (root / name).write_bytes(lines)
        inputs[name] = [str(root / name)]
    # compressed under an upper-case suffix (found 2026-12-06: read as JSON lines but not decompressed, every
    # record skipped as non-UTF-8 or malformed: a file dropped beside the others, with a warning per record)
    (root / "B.JSONL.GZ").write_bytes(gzip.compress(lines))
    (root / "B.JSONL.ZST").write_bytes(zstandard.ZstdCompressor().compress(lines))
    inputs["B.JSONL.GZ"], inputs["B.JSONL.ZST"] = [str(root / "B.JSONL.GZ")], [str(root / "B.JSONL.ZST")]
    (root / "bom.jsonl").write_bytes(codecs.BOM_UTF8 + lines)
    inputs["bom.jsonl"] = [str(root / "bom.jsonl")]
    # text with Windows line ends and a byte-order mark (found 2026-12-06: <0x0D> and <0xEF><0xBB><0xBF> tokens)
    crlf_dir = root / "crlf"
    crlf_dir.mkdir()
    for i, d in enumerate(DOCS):
        (crlf_dir / f"{i:03d}.txt").write_bytes((codecs.BOM_UTF8 if i == 0 else b"") + d.replace("\n", "\r\n").encode())
    inputs["crlf"] = [str(crlf_dir / "*.txt")]
    return inputs


def test_every_input_format_gives_the_same_dataset(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    reference, _ = run(tiny_tokenizer, [str(write_jsonl(tmp_path / "a.jsonl", DOCS))], tmp_path / "ref")
    for name, inputs in _inputs_of_every_format(tmp_path).items():
        ds, _ = run(tiny_tokenizer, inputs, tmp_path / name)
        assert ds.sizes.tolist() == reference.sizes.tolist(), name
        assert np.array_equal(ds._bin, reference._bin), name


def test_json_lines_the_suffix_reads_as_text_are_refused_or_read_by_input_format(tmp_path,
                                                                                  tiny_tokenizer: Tokenizer) -> None:
    """Found 2026-12-06: ``corpus.data`` holding JSON lines became one text document of JSON syntax, exit 0."""
    data = write_jsonl(tmp_path / "corpus.data", DOCS)
    with pytest.raises(InputError, match=r"corpus\.data holds JSON lines .* pass --input-format jsonl"):
        run(tiny_tokenizer, [str(data)], tmp_path / "refused")
    ds, _ = run(tiny_tokenizer, [str(data)], tmp_path / "jsonl", input_format="jsonl")
    assert decoded(tiny_tokenizer, ds) == DOCS
    ds, _ = run(tiny_tokenizer, [str(data)], tmp_path / "txt", input_format="txt")  # asked for: one text
    assert len(ds) == 1 and decoded(tiny_tokenizer, ds)[0].startswith('{"text": ')
    (tmp_path / "a.jsonl.xz").write_bytes(b"\xfd7zXZ\x00")
    with pytest.raises(InputError, match=r"compressed inputs must be JSON lines in \.gz or \.zst \(xz is not read\)"):
        run(tiny_tokenizer, [str(tmp_path / "a.jsonl.xz")], tmp_path / "xz")


def test_the_default_corpus_reads_its_source_files_byte_for_byte(tmp_path) -> None:
    """Text inputs drop a byte-order mark and read CRLF as LF; the default corpus keeps its files as they are (the
    stdlib holds a few CRLF and BOM test files: the default run's data stays what it was)."""
    (tmp_path / "crlf.py").write_bytes(codecs.BOM_UTF8 + b"a = 1\r\nb = 2\r\n")
    assert list(iter_texts([str(tmp_path / "crlf.py")])) == ["a = 1\nb = 2\n"]
    assert list(iter_texts([str(tmp_path / "crlf.py")], verbatim=True)) == ["\ufeffa = 1\r\nb = 2\r\n"]


def test_a_file_named_twice_is_read_once(tmp_path, tiny_tokenizer: Tokenizer, caplog) -> None:
    """Found 2026-12-06: overlapping globs (and a link to a file also given) wrote its documents once per name."""
    write_jsonl(tmp_path / "a.jsonl", DOCS[:10])
    write_jsonl(tmp_path / "b.jsonl", DOCS[10:20])
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "a.jsonl")
    ds, _ = run(tiny_tokenizer, [str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")], tmp_path / "o")
    assert decoded(tiny_tokenizer, ds) == DOCS[:20]
    assert f"input {tmp_path / 'link.jsonl'} is {tmp_path / 'a.jsonl'} again: read once" in caplog.text


def test_a_dataset_dict_names_the_split_it_reads_and_those_it_does_not(tmp_path, tiny_tokenizer: Tokenizer,
                                                                      caplog) -> None:
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:5]}),
                          "validation": datasets.Dataset.from_dict({"text": DOCS[5:8]})}).save_to_disk(
        str(tmp_path / "dict"))
    ds, _ = run(tiny_tokenizer, [str(tmp_path / "dict")], tmp_path / "o")
    assert len(ds) == 5 and "reading its split 'train' (5 rows) only, not 'validation' (3 rows)" in caplog.text


def test_hf_dataset_by_name_with_streaming(tmp_path, tiny_tokenizer: Tokenizer, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data_dir = tmp_path / "local_hub_dataset"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", DOCS)
    import datasets

    streamed, load_dataset = [], datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: streamed.append(k.get("streaming")) or
                        load_dataset(*a, **k))
    stats = preprocess(PreprocessConfig(inputs=[], hf_dataset=str(data_dir), hf_split="train", streaming=True,
                                        output_prefix=str(tmp_path / "hub"), tokenizer_model=tiny_tokenizer.model_path))
    assert decoded(tiny_tokenizer, IndexedDataset(stats.outputs[0])) == DOCS
    assert streamed == [True]  # the rows came from a streamed dataset, not one downloaded whole


def test_blank_line_separated_text(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    (tmp_path / "a.txt").write_text("first doc\nline two\n\n\nsecond doc\n  \nthird\n")
    ds, _ = run(tiny_tokenizer, [str(tmp_path / "a.txt")], tmp_path / "o", blank_line_documents=True)
    assert decoded(tiny_tokenizer, ds) == ["first doc\nline two\n", "second doc\n", "third\n"]


def _bad_corpus(path: Path) -> Path:
    good = [json.dumps({"text": d}).encode() for d in DOCS[:4]]
    lines = [good[0], b'{"text": "unterminated', good[1], json.dumps({"body": "x"}).encode(),
             '{"text": "caf\xe9"}'.encode("latin-1"), json.dumps({"text": "  \n"}).encode(), good[2], good[3]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_batch_of_only_bad_records(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n' * 3 + json.dumps({"text": DOCS[0]}) + "\n")
    ds, stats = run(tiny_tokenizer, [str(path)], tmp_path / "o", batch_documents=3)
    assert decoded(tiny_tokenizer, ds) == DOCS[:1] and stats.skipped == 3


def test_bad_records_are_counted_reported_and_skipped(tmp_path, tiny_tokenizer: Tokenizer, caplog) -> None:
    bad = _bad_corpus(tmp_path / "bad.jsonl")
    ds, stats = run(tiny_tokenizer, [str(bad)], tmp_path / "o")
    assert decoded(tiny_tokenizer, ds) == DOCS[:4]
    assert stats.skipped == 4
    assert dict(stats.skipped_by_reason) == {"malformed JSON": 1, "missing key 'text'": 1,
                                             "non-UTF-8 bytes": 1, "empty document": 1}
    assert stats.bad_examples == [f"{bad}:2: malformed JSON (Invalid control character at)",
                                  f"{bad}:4: missing key 'text'",
                                  f"{bad}:5: non-UTF-8 bytes (invalid continuation byte at byte 13)",
                                  f"{bad}:6: empty document"]
    assert f"{bad}:4: missing key 'text'" in caplog.text
    report = (tmp_path / "o.skipped.tsv").read_text().splitlines()
    assert [r.split("\t")[:2] for r in report] == [[str(bad), str(n)] for n in (2, 4, 5, 6)]
    assert stats.skipped_report == str(tmp_path / "o.skipped.tsv") and "listed in" in stats.summary()


@pytest.mark.parametrize("line,reason", [(2, "malformed JSON"), (4, "missing key"), (5, "non-UTF-8"),
                                         (6, "empty document")])
def test_strict_mode_fails_on_each_bad_input(tmp_path, tiny_tokenizer: Tokenizer, line: int, reason: str) -> None:
    lines = _bad_corpus(tmp_path / "all.jsonl").read_bytes().splitlines(keepends=True)
    one_bad = tmp_path / "one.jsonl"
    one_bad.write_bytes(lines[0] + lines[line - 1])
    with pytest.raises(BadInputError, match=f"{one_bad}:2: {reason}"):
        run(tiny_tokenizer, [str(one_bad)], tmp_path / "o", strict=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("o_")]  # nothing valid-looking, no temporaries


@pytest.mark.parametrize("options", [{"workers": 2}, {"workers": 2, "partitions": 2}, {"partitions": 3}])
def test_parallel_output_equals_single_worker_byte_for_byte(tmp_path, tiny_tokenizer: Tokenizer, options) -> None:
    inputs = [str(write_jsonl(tmp_path / f"{i}.jsonl", synthetic_documents(40, seed=i))) for i in range(3)]
    with open(inputs[1], "a") as handle:
        handle.write("{not json}\n")
    common = dict(batch_documents=7, append_eod=True)
    run(tiny_tokenizer, inputs, tmp_path / "single", **common)
    _, stats = run(tiny_tokenizer, inputs, tmp_path / "multi", **common, **options)
    assert stats.documents == 120 and stats.skipped == 1
    for name in ("_text_document.bin", "_text_document.idx", ".skipped.tsv"):
        assert (tmp_path / f"multi{name}").read_bytes() == (tmp_path / f"single{name}").read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name or ".tmp." in p.name]


_THREADS_AT_FORK: list[int] | None = None  # os.register_at_fork cannot be undone: the hook records only when set


def _record_threads_at_fork() -> None:
    if _THREADS_AT_FORK is not None:
        _THREADS_AT_FORK.append(threading.active_count())


os.register_at_fork(before=_record_threads_at_fork)


def test_workers_are_forked_before_the_progress_bar_starts_a_thread(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    """A fork copies only the forking thread, with any lock another thread held: tqdm's monitor thread ran while
    the encoding pool forked (found 2026-12-06 by Python 3.12's warning "multi-threaded, use of fork() may lead to
    deadlocks"). The pool now forks first."""
    global _THREADS_AT_FORK
    inputs = [str(write_jsonl(tmp_path / "a.jsonl", synthetic_documents(40, seed=1)))]
    before = threading.active_count()
    _THREADS_AT_FORK = []
    try:
        run(tiny_tokenizer, inputs, tmp_path / "o", workers=2, progress=True, batch_documents=4)
        forks = _THREADS_AT_FORK
    finally:
        _THREADS_AT_FORK = None
    assert len(forks) >= 2 and set(forks) == {before}, forks


def test_several_json_keys_write_one_dataset_each(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": d, "title": d[:10]}) + "\n" for d in DOCS[:5]))
    stats = preprocess(PreprocessConfig(inputs=[str(path)], output_prefix=str(tmp_path / "o"),
                                        tokenizer_model=tiny_tokenizer.model_path, json_keys=("text", "title")))
    texts, titles = (IndexedDataset(str(tmp_path / f"o_{key}_document")) for key in ("text", "title"))
    assert stats.outputs == [str(tmp_path / "o_text_document"), str(tmp_path / "o_title_document")]
    assert decoded(tiny_tokenizer, texts) == DOCS[:5]
    assert decoded(tiny_tokenizer, titles) == [d[:10] for d in DOCS[:5]]


@pytest.mark.parametrize("partitions", [1, 2])
def test_no_key_s_new_dataset_is_ever_visible_beside_another_key_s_old_one(tmp_path, tiny_tokenizer: Tokenizer,
                                                                          monkeypatch, partitions: int) -> None:
    """``--overwrite`` of a two-key dataset: whenever a new ``.idx`` is renamed into place (a run killed right after
    leaves what is there), the other key's ``.idx`` is absent or this run's. Before: the keys were put in place one
    after the other (with ``--partitions``, each merged whole before the next began), so a run killed in between left
    the first key's new dataset beside the second's old one, each complete."""
    inputs = [str(tmp_path / f"{i}.jsonl") for i in range(2)]
    for path, docs in zip(inputs, (DOCS[:30], DOCS[30:])):
        Path(path).write_text("".join(json.dumps({"text": d, "title": d[:10]}) + "\n" for d in docs))
    config = dict(inputs=inputs, output_prefix=str(tmp_path / "o"), tokenizer_model=tiny_tokenizer.model_path,
                  json_keys=("text", "title"))
    preprocess(PreprocessConfig(**config))
    outputs = {str(tmp_path / f"o_{key}_document.idx") for key in ("text", "title")}
    placed: set[str] = set()
    beside_old: list[str] = []
    real_replace = os.replace

    def replace(src, dst) -> None:
        real_replace(src, dst)
        if str(dst) in outputs:
            placed.add(str(dst))
            beside_old.extend(other for other in outputs - placed if os.path.exists(other))

    monkeypatch.setattr(os, "replace", replace)
    preprocess(PreprocessConfig(**config, overwrite=True, partitions=partitions))
    assert placed == outputs and not beside_old


def test_text_input_with_several_keys_is_rejected(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    with pytest.raises(InputError, match="one text per document"):
        preprocess(PreprocessConfig(inputs=[str(tmp_path / "a.txt")], output_prefix=str(tmp_path / "o"),
                                    tokenizer_model=tiny_tokenizer.model_path, json_keys=("text", "title")))


def test_an_existing_dataset_is_replaced_only_with_overwrite(tmp_path, tiny_tokenizer: Tokenizer) -> None:
    """Whatever made it: the same tokenizer, another one, or Megatron (no record); its files stay as they were."""
    path = str(write_jsonl(tmp_path / "a.jsonl", DOCS))
    run(tiny_tokenizer, [path], tmp_path / "o")
    other = train_tokenizer(synthetic_documents(300, seed=9),
                            TokenizerTrainConfig(vocab_size=350, model_prefix=str(tmp_path / "other"), num_threads=1))
    files = {p: p.read_bytes() for p in tmp_path.glob("o_text_document.*")}
    for tokenizer in (tiny_tokenizer, other):
        with pytest.raises(DatasetExistsError, match=r"o_text_document.bin and .idx already hold a dataset; pass "
                                                     r"--overwrite to replace it"):
            run(tokenizer, [path], tmp_path / "o")
    os.remove(tmp_path / "o_text_document.json")  # as a Megatron-made dataset
    del files[tmp_path / "o_text_document.json"]
    with pytest.raises(DatasetExistsError):
        run(other, [path], tmp_path / "o")
    assert len(files) == 3 and {p: p.read_bytes() for p in files if p.exists()} == files  # none removed or changed
    ds, _ = run(other, [path], tmp_path / "o", overwrite=True)
    assert decoded(other, ds) == DOCS


def test_merge_replaces_an_existing_dataset_only_with_overwrite_and_never_keeps_a_stale_record(
        tmp_path, tiny_tokenizer: Tokenizer) -> None:
    path = str(write_jsonl(tmp_path / "a.jsonl", DOCS))
    run(tiny_tokenizer, [path], tmp_path / "a")
    a = str(tmp_path / "a_text_document")
    merge_datasets([a, a], str(tmp_path / "ab"))
    with pytest.raises(DatasetExistsError, match="--overwrite"):
        merge_datasets([a], str(tmp_path / "ab"))
    assert len(IndexedDataset(str(tmp_path / "ab"))) == 2 * len(DOCS)
    bare = str(tmp_path / "bare")  # a dataset without a record (Megatron's)
    for suffix in (".bin", ".idx"):
        shutil.copy(a + suffix, bare + suffix)
    merge_datasets([bare], str(tmp_path / "ab"), overwrite=True)
    assert len(IndexedDataset(str(tmp_path / "ab"))) == len(DOCS)
    assert read_dataset_metadata(str(tmp_path / "ab")) is None, "the replaced dataset's record was left"


def test_input_given_twice_reads_both(tmp_path, tiny_tokenizer: Tokenizer, capsys) -> None:
    """Found 2026-12-06: ``--input a --input b`` (argparse's store) kept the last list alone, so preprocessing,
    the merge and tokenizer training read b and dropped a without a word. Every --input adds its paths."""
    for name, docs in (("a", DOCS[:10]), ("b", DOCS[10:15])):
        write_jsonl(tmp_path / f"{name}.jsonl", docs)
    for name in ("a", "b"):
        assert preprocess_main(["--input", str(tmp_path / f"{name}.jsonl"), "--output-prefix", str(tmp_path / name),
                                "--tokenizer-model", tiny_tokenizer.model_path]) == 0
    assert preprocess_main(["--input", str(tmp_path / "a.jsonl"), "--input", str(tmp_path / "b.jsonl"),
                            "--output-prefix", str(tmp_path / "both"), "--tokenizer-model",
                            tiny_tokenizer.model_path]) == 0
    assert decoded(tiny_tokenizer, IndexedDataset(str(tmp_path / "both_text_document"))) == DOCS[:15]
    assert merge_main(["--input", str(tmp_path / "a_text_document"), "--input", str(tmp_path / "b_text_document"),
                       "--output-prefix", str(tmp_path / "ab")]) == 0
    assert decoded(tiny_tokenizer, IndexedDataset(str(tmp_path / "ab"))) == DOCS[:15]
    capsys.readouterr()
    assert train_tokenizer_main(["--input", str(tmp_path / "missing.jsonl"), "--input", str(tmp_path / "a.jsonl"),
                                 "--vocab-size", "400", "--model-prefix", str(tmp_path / "tok")]) == 2
    assert f"--input '{tmp_path / 'missing.jsonl'}' matches no file" in capsys.readouterr().err


def test_an_input_whose_name_holds_a_globs_characters_is_that_file(tmp_path) -> None:
    """Found 2026-12-07: every --input holding ``[``, ``*`` or ``?`` was read as a glob, so an existing
    ``run[1].jsonl`` was refused as matching no file (its pattern names ``run1.jsonl``), and beside a
    ``run1.jsonl`` that other file was read in its place without a word. A path that exists is itself; a pattern
    that names no file is still a glob."""
    from megamythos.data.sources import expand_inputs

    for name in ("run[1].jsonl", "run1.jsonl", "a*b.jsonl", "axb.jsonl"):
        (tmp_path / name).write_text("")
    assert expand_inputs([str(tmp_path / "run[1].jsonl"), str(tmp_path / "a*b.jsonl")]) == [
        str(tmp_path / "run[1].jsonl"), str(tmp_path / "a*b.jsonl")]
    assert expand_inputs([str(tmp_path / "run[0-9].jsonl")]) == [str(tmp_path / "run1.jsonl")]
    assert expand_inputs([str(tmp_path / "a?b.jsonl")]) == [str(tmp_path / "a*b.jsonl"), str(tmp_path / "axb.jsonl")]


def test_command_line_tools(tmp_path, tiny_tokenizer: Tokenizer, capsys) -> None:
    for name, docs in (("a", DOCS[:10]), ("b", DOCS[10:15])):
        write_jsonl(tmp_path / f"{name}.jsonl", docs)
        preprocess_main(["--input", str(tmp_path / f"{name}.jsonl"), "--output-prefix", str(tmp_path / name),
                         "--tokenizer-model", tiny_tokenizer.model_path, "--workers", "1", "--no-progress"])
    assert "documents=10 tokens=" in capsys.readouterr().out
    merge_main(["--input", str(tmp_path / "a_text_document"), str(tmp_path / "b_text_document"),
                "--output-prefix", str(tmp_path / "ab")])
    assert decoded(tiny_tokenizer, IndexedDataset(str(tmp_path / "ab"))) == DOCS[:15]
    inspect_main([str(tmp_path / "ab"), "--samples", "1"])
    out = capsys.readouterr().out
    assert '"documents": 15' in out and "valid:" in out
    os.truncate(tmp_path / "ab.bin", 10)
    with pytest.raises(SystemExit):
        inspect_main([str(tmp_path / "ab")])
    assert "INVALID" in capsys.readouterr().err
