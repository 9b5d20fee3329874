"""The embedded stdlib corpus: built once, reused, safe under concurrent callers."""
from __future__ import annotations

import glob
import json
import os
import sysconfig
import threading

import pytest

from megamythos.data.checksums import RECORD_KEY as CHECKSUMS_KEY
from megamythos.data.default_corpus import ensure_default_dataset, ensure_source_dataset, stdlib_sources
from megamythos.data.gpt_dataset import build_train_valid_test_datasets
from megamythos.data.indexed_dataset import IndexedDataset
from megamythos.data.metadata import read_dataset_metadata
from megamythos.data.pretraining import resolve_data
from megamythos.data.tokenizer import Tokenizer


def test_stdlib_sources_exclude_site_packages() -> None:
    files = stdlib_sources()
    assert len(files) > 100 and files == sorted(files)
    assert not any("site-packages" in f for f in files) and all(f.endswith(".py") for f in files)
    assert stdlib_sources(5) == files[:5]


def test_stdlib_sources_never_walk_the_excluded_folders(tmp_path, monkeypatch) -> None:
    """Every default launch lists the stdlib to check its cached corpus: an interpreter's site-packages under it
    (51k entries against the stdlib's 8k here) would cost each start-up half a second, so it is never entered."""
    for rel in ("a.py", "b.txt", "pkg/__init__.py", "pkg/z/c.py", "site-packages/big/d.py",
                "pkg/dist-packages/e.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    scanned = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": scanned.append(str(path)) or real_scandir(path))
    assert stdlib_sources() == [str(tmp_path / rel) for rel in ("a.py", "pkg/__init__.py", "pkg/z/c.py")]
    assert scanned and not any("site-packages" in p or "dist-packages" in p for p in scanned)


def test_concurrent_callers_build_once_and_share_the_result(tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger="megamythos.data.default_corpus")
    results: list[tuple[str, str]] = []
    threads = [threading.Thread(target=lambda: results.append(
        ensure_default_dataset(str(tmp_path), vocab_size=400, max_files=12, workers=1))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert caplog.text.count("building corpus") == 1
    prefix, model = results[0]
    tokenizer = Tokenizer(model)
    dataset = IndexedDataset(prefix)
    assert read_dataset_metadata(prefix)["tokenizer_fingerprint"] == tokenizer.fingerprint
    first_nonempty = next(f for f in stdlib_sources(12) if open(f, encoding="utf-8").read().strip())
    with open(first_nonempty, encoding="utf-8") as handle:
        assert tokenizer.decode(dataset[0]) == handle.read()  # eos appended, decodes to nothing
    assert dataset[0][-1] == tokenizer.eos_id
    mtime = os.stat(prefix + ".idx").st_mtime_ns
    assert ensure_default_dataset(str(tmp_path), vocab_size=400, max_files=12) == (prefix, model)
    assert os.stat(prefix + ".idx").st_mtime_ns == mtime  # reused, not rebuilt
    train, _, _ = build_train_valid_test_datasets([prefix], "969,30,1", 64, 1, (20, 0, 0))
    assert train[0]["tokens"].shape == (65,)


def test_incomplete_build_is_redone(tmp_path) -> None:
    prefix, _ = ensure_default_dataset(str(tmp_path), vocab_size=400, max_files=6, workers=1)
    os.truncate(prefix + ".bin", 8)
    prefix2, _ = ensure_default_dataset(str(tmp_path), vocab_size=400, max_files=6, workers=1)
    assert len(IndexedDataset(prefix2)) > 0


def test_a_corpus_built_before_checksums_is_kept_and_gets_them(tmp_path, caplog) -> None:
    """A default corpus built before datasets recorded checksums (2026-12-07) was built again in place by the next
    launch (found 2026-12-08): a version's rebuild writes a tokenizer of other bytes (another fingerprint), so the
    run trained on the corpus was refused on resume and by evaluate, its data gone. It is kept, with the checksums
    of its files as they are now, which the data scan then verifies."""
    prefix, model = ensure_default_dataset(str(tmp_path), vocab_size=400, max_files=6, workers=1)
    record_path = prefix + ".json"
    record = json.loads(open(record_path).read())
    del record[CHECKSUMS_KEY]  # as such a corpus's record is
    with open(record_path, "w") as handle:
        json.dump(record, handle)
    files = {path: os.stat(path).st_mtime_ns for path in (prefix + ".bin", prefix + ".idx", model)}
    caplog.set_level("INFO", logger="megamythos.data.default_corpus")
    assert ensure_default_dataset(str(tmp_path), vocab_size=400, max_files=6, workers=1) == (prefix, model)
    assert "building corpus" not in caplog.text and "recorded them for its files as they are now" in caplog.text
    assert {path: os.stat(path).st_mtime_ns for path in files} == files  # kept as it was
    assert CHECKSUMS_KEY in read_dataset_metadata(prefix)
    resolve_data([prefix], 400, str(tmp_path / "cache"))  # verified against them


def test_a_corpus_of_another_python_is_kept_and_this_one_s_is_built_beside_it(tmp_path, caplog) -> None:
    """A Python upgrade changes the stdlib the default corpus is built from (its manifest: other files or sizes).
    Found 2026-12-08: the corpus was then built again in place, with another tokenizer, so every run trained on it
    was refused on resume and by evaluate, and nothing was left to go back to. It is kept as it was, this Python's
    corpus is built beside it (and reused there), and the old one is read again where its files come back."""
    sources = tmp_path / "stdlib"
    sources.mkdir()
    files = [str(sources / f"{i}_{os.path.basename(f)}") for i, f in enumerate(stdlib_sources(6))]
    for original, copy in zip(stdlib_sources(6), files):
        with open(original, "rb") as src, open(copy, "wb") as dst:
            dst.write(src.read())
    base = str(tmp_path / "default" / "stdlib_v400_n6")
    old_prefix, old_model = ensure_source_dataset(files, base, 400, workers=1)
    kept = {path: (os.stat(path).st_mtime_ns, open(path, "rb").read())
            for path in (old_prefix + ".bin", old_prefix + ".idx", old_prefix + ".json", old_model)}
    with open(files[-1], "a") as handle:
        handle.write("x = 1  # a file of the next Python\n")
    caplog.set_level("INFO", logger="megamythos.data.default_corpus")
    prefix, model = ensure_source_dataset(files, base, 400, workers=1)
    assert {path: (os.stat(path).st_mtime_ns, open(path, "rb").read()) for path in kept} == kept  # not touched
    assert prefix.startswith(base + "_") and prefix != old_prefix and len(IndexedDataset(prefix)) > 0
    assert f"corpus {old_prefix} was built from other files than these 6" in caplog.text
    caplog.clear()
    assert ensure_source_dataset(files, base, 400, workers=1) == (prefix, model)  # this Python's, reused
    assert "building corpus" not in caplog.text
    with open(files[-1], "rb+") as handle:
        handle.truncate(os.path.getsize(files[-1]) - len("x = 1  # a file of the next Python\n"))
    assert ensure_source_dataset(files, base, 400, workers=1) == (old_prefix, old_model)
    assert "building corpus" not in caplog.text


def test_the_corpus_built_beside_another_is_reused_once_the_other_is_removed(tmp_path, caplog) -> None:
    """Found 2026-12-08 (review): once this Python's corpus was built beside another Python's, removing the other
    one (its runs done) built this Python's again at the plain name, with a new tokenizer, so the runs trained on
    the one beside it were refused on resume without --data-path. The one beside it is reused."""
    files = [str(tmp_path / f"{i}.py") for i in range(4)]
    for path, original in zip(files, stdlib_sources(4)):
        with open(original, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
    base = str(tmp_path / "default" / "stdlib_v400_n4")
    old_prefix, _ = ensure_source_dataset(files, base, 400, workers=1)  # the other Python's
    with open(files[0], "a") as handle:
        handle.write("x = 1  # a file of the next Python\n")
    beside = ensure_source_dataset(files, base, 400, workers=1)
    assert beside[0] != old_prefix
    for path in glob.glob(base + "_text_document*") + glob.glob(base + "_tokenizer*") + [base + ".manifest.json"]:
        os.remove(path)
    caplog.set_level("INFO", logger="megamythos.data.default_corpus")
    assert ensure_source_dataset(files, base, 400, workers=1) == beside
    assert "building corpus" not in caplog.text


def test_a_node_that_does_not_share_the_default_corpus_builds_its_own_or_says_why(tmp_path, monkeypatch) -> None:
    """Found 2026-12-07 (read: two nodes, each its own checkout, no --data-path): rank 0 builds the default corpus in
    its node's --default-data-dir first, and another node's ranks, which do not find it there, build their own
    (that is what they see: checked here). Where their build fails, they say why in one line naming the folder and
    what to pass; rank 0, whose own build had succeeded, said `failed: see rank 0`, and now points to the other
    rank."""
    from megamythos.data.pretraining import DataError
    from megamythos.training import pretrain
    from megamythos.training.arguments import parse_args

    args = parse_args(["--default-data-dir", str(tmp_path / "node1"), "--default-data-max-files", "12"])
    monkeypatch.setattr(pretrain, "any_rank", lambda flag: flag)  # this rank's outcome alone
    sources, _ = pretrain.resolve_run_data(args, 400, rank=1)
    assert sources.prefixes() == [str(tmp_path / "node1" / "stdlib_v400_n12_text_document")]

    def refused(out_dir: str, **kwargs) -> None:
        raise PermissionError(13, "Permission denied", f"{out_dir}/stdlib_v400_n12.lock")

    monkeypatch.setattr(pretrain, "ensure_default_dataset", refused)
    remedy = "; pass --data-path, or a --default-data-dir every node can write (a node that does not share it builds"
    with pytest.raises(DataError) as failed:  # the other node's rank
        pretrain.resolve_run_data(args, 400, rank=1)
    assert str(failed.value).startswith(f"building the default corpus in {tmp_path / 'node1'} failed: [Errno 13] "
                                        f"Permission denied: '{tmp_path / 'node1'}/stdlib_v400_n12.lock'{remedy}")
    monkeypatch.setattr(pretrain, "ensure_default_dataset", lambda *args, **kwargs: ("built", "model"))
    turns = iter([False, True])  # rank 0 built; a rank of the other node failed in the second turn
    monkeypatch.setattr(pretrain, "any_rank", lambda flag: next(turns))
    with pytest.raises(DataError) as failed:
        pretrain.resolve_run_data(args, 400, rank=0)
    assert str(failed.value).startswith(f"building the default corpus in {tmp_path / 'node1'} failed: on another "
                                        f"rank, which says why{remedy}")
