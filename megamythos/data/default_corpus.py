"""The embedded default corpus: the local Python standard library sources, tokenised on first use.

``ensure_default_dataset(out_dir)`` trains a SentencePiece tokenizer on a sample of the stdlib ``*.py`` files
(``sysconfig.get_paths()['stdlib']``, site-/dist-packages excluded; about 30 MB on CPython 3.11) and
preprocesses every file as one document (eos appended) into ``{out_dir}/stdlib_v{vocab}[_n{max_files}]``.
``ensure_source_dataset(files, base)`` does the same for any list of text files (the tests' fixed corpus).
A manifest written last marks a complete build; concurrent callers serialise on a file lock and later callers
reuse the result. A complete corpus is never built again in place: that of another Python's standard library (a
Python upgrade) stays where it is for the runs trained on it, and this Python's is built beside it, as
``{out_dir}/stdlib_v{vocab}[_n{max_files}]_{key}`` (:func:`manifest_key`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sysconfig
from pathlib import Path
from typing import Any

from megamythos.data.atomic import atomic_open
from megamythos.data.checksums import RECORD_KEY as CHECKSUMS_KEY
from megamythos.data.indexed_dataset import IndexedDataset, IndexedDatasetError
from megamythos.data.inspection import add_checksums
from megamythos.data.metadata import read_dataset_metadata
from megamythos.data.preprocess import PreprocessConfig, preprocess
from megamythos.data.sources import iter_texts
from megamythos.data.tokenizer import Tokenizer, TokenizerError, TokenizerTrainConfig, train_tokenizer

logger = logging.getLogger(__name__)

EXCLUDED_DIRS = ("site-packages", "dist-packages")
DEFAULT_VOCAB_SIZE = 8192  # the tiny preset's vocabulary
TOKENIZER_SAMPLE_CHUNKS = 50_000


def stdlib_sources(max_files: int | None = None) -> list[str]:
    """Sorted paths of the stdlib ``*.py`` files (the first ``max_files`` when given).

    Every launch of the default run lists them to check its cached corpus, so the walk never enters the excluded
    folders: the interpreter's own ``site-packages`` under the stdlib directory can hold tens of thousands of
    entries (51k here, against the stdlib's 8k; listing it took 0.5 s of each start-up). Symlinked folders are not
    followed.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in EXCLUDED_DIRS]
        files += [os.path.join(folder, name) for name in names if name.endswith(".py")]
    files.sort()
    if not files:
        raise FileNotFoundError(f"no *.py files under the stdlib directory {root}")
    return files[:max_files] if max_files else files


def _manifest(files: list[str], vocab_size: int) -> dict[str, Any]:
    listing = hashlib.sha256("\n".join(f"{f}:{os.path.getsize(f)}" for f in files).encode()).hexdigest()
    return {"vocab_size": vocab_size, "num_files": len(files), "files_sha256": listing, "version": 1}


def _complete_record(manifest_path: str, manifest: dict[str, Any], data_prefix: str,
                     model_path: str) -> dict[str, Any] | None:
    """The record of the corpus at ``data_prefix`` where a build of ``manifest`` completed there (its manifest, a
    dataset that opens and a record of its tokenizer), else None."""
    try:
        with open(manifest_path) as handle:
            if json.load(handle) != manifest:
                return None
        IndexedDataset(data_prefix)
        record = read_dataset_metadata(data_prefix)
        return record if record is not None and record["tokenizer_fingerprint"] == Tokenizer(
            model_path).fingerprint else None
    except (OSError, ValueError, IndexedDatasetError, TokenizerError):
        return None


def _add_missing_checksums(data_prefix: str) -> bool:
    """Record the checksums of a corpus built before they were recorded (2026-12-07), for its files as they are now,
    once its index checks out. False where it does not (a damaged corpus: built again); True otherwise, also where
    its record cannot be written (a read-only folder: it is read unverified, as any dataset without them). Such a
    corpus is kept, not built again: runs trained on it resume from it, and a rebuild by a later version replaced
    its tokenizer (another fingerprint: those runs were refused) and could give other tokens."""
    try:
        IndexedDataset(data_prefix).validate()
    except (OSError, ValueError, IndexedDatasetError) as err:
        logger.warning("corpus %s is damaged (%s); building it again", data_prefix, err)
        return False
    try:
        add_checksums(data_prefix)
    except (OSError, ValueError, IndexedDatasetError) as err:  # a read-only folder, a record that changed meanwhile
        logger.warning("corpus %s was built before datasets recorded checksums, and they cannot be recorded now (%s): "
                       "it is read unverified", data_prefix, err)
        return True
    logger.info("corpus %s was built before datasets recorded checksums: recorded them for its files as they are "
                "now (it is kept for the runs trained on it; remove its files to build it anew)", data_prefix)
    return True


class _DropSkipWarnings(logging.Filter):
    """Drops preprocess's per-record "skipped FILE:LINE: reason" warnings; its summary line counts them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("skipped ")


def ensure_default_dataset(out_dir: str, vocab_size: int = DEFAULT_VOCAB_SIZE, max_files: int | None = None,
                           workers: int | None = None) -> tuple[str, str]:
    """Build (or reuse) the stdlib dataset; returns ``(data_prefix, tokenizer_model_path)``.

    ``data_prefix`` is the ``IndexedDataset`` prefix (``..._text_document``). ``workers`` defaults to
    ``min(2, cpu_count)`` tokenizer processes.
    """
    name = f"stdlib_v{vocab_size}" + (f"_n{max_files}" if max_files else "")
    return ensure_source_dataset(stdlib_sources(max_files), os.path.join(out_dir, name), vocab_size, workers)


def ensure_source_dataset(files: list[str], base: str, vocab_size: int,
                          workers: int | None = None) -> tuple[str, str]:
    """Build (or reuse) the dataset of ``files``, one document each, byte for byte, at ``base``: a tokenizer
    trained on them (``{base}_tokenizer.model``) and the data prefix ``{base}_text_document``; returns both, as
    :func:`ensure_default_dataset`.

    A complete corpus at ``base`` built from other files (another Python's standard library: other files, sizes or
    paths; their manifest differs) is never built again in place, since the runs trained on it need it (a rebuild
    trains another tokenizer: they were refused on resume and by evaluate, their data gone). This build goes beside
    it, to ``{base}_{key}`` (:func:`manifest_key`), and is reused there; the corpus at ``base`` stays for the runs
    that name it, and this build is reused beside it once it is gone. An incomplete or damaged one at ``base`` is
    built again there."""
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    manifest = _manifest(files, vocab_size)
    with open(f"{base}.lock", "w") as lock:  # one lock for the corpus at base and those beside it
        fcntl.flock(lock, fcntl.LOCK_EX)
        keyed = f"{base}_{manifest_key(manifest)}"
        if _reusable(base, manifest) or not (_holds_a_corpus(base) or _reusable(keyed, manifest)):
            return _build_or_reuse(files, base, manifest, workers)
        if not _reusable(keyed, manifest):
            logger.info("corpus %s_text_document was built from other files than these %d (another Python's "
                        "standard library?): it is kept for the runs trained on it, and this corpus is built beside it "
                        "as %s_text_document", base, len(files), keyed)
        return _build_or_reuse(files, keyed, manifest, workers)


def manifest_key(manifest: dict[str, Any]) -> str:
    """The first 10 hex digits of the sha256 of ``manifest``'s JSON: the name of a corpus built beside another."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:10]


def _paths(base: str) -> tuple[str, str, str]:
    """(tokenizer model, data prefix, manifest) of the corpus at ``base``."""
    return f"{base}_tokenizer.model", f"{base}_text_document", f"{base}.manifest.json"


def _reusable(base: str, manifest: dict[str, Any]) -> bool:
    """Whether the corpus at ``base`` is a complete build of ``manifest`` (:func:`_complete_record`)."""
    model_path, data_prefix, manifest_path = _paths(base)
    return _complete_record(manifest_path, manifest, data_prefix, model_path) is not None


def _holds_a_corpus(base: str) -> bool:
    """Whether ``base`` holds a complete corpus, whatever files it was built from: the manifest a build writes last,
    and a dataset that opens whose record names its tokenizer."""
    model_path, data_prefix, manifest_path = _paths(base)
    try:
        with open(manifest_path) as handle:
            built = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(built, dict) and _complete_record(manifest_path, built, data_prefix, model_path) is not None


def _build_or_reuse(files: list[str], base: str, manifest: dict[str, Any], workers: int | None) -> tuple[str, str]:
    """Reuse the complete build of ``manifest`` at ``base`` (recording its checksums where it predates them), or
    build it there; the caller holds the lock."""
    model_path, data_prefix, manifest_path = _paths(base)
    record = _complete_record(manifest_path, manifest, data_prefix, model_path)
    if record is not None and (CHECKSUMS_KEY in record or _add_missing_checksums(data_prefix)):
        logger.info("reusing corpus %s", data_prefix)
        return data_prefix, model_path
    logger.info("building corpus %s from %d files", base, len(files))
    train_tokenizer(iter_texts(files, verbatim=True), TokenizerTrainConfig(
        vocab_size=manifest["vocab_size"], model_prefix=f"{base}_tokenizer", max_sentences=TOKENIZER_SAMPLE_CHUNKS,
        num_threads=os.cpu_count() or 1, overwrite=True))  # an incomplete or damaged build of these files
    skip_lines = _DropSkipWarnings()  # the stdlib's empty files (__init__.py, ...) are skipped by design
    logging.getLogger(preprocess.__module__).addFilter(skip_lines)
    try:
        stats = preprocess(PreprocessConfig(
            inputs=files, output_prefix=base, tokenizer_model=model_path, append_eod=True, overwrite=True,
            text_verbatim=True,
            workers=workers or min(2, os.cpu_count() or 1)))
    finally:
        logging.getLogger(preprocess.__module__).removeFilter(skip_lines)
    logger.info("corpus %s: %s", base, stats.summary())
    with atomic_open(manifest_path, "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    return data_prefix, model_path
