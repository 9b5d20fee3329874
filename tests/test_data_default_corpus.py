"""The embedded stdlib corpus: built once, reused, safe under concurrent callers."""
from __future__ import annotations

import os
import sysconfig
import threading

from megamythos.data.default_corpus import ensure_default_dataset, stdlib_sources
from megamythos.data.gpt_dataset import build_train_valid_test_datasets
from megamythos.data.indexed_dataset import IndexedDataset
from megamythos.data.metadata import read_dataset_metadata
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
