"""Offline preprocessing: documents -> SentencePiece ids -> ``P_{key}_document.{bin,idx}`` (+ ``.json`` record).

Pipeline: the main process of each partition reads records (:mod:`megamythos.data.sources`) into batches;
``workers`` tokenizer processes decode, parse and encode them; results are written in input order, so the
output does not depend on ``workers`` (and, since partitions are merged in order, not on ``partitions``).
At most ``2 * workers`` batches are in flight, so memory stays bounded on any input size.
A partition or encoding process that dies (the out-of-memory killer's SIGKILL) ends the run with
:class:`WorkerLostError`, nothing written; Ctrl-C is answered by the main process alone.

Bad records (non-UTF-8 bytes in a JSON line, malformed JSON, a missing key, a non-string value, an empty document)
are counted with their size in bytes, logged with file and line and skipped, or raise :class:`BadInputError` with
``strict``; an input that yields no document at all raises it too (nothing is written). A text document is never
skipped for a bad byte (one would lose a whole file read as one document): invalid UTF-8 becomes U+FFFD and the run
ends with a warning that counts the bytes replaced and names the first (``strict`` refuses it instead).

Crash safety: a dataset becomes visible (``dataset_exists``: ``.bin`` and ``.idx``) only complete and with its
tokenizer record: the record is written, and an existing ``.idx`` of the same prefix removed, before the ``.idx``
is renamed into place last (with several ``json_keys``, every key's record before any key's ``.idx``, so that no
key's new dataset is ever visible beside another's old one); an existing dataset is replaced only with
``overwrite``. The skipped-record report is
written under a temporary name and renamed beside the dataset it describes, so a failed run leaves the old one.
Temporary files of this run's outputs left by a killed run (``*.tmp.<host>.<pid>`` of a dead pid of this host)
are removed when the next run on the same output prefix starts.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from megamythos.data.atomic import (
    OutputError,
    check_output_prefix,
    describe_os_error,
    remove_stale_temps,
    temp_name,
    writable_parent,
)
from megamythos.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder, optimal_dtype
from megamythos.data.metadata import (
    announce_dataset,
    dataset_files,
    read_dataset_metadata,
    refuse_to_replace,
    verified_token_range,
)
from megamythos.data.sources import (
    DEFAULT_HF_SPLIT,
    DEFAULT_JSON_KEY,
    MISSING_KEY,
    RawRecord,
    Replacements,
    expand_inputs,
    iter_file_records,
    iter_hub_records,
    parse_record,
    skip_kind,
)
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import UserError

logger = logging.getLogger(__name__)

MAX_LOGGED_BAD_RECORDS = 20


class BadInputError(UserError, ValueError):
    """A bad record met with ``strict`` set, an input that held no usable document, or settings that cannot run."""


class WorkerLostError(UserError, RuntimeError):
    """A partition or encoding process ended without its result (killed by the out-of-memory killer, crashed)."""


def _check_not_empty(config: PreprocessConfig, stats: PreprocessStats) -> None:
    """Refuse to write a dataset without documents; the ``--json-keys`` hint only when some records were objects
    without the key (the text may be under another one), not for binary, non-UTF-8 or malformed input."""
    if stats.documents:
        return
    reasons = stats.skipped_reasons() or "no records"
    source = config.hf_dataset or " ".join(config.inputs)
    hint = (f"; if the text is under another key, pass --json-keys KEY (now {' '.join(config.json_keys)})"
            if any(r.startswith(MISSING_KEY) for r in stats.skipped_by_reason) else "")
    raise BadInputError(f"{source} gave no documents ({reasons}){hint}; nothing was written")


@dataclass
class PreprocessConfig:
    """Options of :func:`preprocess`. ``inputs`` are paths or globs; ``hf_dataset`` replaces them when set."""

    inputs: list[str]
    output_prefix: str
    tokenizer_model: str
    json_keys: tuple[str, ...] = (DEFAULT_JSON_KEY,)
    workers: int = 1
    partitions: int = 1
    append_eod: bool = False
    strict: bool = False
    blank_line_documents: bool = False
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_split: str = DEFAULT_HF_SPLIT
    input_format: str | None = None  # txt, jsonl or parquet for every input; None: by suffix
    text_verbatim: bool = False  # text files byte for byte: CRLF and a byte-order mark kept
    streaming: bool = False
    batch_bytes: int = 1 << 20
    batch_documents: int = 1024
    log_interval: int = 10_000
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        self.json_keys = tuple(self.json_keys)
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise BadInputError(f"--json-keys {' '.join(self.json_keys)} is invalid: give one or more distinct keys")
        if bool(self.inputs) == bool(self.hf_dataset):
            raise BadInputError("give --input (files, globs or save_to_disk folders) or --hf-dataset NAME, not both "
                                "and not neither")
        for name in ("workers", "partitions", "batch_bytes", "batch_documents", "log_interval"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name}={getattr(self, name)} is invalid: must be >= 1")
        if self.hf_dataset and self.partitions > 1:
            raise BadInputError(f"--partitions {self.partitions} splits --input files; it cannot be used with "
                                "--hf-dataset")

    def output_prefixes(self) -> dict[str, str]:
        """Dataset prefix of each key: ``{output_prefix}_{key}_document``."""
        return {key: f"{self.output_prefix}_{key}_document" for key in self.json_keys}

    def skipped_report_path(self) -> str:
        """Where every skipped record is listed (``file<TAB>line<TAB>reason``), written only if one is skipped."""
        return f"{self.output_prefix}.skipped.tsv"


@dataclass
class PreprocessStats:
    """What a run did. ``skipped_by_reason`` maps a reason to its count, ``skipped_bytes_by_reason`` to the size of
    those records; ``bad_examples`` are ``file:line: reason``; ``replaced`` counts the invalid UTF-8 bytes of text
    documents replaced by U+FFFD."""

    documents: int = 0
    tokens: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped_by_reason: Counter = field(default_factory=Counter)
    skipped_bytes_by_reason: Counter = field(default_factory=Counter)
    replaced: Replacements = field(default_factory=Replacements)
    bad_examples: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    skipped_report: str | None = None

    def add(self, other: PreprocessStats) -> None:
        self.documents += other.documents
        self.tokens += other.tokens
        self.skipped += other.skipped
        self.bytes += other.bytes
        self.skipped_by_reason.update(other.skipped_by_reason)
        self.skipped_bytes_by_reason.update(other.skipped_bytes_by_reason)
        self.replaced.add(other.replaced)
        self.bad_examples.extend(other.bad_examples[: MAX_LOGGED_BAD_RECORDS - len(self.bad_examples)])

    def skipped_reasons(self) -> str:
        """``N reason (B bytes)`` for each reason a record was skipped, or ``""`` if none was."""
        return ", ".join(f"{n} {r} ({self.skipped_bytes_by_reason[r]} bytes)"
                         for r, n in sorted(self.skipped_by_reason.items()))

    def summary(self) -> str:
        rate = self.tokens / self.seconds if self.seconds else 0.0
        listed = f", listed in {self.skipped_report}" if self.skipped_report else ""
        replaced = f" replaced={self.replaced.describe()}" if self.replaced.invalid_bytes else ""
        return (f"documents={self.documents} tokens={self.tokens} skipped={self.skipped} "
                f"({self.skipped_reasons() or 'none'}{listed}){replaced} bytes={self.bytes} "
                f"seconds={self.seconds:.2f} tokens/s={rate:,.0f}")


@dataclass
class _BatchResult:
    tokens: list[np.ndarray]   # per key: int32 (sum(lengths),)
    lengths: list[np.ndarray]  # per key: int32 (documents,)
    bad: list[tuple[str, int, str, int]]  # source, line, reason, size in bytes
    documents: int
    nbytes: int
    replaced: Replacements


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(model_path: str) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer(model_path)


def _init_pool_worker(parent: int, model_path: str) -> None:
    """:func:`_init_worker` in a process of the encoding pool (:func:`_start_child`)."""
    _start_child(parent)
    _init_worker(model_path)


def _encode_batch(records: list[RawRecord], keys: tuple[str, ...], append_eod: bool) -> _BatchResult:
    """Parse and tokenise one batch in a worker (or in-process when workers == 1)."""
    tok = _WORKER_TOKENIZER
    assert tok is not None, "worker not initialised"
    texts: list[list[str]] = [[] for _ in keys]
    bad: list[tuple[str, int, str, int]] = []
    replaced = Replacements()
    nbytes = 0
    for record in records:
        parsed = parse_record(record, keys)
        if parsed.texts is None:
            bad.append((record.source, record.line, parsed.reason or "unknown", record.size()))
            continue
        replaced.note(record.source, parsed)
        for column, text in zip(texts, parsed.texts):
            column.append(text)
            nbytes += len(text.encode("utf-8"))
    eod = tok.eos_id if append_eod else None
    encoded = [tok.encode_flat(column, append_id=eod) for column in texts]
    tokens, lengths = [e[0] for e in encoded], [e[1] for e in encoded]
    return _BatchResult(tokens, lengths, bad, len(texts[0]), nbytes, replaced)


def _batches(records: Iterable[RawRecord], max_docs: int, max_bytes: int) -> Iterator[list[RawRecord]]:
    batch: list[RawRecord] = []
    size = 0
    for record in records:
        batch.append(record)
        size += len(record.data) if isinstance(record.data, bytes) else 1024
        if len(batch) >= max_docs or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@contextlib.contextmanager
def _forked_pool(processes: int, flag: str, initializer: Callable[..., None],
                 initargs: tuple[Any, ...]) -> Iterator[ProcessPoolExecutor]:
    """``processes`` processes forked now, before any thread starts here (the progress bar's monitor, the pool's
    own), so that no child inherits a lock a thread held; ``initializer`` calls :func:`_start_child`. A process
    that ends without a result (SIGKILL from the kernel's out-of-memory killer, a crash) raises
    :class:`WorkerLostError` naming ``flag``, where ``multiprocessing.Pool`` would wait for its result forever. An
    exception here (Ctrl-C, a bad record with ``strict``, another process's error) ends the processes at once,
    where the pool would wait for every task queued (another partition's whole share of the input)."""
    before = set(mp.active_children())
    pool = ProcessPoolExecutor(processes, mp_context=mp.get_context("fork"), initializer=initializer,
                               initargs=initargs)
    try:
        pool.submit(int).result()  # forks every process (the fork context starts them all at the first task)
        children = [p for p in mp.active_children() if p not in before]
        try:
            yield pool
        except BaseException:
            for child in children:
                child.terminate()
            raise
    except BrokenProcessPool as err:
        raise WorkerLostError(f"a process of {flag} ended without its result (killed, e.g. by the kernel's "
                              "out-of-memory killer: see `dmesg`, or crashed); nothing was written: run again, with "
                              f"a smaller {flag} if memory is short") from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_pool(config: PreprocessConfig) -> contextlib.AbstractContextManager[ProcessPoolExecutor | None]:
    """The pool of ``workers`` forked encoding processes (:func:`_forked_pool`); None for one worker: this process
    encodes."""
    if config.workers == 1:
        _init_worker(config.tokenizer_model)
        return contextlib.nullcontext(None)
    return _forked_pool(config.workers, "--workers", _init_pool_worker, (os.getpid(), config.tokenizer_model))


def _ordered_results(config: PreprocessConfig, pool: ProcessPoolExecutor | None,
                     batches: Iterator[list[RawRecord]]) -> Iterator[_BatchResult]:
    """Batch results in input order, from ``pool`` (:func:`_worker_pool`) with at most 2 x workers batches queued."""
    args = (config.json_keys, config.append_eod)
    if pool is None:
        for batch in batches:
            yield _encode_batch(batch, *args)
        return
    pending: deque = deque()
    for batch in batches:
        pending.append(pool.submit(_encode_batch, batch, *args))
        if len(pending) >= 2 * config.workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _records(config: PreprocessConfig, paths: list[str]) -> Iterator[RawRecord]:
    if config.hf_dataset:
        yield from iter_hub_records(config.hf_dataset, config.hf_config, config.hf_split, config.streaming)
    for path in paths:
        yield from iter_file_records(path, config.json_keys, config.blank_line_documents, config.hf_split,
                                     config.input_format, config.text_verbatim)


def _report_bad(stats: PreprocessStats, bad: list[tuple[str, int, str, int]], strict: bool,
                report_path: str, log: bool) -> None:
    """Count ``bad`` records and their bytes in ``stats``, keep the first few (``log``: and log them), list all in
    ``report_path`` (or raise if strict)."""
    if not bad:
        return
    if strict:
        source, line, reason, _ = bad[0]
        raise BadInputError(f"{source}:{line}: {reason} (strict mode; drop --strict to skip and count bad records)")
    with open(report_path, "a", encoding="utf-8") as report:
        for source, line, reason, size in bad:
            report.write(f"{source}\t{line}\t{reason}\n")
            stats.skipped += 1
            kind = skip_kind(reason)
            stats.skipped_by_reason[kind] += 1
            stats.skipped_bytes_by_reason[kind] += size
            if len(stats.bad_examples) < MAX_LOGGED_BAD_RECORDS:
                stats.bad_examples.append(f"{source}:{line}: {reason}")
                if log:
                    logger.warning("skipped %s", stats.bad_examples[-1])


def _count_replaced(stats: PreprocessStats, replaced: Replacements, strict: bool) -> None:
    """Add a batch's ``replaced`` invalid UTF-8 bytes to ``stats``; strict mode refuses them."""
    if replaced.invalid_bytes and strict:
        raise BadInputError(f"{replaced.first}: invalid UTF-8 bytes in a text document (strict mode; drop --strict "
                            "to replace them by U+FFFD, or re-encode the file as UTF-8)")
    stats.replaced.add(replaced)


@contextlib.contextmanager
def _dataset_builders(config: PreprocessConfig,
                      prefixes: dict[str, str]) -> Iterator[tuple[Tokenizer, list[IndexedDatasetBuilder]]]:
    """The tokenizer and a builder of each key's dataset ``prefixes[key]``, in the tokenizer's dtype; every
    builder's temporary files are removed on an exception."""
    tokenizer = Tokenizer(config.tokenizer_model)
    dtype = optimal_dtype(tokenizer.vocab_size)
    builders = [IndexedDatasetBuilder(prefixes[k], dtype) for k in config.json_keys]
    try:
        yield tokenizer, builders
    except BaseException:
        for builder in builders:
            builder.abort()
        raise


def _publish(config: PreprocessConfig, tokenizer: Tokenizer, builders: list[IndexedDatasetBuilder],
             documents: int) -> None:
    """Put the ``builders``' datasets (one per key, of ``documents`` documents) in place: every key's record first,
    each hiding the old dataset at its prefix (:func:`~megamythos.data.metadata.announce_dataset`), then every
    ``.bin`` and ``.idx``. Wherever a run is killed, no key's new dataset is visible beside another key's old one."""
    for key, builder in zip(config.json_keys, builders):
        announce_dataset(builder.path_prefix, tokenizer, builder.checksums(), dtype=builder.dtype.name,
                         append_eod=config.append_eod, eod_id=tokenizer.eos_id, json_key=key,
                         num_documents=documents, num_tokens=builder.num_tokens)
    for builder in builders:
        builder.finalize()


def _tokenize_to(config: PreprocessConfig, paths: list[str], prefixes: dict[str, str],
                 report_path: str, final: bool = True) -> PreprocessStats:
    """Tokenise ``paths`` (or the hub dataset) into the datasets ``prefixes`` (key -> prefix); ``final``: these
    are the outputs (not partitions to merge), which must not be empty, and the first bad records are logged as
    they come (a partition's are logged by :func:`_run_partitions`, in input order)."""
    stats = PreprocessStats()
    start = time.perf_counter()
    with _dataset_builders(config, prefixes) as (tokenizer, builders):
        with _worker_pool(config) as pool, tqdm(unit="doc", disable=not config.progress, dynamic_ncols=True) as bar:
            next_log = config.log_interval
            batches = _batches(_records(config, paths), config.batch_documents, config.batch_bytes)
            for result in _ordered_results(config, pool, batches):
                _report_bad(stats, result.bad, config.strict, report_path, log=final)
                _count_replaced(stats, result.replaced, config.strict)
                for builder, tokens, lengths in zip(builders, result.tokens, result.lengths):
                    builder.add_documents(tokens, lengths)
                stats.documents += result.documents
                stats.tokens += sum(int(t.size) for t in result.tokens)
                stats.bytes += result.nbytes
                bar.update(result.documents)
                if stats.documents >= next_log:
                    next_log += config.log_interval
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    rates = dict(docs_s=f"{stats.documents / elapsed:,.0f}",
                                 tok_s=f"{stats.tokens / elapsed:,.0f}",
                                 MB_s=f"{stats.bytes / elapsed / 1e6:.2f}")
                    bar.set_postfix(rates, refresh=False)
                    logger.info("%d documents, %s", stats.documents, rates)
        if final:
            _check_not_empty(config, stats)
        _publish(config, tokenizer, builders, stats.documents)
    stats.outputs = list(prefixes.values())
    stats.seconds = time.perf_counter() - start
    return stats


def _partition_paths(paths: list[str], parts: int) -> list[list[str]]:
    """Split ``paths`` into at most ``parts`` contiguous groups of roughly equal total size."""
    sizes = np.array([max(os.path.getsize(p), 1) if os.path.isfile(p) else 1 for p in paths], dtype=np.float64)
    bounds = np.searchsorted(np.cumsum(sizes), np.arange(1, parts) * sizes.sum() / parts, side="left") + 1
    groups = [g.tolist() for g in np.split(np.array(paths, dtype=object), np.unique(bounds))]
    return [g for g in groups if g]


def _own_paths(config: PreprocessConfig) -> list[str]:
    """Every file or directory a run on ``config.output_prefix`` writes (whose temporaries it may judge stale)."""
    files = [path for prefix in config.output_prefixes().values() for path in dataset_files(prefix)]
    return [*files, config.output_prefix + ".parts", config.skipped_report_path()]


def _publish_report(written: str, report: str, stats: PreprocessStats) -> None:
    """Move the run's skipped-record report ``written`` (absent if nothing was skipped) to ``report``, beside the
    dataset just put in place; an old run's report there is removed when this run skipped nothing."""
    if os.path.exists(written):
        os.replace(written, report)
        stats.skipped_report = report
    elif os.path.exists(report):
        os.remove(report)


def preprocess(config: PreprocessConfig) -> PreprocessStats:
    """Run the whole preprocessing; returns the statistics (also logged). A file that cannot be read or written
    (disk full included) raises :class:`OutputError` naming it."""
    check_output_prefix(config.output_prefix)
    writable_parent(config.output_prefix, "--output-prefix")
    cpus = len(os.sched_getaffinity(0))
    if config.workers * config.partitions > cpus:
        logger.warning("--workers %d x --partitions %d is more than the %d CPUs this process may use: the extra "
                       "processes only compete for them", config.workers, config.partitions, cpus)
    try:
        return _preprocess(config)
    except OSError as err:
        if isinstance(err, UserError):
            raise
        raise OutputError(f"preprocessing into {config.output_prefix} failed: {describe_os_error(err)}") from err


def _preprocess(config: PreprocessConfig) -> PreprocessStats:
    tokenizer = Tokenizer(config.tokenizer_model)
    if config.append_eod and tokenizer.eos_id < 0:
        raise BadInputError(f"--append-eod: tokenizer {config.tokenizer_model} has no end-of-document piece (eos id "
                            "-1); drop --append-eod, or use a tokenizer trained with an eos piece")
    for prefix in config.output_prefixes().values():
        refuse_to_replace(prefix, config.overwrite)
    for removed in remove_stale_temps(_own_paths(config)):
        logger.info("removed %s, left by a killed run", removed)
    paths = expand_inputs(config.inputs) if config.inputs else []
    outputs = {os.path.realpath(p) for p in _own_paths(config)}
    overlap = [p for p in paths if os.path.realpath(p) in outputs]
    if overlap:
        raise BadInputError(f"--input {overlap[0]} is a file this run writes (--output-prefix "
                            f"{config.output_prefix}); choose another --output-prefix (--overwrite does not allow "
                            "this)")
    groups = _partition_paths(paths, config.partitions) if config.partitions > 1 and len(paths) > 1 else [paths]
    if config.partitions > len(groups):
        logger.warning("partitions split input files: %d input file(s) give %d partition(s), not %d",
                       len(paths), len(groups), config.partitions)
    start = time.perf_counter()
    written = temp_name(config.skipped_report_path())
    try:
        if len(groups) == 1:
            stats = _tokenize_to(config, paths, config.output_prefixes(), written)
        else:
            stats = _run_partitions(config, groups, written)
        _publish_report(written, config.skipped_report_path(), stats)
    finally:
        if os.path.exists(written):
            os.remove(written)
    stats.seconds = time.perf_counter() - start
    if stats.replaced.invalid_bytes:
        logger.warning("%s; the rest of those documents is kept: re-encode the input as UTF-8 to keep the "
                       "characters", stats.replaced.describe())
    logger.info("preprocessing done: %s", stats.summary())
    return stats


def _start_child(parent: int) -> None:
    """In a partition or encoding process: end when the process that forked it ends, even by a signal to it alone
    (Linux's parent-death signal), and ignore Ctrl-C. Otherwise the pool's processes would wait for work forever
    (each holds the work queue's write end, so its read never ends), and SIGINT, which reaches the whole process
    group, would print a ``KeyboardInterrupt`` traceback from each; the process that owns the pool answers it alone
    and ends them (:func:`_forked_pool`)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the signal was armed
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_partitions(config: PreprocessConfig, groups: list[list[str]], report_path: str) -> PreprocessStats:
    """Tokenise each group of files in its own process into a partial dataset, then concatenate them in order.

    Partial datasets live in a temporary directory (``{output_prefix}.parts.tmp.<pid>``) removed at the end,
    so no valid-looking partial ``.idx`` is ever left next to the outputs.
    """
    workdir = temp_name(config.output_prefix + ".parts")
    os.makedirs(workdir)
    parts = [{k: os.path.join(workdir, f"{i:03d}_{k}") for k in config.json_keys} for i in range(len(groups))]
    reports = [os.path.join(workdir, f"{i:03d}.skipped.tsv") for i in range(len(groups))]
    stats = PreprocessStats()
    try:
        with _forked_pool(len(groups), "--partitions", _start_child, (os.getpid(),)) as pool:
            futures = [pool.submit(_tokenize_to, config, g, p, r, False) for g, p, r in zip(groups, parts, reports)]
            wait(futures, return_when=FIRST_EXCEPTION)  # a partition's error (strict) ends the others at once
            for future in futures:
                if future.done() and future.exception() is not None:
                    future.result()  # raises it: the first in input order of those that failed
            for future in futures:
                stats.add(future.result())
        for example in stats.bad_examples:  # the first MAX_LOGGED_BAD_RECORDS in input order, not K times as many
            logger.warning("skipped %s", example)
        _check_not_empty(config, stats)
        with _dataset_builders(config, config.output_prefixes()) as (tokenizer, builders):
            for key, builder in zip(config.json_keys, builders):
                for part in parts:  # each checked against the checksums it was written with, as a merge's inputs
                    verified_token_range(IndexedDataset(part[key]), read_dataset_metadata(part[key]))
                    builder.add_index(part[key])
            _publish(config, tokenizer, builders, stats.documents)
        for report in (r for r in reports if os.path.exists(r)):
            with open(report, "rb") as src, open(report_path, "ab") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stats.outputs = list(config.output_prefixes().values())
    return stats
