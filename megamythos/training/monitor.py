"""Training telemetry on rank 0: TensorBoard (Megatron tag names with ``vs samples`` twins, in the run
``samples/`` below the TensorBoard directory), a console line per log interval, an optional JSON-lines metrics
file, and the peak against which MFU is measured.
(FLOPs per token come from :func:`megamythos.model.params.count`.)
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import psutil
import torch

from megamythos.data.atomic import (
    OutputError,
    describe_os_error,
    writable_directory,
    writable_parent,
)
from megamythos.runtime.device import cpu_model

logger = logging.getLogger(__name__)

# Scalars written with a "<tag> vs samples" twin, as Megatron-LM does, into a run of their own (SAMPLES_RUN): a
# resume purges each run's steps after its resume point, iterations in one and consumed samples in the other.
SAMPLES_RUN = "samples"
SAMPLE_TWINS = ("lm loss", "learning-rate", "grad-norm", "params-norm", "lm loss validation", "lm loss validation ppl",
                "lm loss test", "lm loss test ppl", "tokens-per-sec", "loss-scale", "batch-size", "world-size")


GIB = float(1 << 30)
# A rank whose step compute time stays STRAGGLER_RATIO times the fastest rank's or more for STRAGGLER_STEPS steps in
# a row is named in a warning (StragglerWatch).
STRAGGLER_RATIO = 1.25
STRAGGLER_STEPS = 10
# A routed expert no token reached for this many steps in a row is named in a warning where the aux-loss-free bias
# update is off (IdleExpertWatch; with it on, 1 / rate steps).
IDLE_EXPERT_STEPS = 1000


def anonymous_resident_bytes() -> int | None:
    """This process's resident anonymous memory (``RssAnon`` of ``/proc/self/status``, Linux; None elsewhere): what
    it allocated (tensors, Python objects, the allocator's cache), without the pages of memory-mapped files."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def memory_usage(device: torch.device) -> dict[str, float]:
    """This process's memory, in GiB. CUDA: the peak allocated and reserved since the last call (the peaks are
    then reset, so each call covers one step) and the caching allocator's retries so far (a count that rises is
    fragmentation near the limit, before an out-of-memory error). CPU: the resident set now, its peak since the
    process started and, on Linux, its anonymous part (``memory/anon-GiB``, :func:`anonymous_resident_bytes`): the
    resident set also holds the pages of the memory-mapped dataset and index files the run has read, which grow with
    the steps up to those files' sizes (the kernel drops them under memory pressure), so a leak shows in the
    anonymous part alone. The keys depend on the device type only (a value this process cannot read is NaN): the
    trainer gathers every rank's values in one collective of that many numbers (:func:`peak_memory`)."""
    if device.type == "cuda":
        usage = {"memory/max-allocated-GiB": torch.cuda.max_memory_allocated(device) / GIB,
                 "memory/max-reserved-GiB": torch.cuda.max_memory_reserved(device) / GIB,
                 "memory/alloc-retries": float(torch.cuda.memory_stats(device).get("num_alloc_retries", 0))}
        torch.cuda.reset_peak_memory_stats(device)
        return usage
    usage = {"memory/rss-GiB": psutil.Process().memory_info().rss / GIB,
             "memory/max-rss-GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}  # Linux: KiB
    anonymous = anonymous_resident_bytes()
    usage["memory/anon-GiB"] = math.nan if anonymous is None else anonymous / GIB
    return usage


def peak_memory(keys: list[str], table: torch.Tensor) -> dict[str, float]:
    """The memory of the rank nearest its limit: for each of ``keys``, the max over the ranks' rows of ``table``
    [world, len(keys)] (:func:`memory_usage`'s values of each rank), a NaN (a value that rank could not read) left
    out; a key that no rank could read is dropped."""
    peaks = table.masked_fill(table.isnan(), -math.inf).amax(0).tolist()
    return {key: peak for key, peak in zip(keys, peaks, strict=True) if peak > -math.inf}


def measure_peak_tflops(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                        size: int | None = None, repeats: int = 8) -> float:
    """Achievable dense matmul TFLOP/s of one process on ``device``, a stand-in for the datasheet peak: square
    matmuls of ``size`` (default 512 on CPU, 8192 on a GPU, where small ones are launch-bound), timed after a
    warm-up and, on a GPU, up to the device's completion. The operands come from a generator of their own, so the
    global RNG a run draws from is left alone."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 512)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    b = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    wait = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm up
    wait()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    wait()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12


def peak_key(dtype: torch.dtype, device: torch.device) -> str:
    """What :func:`measure_peak_tflops` depends on: the device model, the dtype and, on CPU, the threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {dtype}"
    return f"{cpu_model()['model_name']}, {torch.get_num_threads()} threads, {dtype}"


def openmp_wait_policy() -> str:
    """``OMP_WAIT_POLICY`` as this process started with it, which is what OpenMP read when torch loaded it (Linux:
    ``/proc/self/environ``; elsewhere the current value); "unset" if none."""
    try:
        start = dict(item.split("=", 1) for item in Path("/proc/self/environ").read_bytes().decode(
            errors="replace").split("\0") if "=" in item)
    except OSError:
        start = dict(os.environ)
    return start.get("OMP_WAIT_POLICY") or "unset"


def check_outputs(tensorboard_dir: str | None, metrics_file: str | None, profile_dir: str | None = None,
                  save: str | None = None) -> None:
    """Create the ``--save``, TensorBoard and profile directories and the metrics file's directory, or raise
    :class:`OutputError` naming the flag: before start-up, where a file in the way would otherwise be a
    traceback after it. ``--save`` first: the launcher puts the logs inside it, and a ``--save`` that cannot be
    made is the user's flag to fix, not the ``--tensorboard-dir`` the launcher derived from it."""
    if save:
        writable_directory(save, "--save")
    if tensorboard_dir:
        writable_directory(tensorboard_dir, "--tensorboard-dir")
    if profile_dir:
        writable_directory(profile_dir, "--profile-dir")
    if metrics_file:
        if Path(metrics_file).is_dir():
            raise OutputError(f"--metrics-file {metrics_file} is a directory; give a file path such as "
                              "RUN/metrics.jsonl")
        writable_parent(metrics_file, "--metrics-file")
        check_metrics_log(metrics_file)


METRICS_LINE_LIMIT = 1 << 20  # bytes: a metrics record is a few KiB; a longer line is another kind of file
METRICS_LINES_CHECKED = 100  # a long run's log holds millions; another kind of file shows in its first lines


def check_metrics_log(metrics_file: str | Path) -> None:
    """Raise :class:`OutputError` if ``metrics_file`` exists and is not a metrics log (JSON lines, each an object
    with an ``iteration``; the last one may be cut by a killed writer), judged by its first
    :data:`METRICS_LINES_CHECKED` lines: a resumed run rewrites the file, so any other file given by mistake (a
    dataset's record, a README) would be lost."""
    path = Path(metrics_file)
    if not path.is_file():
        return
    with path.open("rb") as handle:
        number = 0
        while number < METRICS_LINES_CHECKED and (raw := handle.readline(METRICS_LINE_LIMIT)):
            number += 1
            cut = not raw.endswith(b"\n") and not handle.read(1)  # the file's last line, without its end
            try:
                record = json.loads(raw.decode("utf-8"))
                if isinstance(record, dict) and "iteration" in record:
                    continue
            except (UnicodeDecodeError, ValueError):
                if cut:
                    return
            raise OutputError(f"--metrics-file {metrics_file} is not a metrics log (line {number} is no JSON record "
                              "with an iteration), and the run would rewrite it; give a new file or the run's own "
                              "metrics.jsonl")


class StepProfiler:
    """torch.profiler over optimizer steps ``start``..``end`` (1-based, inclusive) of this rank, written into
    ``directory`` when the last one ends (or the run stops first): ``steps_A-B_rank_R.json``, a Chrome trace (open
    it in https://ui.perfetto.dev), and ``steps_A-B_rank_R.txt``, the ops by self time. Both are one rank's view;
    CUDA kernels are recorded when a GPU runs them."""

    def __init__(self, directory: str, start: int, end: int, rank: int) -> None:
        self.directory, self.start, self.end, self.rank = Path(directory), start, end, rank
        self._profile: torch.profiler.profile | None = None
        self._last = 0

    def before_step(self, step: int) -> None:
        """Call before optimizer step ``step`` (1-based)."""
        if step == self.start and self._profile is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profile = torch.profiler.profile(activities=activities, record_shapes=True)
            self._profile.__enter__()

    def after_step(self, step: int) -> None:
        """Call after optimizer step ``step``; writes the files after step ``end``."""
        self._last = step
        if step >= self.end:
            self.close()

    def close(self) -> None:
        """Stop profiling and write the files (nothing when no profiled step ran)."""
        if self._profile is None:
            return
        profile, self._profile = self._profile, None
        profile.__exit__(None, None, None)
        stem = self.directory / f"steps_{self.start}-{self._last}_rank_{self.rank}"
        profile.export_chrome_trace(f"{stem}.json")
        sort_by = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        Path(f"{stem}.txt").write_text(profile.key_averages().table(sort_by=sort_by, row_limit=40) + "\n")
        logger.info("profile of steps %d-%d: %s.json (Chrome trace: https://ui.perfetto.dev) and %s.txt (ops by "
                    "self time)", self.start, self._last, stem, stem)


def drop_records_after(metrics_file: str | Path, iteration: int) -> int:
    """Remove the trailing records of iterations after ``iteration`` from the JSON-lines ``metrics_file``: what the
    launch before logged past its last checkpoint (a cut last line too). Earlier records stay, also those past
    ``iteration`` that a rollback left behind it. Reads the file from its end, a growing tail at a time (a long
    run's file holds a record per step), and truncates it where the dropped records start (the kept part is never
    rewritten); returns how many records were dropped."""
    path = Path(metrics_file)
    if not path.is_file():
        return 0
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        chunk = 1 << 20
        while True:
            start = max(0, size - chunk)
            handle.seek(start)
            lines = handle.read(size - start).splitlines(keepends=True)
            if start:  # the first line may begin before the tail: left to a longer tail
                lines = lines[1:]
            keep, dropped, found = size, 0, False
            for line in reversed(lines):
                try:
                    if int(json.loads(line)["iteration"]) <= iteration:
                        found = True
                        break
                except (ValueError, TypeError, KeyError):
                    pass
                keep, dropped = keep - len(line), dropped + 1
            if found or not start:
                break
            chunk *= 4
        if dropped:
            handle.truncate(keep)
    if dropped:
        logger.info("%s: dropped %d record(s) after iteration %d, logged by a launch that ended after its last "
                    "checkpoint", path, dropped, iteration)
    return dropped


EVENT_TAIL = 1 << 16  # bytes searched from an event file's end for its last record (an event is ~100 bytes)


def last_event(handle: BinaryIO) -> Any:
    """The last record of the TFRecord file ``handle`` as a TensorBoard ``Event``, found from the file's end: the
    record whose header (u64 length, its masked CRC-32C) and data CRC make it end where the file ends, within its
    last :data:`EVENT_TAIL` bytes; None when there is none (a record cut by a killed writer, an empty file)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    size = handle.seek(0, os.SEEK_END)
    start = max(0, size - EVENT_TAIL)
    handle.seek(start)
    tail = handle.read(size - start)
    for at in range(len(tail) - 16, -1, -1):  # a record: 12-byte header, data, 4-byte CRC of the data
        end = at + 12 + int.from_bytes(tail[at:at + 8], "little")
        if end + 4 != len(tail) or masked_crc32c(tail[at:at + 8]) != int.from_bytes(tail[at + 8:at + 12], "little"):
            continue
        if masked_crc32c(tail[at + 12:end]) == int.from_bytes(tail[end:], "little"):
            return Event.FromString(tail[at + 12:end])
    return None


def drop_events_after(log_dir: str | Path, step: int) -> int:
    """Truncate each TensorBoard event file directly in ``log_dir`` where its first summary of a step after ``step``
    starts: what a launch logged past the checkpoint the run resumes from (or a rollback reloaded), which this run
    logs again. A writer's ``purge_step`` only hides those events from TensorBoard's Python loader; its default
    loader (RustBoard, the ``tensorboard-data-server``) ignores it and drew each such point the run did not log
    again at the same step (a validation at another ``--eval-interval``). As in :func:`drop_records_after`, only
    a file's trailing summaries of steps after ``step`` go (a file holds one writer's events: the steps it logged
    last); an earlier one stays (a rollback's ``rollbacks`` scalar, logged at the diverged step before the steps
    taken again). A record a killed writer cut goes with the tail, or stays where none is dropped. A file whose
    last record is a summary of ``step`` or before (an earlier launch's, cut at an earlier resume) has nothing to
    drop and is read from its end only (:func:`last_event`): read through, each resume of a long run would parse
    every event the run ever logged. Returns how many bytes were dropped."""
    from tensorboard.compat.proto.event_pb2 import Event

    dropped = 0
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        with open(path, "rb+") as handle:
            last = last_event(handle)
            if last is not None and last.HasField("summary") and last.step <= step:
                continue
            handle.seek(0)
            cut: int | None = None  # where the trailing summaries after ``step`` start
            while len(header := handle.read(12)) == 12:  # TFRecord: u64 length, u32 CRC, data, u32 CRC
                start = handle.tell() - 12
                data = handle.read(int.from_bytes(header[:8], "little"))
                if len(handle.read(4)) != 4:
                    break
                event = Event.FromString(data)
                if event.HasField("summary"):
                    cut = (start if cut is None else cut) if event.step > step else None
            if cut is not None:
                dropped += handle.seek(0, os.SEEK_END) - cut
                handle.truncate(cut)
    if dropped:
        logger.info("%s: dropped %d bytes of TensorBoard events after step %d, logged before the run went back to "
                    "it", log_dir, dropped, step)
    return dropped


EVENT_STAMP = re.compile(r"events\.out\.tfevents\.(\d+)\.")
MAX_STAMP_WAIT_S = 10.0  # the longest wait for the clock to pass an event file's stamp (another host's clock ahead)


def wait_for_a_later_event_stamp(log_dir: str | Path) -> None:
    """Sleep until the clock's second is past the newest stamp among the event files in ``log_dir``, where it is
    not yet (the current second, or a later one: written by a host whose clock is ahead, or before this clock was
    set back), for at most :data:`MAX_STAMP_WAIT_S`; a stamp further ahead is a warning instead. TensorBoard reads
    a folder's event files in name order, and a name is ``events.out.tfevents.<second>.<host>.<pid>.<writer
    number>``: a new writer's file sorts before an earlier one of a later second, or of the same second where its
    pid or number has more digits (``...pid.10`` < ``...pid.9``), and then the earlier file's steps, read last,
    purge the later file's from the curve."""
    stamps = [int(match.group(1)) for path in Path(log_dir).glob("events.out.tfevents.*")
              if (match := EVENT_STAMP.match(path.name))]
    wait = max(stamps) + 1 - time.time() if stamps else 0.0
    if wait > MAX_STAMP_WAIT_S:
        logger.warning("%s holds an event file stamped %.0f s past this host's clock, so TensorBoard reads it after "
                       "the new one and shows its steps instead of those taken again: set this host's clock, or "
                       "move the later-stamped event files aside", log_dir, wait - 1)
    elif wait > 0:
        time.sleep(wait)


def earlier_name() -> str:
    """``before-<UTC time>``: the name under which a fresh start keeps what an earlier launch logged."""
    return f"before-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def keep_earlier_events(log_dir: str | Path) -> Path | None:
    """A run starting at iteration 0 finds TensorBoard event files directly in ``log_dir`` (another run's, or a
    launch that ended before its first checkpoint): move them into ``log_dir/before-<UTC time>/``, a TensorBoard
    run of their own, and return that folder (None when there are none). A writer's ``purge_step`` would only
    hide them from the Python loader; TensorBoard's default one (RustBoard) drew their points at the steps the new
    run logs later."""
    events = sorted(Path(log_dir).glob("events.out.tfevents.*"))
    if not events:
        return None
    kept = Path(log_dir) / earlier_name()
    kept.mkdir(exist_ok=True)  # a second fresh start in the same second adds its files
    for path in events:
        os.rename(path, kept / path.name)
    logger.warning("%s held the TensorBoard events of an earlier run (or a launch that saved no checkpoint); kept "
                   "as the run %s", log_dir, kept)
    return kept


def keep_earlier_log(metrics_file: str | Path) -> Path | None:
    """A run starting at iteration 0 finds records in ``metrics_file`` (another run's, or a launch that ended
    before its first checkpoint): rename the file aside to ``NAME.before-<UTC time>`` and return that path (None
    when there is nothing to keep), so the new run's log holds its own records and nothing logged is lost."""
    path = Path(metrics_file)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    kept = path.with_name(f"{path.name}.{earlier_name()}")
    os.rename(path, kept)
    logger.warning("%s held the records of an earlier run (or a launch that saved no checkpoint); kept as %s",
                   path, kept)
    return kept


def quiet_tensorboard_write_errors() -> None:
    """Keep a failed TensorBoard write (a full disk, a folder turned read-only) from printing a thread traceback.

    TensorBoard writes its event files from a thread of its own (``_AsyncWriterThread``), which re-raises a failed
    write into :func:`threading.excepthook`, whose default prints a traceback. The writer raises the same error on
    the next scalar the run logs, which :meth:`TrainingMonitor.scalars` turns into one line; so that thread's
    ``OSError`` is left to it. Every other thread's exception goes to the hook installed before. Idempotent."""
    previous = threading.excepthook
    if getattr(previous, "leaves_tensorboard_errors", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook.leaves_tensorboard_errors = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def finite_or_null(value: Any) -> Any:
    """``value`` with each non-finite float in it (a list's items too) as None: JSON has no NaN or Infinity, which
    Python's ``json`` writes as bare ``NaN`` and ``Infinity`` tokens that strict readers (JavaScript's
    ``JSON.parse``, Go's ``encoding/json``, Rust's ``serde_json``) refuse, the whole line with them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite_or_null(item) for item in value]
    return value


class TrainingMonitor:
    """Writes scalars from rank 0 only; other ranks hold a no-op instance.

    ``start_iteration``, ``start_samples``: the iteration the run starts from (resumes at) and the samples
    consumed by then. What an earlier launch logged after it (steps a killed run took after its last checkpoint,
    which this run takes again) is dropped from the metrics file and cut from the TensorBoard event files (the
    ``vs samples`` twins after ``start_samples``), so each iteration is logged once; a fresh start (iteration 0)
    renames the metrics file aside and moves the event files it finds into a TensorBoard run of their own.
    :meth:`rolled_back` cuts from TensorBoard the steps a rollback takes again.
    """

    def __init__(self, enabled: bool, tensorboard_dir: str | None, metrics_file: str | None,
                 start_iteration: int = 0, start_samples: int = 0) -> None:
        self.enabled = enabled
        self.writer = self.samples_writer = None
        self.metrics = None
        self.tensorboard_dir = tensorboard_dir
        if enabled and tensorboard_dir:
            self.writer = self._writer(tensorboard_dir, purge_step=start_iteration + 1)
            self.samples_writer = self._writer(os.path.join(tensorboard_dir, SAMPLES_RUN), purge_step=start_samples + 1)
        if enabled and metrics_file:
            Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
            if start_iteration:
                drop_records_after(metrics_file, start_iteration)
            else:
                keep_earlier_log(metrics_file)
            self.metrics = open(metrics_file, "a")

    def rolled_back(self, iteration: int) -> None:
        """A rollback reloaded the checkpoint of ``iteration``: the TensorBoard event files drop the steps after it,
        which the run takes again (the ``vs samples`` twins stay: the data moved on past the samples they were
        logged at)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = self._writer(self.tensorboard_dir, purge_step=iteration + 1)

    @staticmethod
    def _writer(log_dir: str, purge_step: int) -> Any:
        """A TensorBoard writer of ``log_dir`` after the events an earlier writer logged at ``purge_step`` or later
        are dropped (:func:`drop_events_after`); a fresh start (``purge_step`` 1) moves them aside instead
        (:func:`keep_earlier_events`)."""
        from torch.utils.tensorboard import SummaryWriter

        quiet_tensorboard_write_errors()
        if purge_step > 1:
            drop_events_after(log_dir, purge_step - 1)
        else:
            keep_earlier_events(log_dir)
        wait_for_a_later_event_stamp(log_dir)
        return SummaryWriter(log_dir=log_dir, max_queue=50, purge_step=purge_step)

    def scalars(self, values: dict[str, float], iteration: int, samples: int) -> None:
        """TensorBoard scalars at ``iteration``, plus ``vs samples`` twins for the Megatron tags."""
        if self.writer is None:
            return
        try:
            for tag, value in values.items():
                if value is None or not math.isfinite(value):
                    continue
                self.writer.add_scalar(tag, value, iteration)
                if tag in SAMPLE_TWINS:
                    self.samples_writer.add_scalar(f"{tag} vs samples", value, samples)
        except OSError as err:  # TensorBoard's writer thread failed (a full disk), raised on a later write
            raise self._write_failed("TensorBoard", err) from err

    def record(self, record: dict[str, Any]) -> None:
        """One JSON line (iteration, losses, ...) for scripts and tests; a non-finite value (the grad-norm of a step
        discarded for its gradient) is written as null (:func:`finite_or_null`)."""
        if self.metrics is not None:
            try:
                self.metrics.write(json.dumps({key: finite_or_null(value) for key, value in record.items()}) + "\n")
                self.metrics.flush()
            except OSError as err:
                raise self._write_failed(f"the metrics file {self.metrics.name}", err) from err

    @staticmethod
    def _write_failed(what: str, err: OSError) -> OutputError:
        """The one-line error of telemetry that cannot be written: the run stops (its steps would go unlogged)."""
        return OutputError(f"cannot write {what} ({describe_os_error(err)}); free space there (or move "
                           "--tensorboard-dir / --metrics-file) and run the same command again: it resumes from the "
                           "last checkpoint")

    def console(self, iteration: int, total: int, values: dict[str, Any]) -> None:
        """Megatron-style one-line summary."""
        if not self.enabled:
            return
        parts = [f"iteration {iteration:8d}/{total:8d}"]
        for key, value in values.items():
            if isinstance(value, float):
                parts.append(f"{key}: {value:.6g}")
            else:
                parts.append(f"{key}: {value}")
        logger.info(" | ".join(parts))

    def close(self) -> None:
        """Flush and close the outputs. A write that fails here (a full disk) is logged, not raised: it must not
        turn the one-line error that ended the run into a traceback."""
        for name, output in (("TensorBoard", self.writer), ("TensorBoard", self.samples_writer),
                             ("the metrics file", self.metrics)):
            if output is None:
                continue
            try:
                output.close()  # SummaryWriter.close flushes first
            except OSError as err:
                logger.warning("%s could not be written to the end: %s", name, err)


def rank_timers(compute: list[float]) -> dict[str, float]:
    """Megatron's min/max timers over ranks (``--timing-log-option minmax``) of the step compute time, the seconds
    each rank spent in the step outside collectives (``compute[r]`` is rank r's): ``timers/step-compute-min``,
    ``timers/step-compute-max`` and ``timers/slowest-rank`` (the rank of the max)."""
    slowest = max(range(len(compute)), key=compute.__getitem__)
    return {"timers/step-compute-min": min(compute), "timers/step-compute-max": compute[slowest],
            "timers/slowest-rank": float(slowest)}


class StragglerWatch:
    """Warns, once per rank and launch, of a rank whose step compute time stays ``ratio`` times the fastest rank's or
    more for ``steps`` consecutive steps, naming it and its host as Megatron's straggler detector does: every other
    rank waits for it at each collective, so one slow host (throttled, shared, a bad NIC) slows the whole run.
    One slow step is noise; a run of them with the same slowest rank is that rank."""

    def __init__(self, hosts: list[str], ratio: float = STRAGGLER_RATIO, steps: int = STRAGGLER_STEPS) -> None:
        self.hosts, self.ratio, self.steps = hosts, ratio, steps
        self.slowest, self.streak = -1, 0
        self.warned: set[int] = set()

    def observe(self, timers: dict[str, float], iteration: int) -> None:
        """One step's :func:`rank_timers`."""
        fastest, slowest = timers["timers/step-compute-min"], int(timers["timers/slowest-rank"])
        slow = timers["timers/step-compute-max"] >= self.ratio * fastest
        self.streak = self.streak + 1 if slow and slowest == self.slowest else int(slow)
        self.slowest = slowest
        if self.streak == self.steps and slowest not in self.warned:
            self.warned.add(slowest)
            logger.warning("rank %d on host %s is a straggler: its step compute time was %gx the fastest rank's or "
                           "more for %d steps in a row (iteration %d: %.1f ms against %.1f ms), and every rank waits "
                           "for it at each collective; look at that host (thermal throttling, other processes on its "
                           "cores, its network)", slowest, self.hosts[slowest], self.ratio, self.steps, iteration,
                           timers["timers/step-compute-max"] * 1e3, fastest * 1e3)


class IdleExpertWatch:
    """Warns, once per expert and launch, of a routed expert that no token reached for ``steps`` consecutive steps
    (over every micro-batch, loop and rank of each step): a dead expert trains nothing and holds its share of the
    weights for nothing, and the console said nothing of it (``moe/idle-experts`` in TensorBoard counts the idle
    experts of each step, not how long each stays idle).

    The aux-loss-free bias update raises an idle expert's selection bias by ``rate`` every step, while router
    scores (softmax or sigmoid) differ by less than 1; so ``steps`` = ceil(1 / rate): by then its bias has risen
    by more than any score difference, and the update should have brought it back (it does within tens of steps
    where a router starts unbalanced). With the update off (rate 0), :data:`IDLE_EXPERT_STEPS`."""

    def __init__(self, n_experts: int, rate: float) -> None:
        self.rate = rate
        self.steps = math.ceil(1 / rate) if rate > 0 else IDLE_EXPERT_STEPS
        self.streak = [0] * n_experts  # steps in a row without a token, per expert
        self.since = [0] * n_experts  # the iteration that began each streak
        self.warned: set[int] = set()

    def observe(self, idle: Sequence[int], iteration: int) -> None:
        """The experts no token reached in the step that ended at ``iteration``."""
        idle_now = set(idle)
        if len(idle_now) == len(self.streak):  # no token was routed at all (every micro-batch skipped): nothing seen
            return
        self.since = [since if n else iteration for since, n in zip(self.since, self.streak, strict=True)]
        self.streak = [n + 1 if e in idle_now else 0 for e, n in enumerate(self.streak)]
        # those named now reached `steps` at this step, so their streaks began at the same step
        dead = [e for e, n in enumerate(self.streak) if n >= self.steps and e not in self.warned]
        if not dead:
            return
        self.warned.update(dead)
        cause = (f"although the aux-loss-free bias update raised their selection bias by {self.rate:g} per step, "
                 f"{self.rate * self.steps:g} in all, more than any difference of router scores" if self.rate > 0
                 else "and the aux-loss-free bias update is off (expert_bias_update_rate 0)")
        logger.warning("routed expert(s) %s of %d received no token for %d steps in a row (iterations %d-%d), %s: "
                       "they train nothing. moe/idle-experts and moe/load-imbalance in TensorBoard show the router's "
                       "balance; a larger --override expert_bias_update_rate=... or seq_aux_loss_coef=... balances "
                       "it harder in a new run or a --finetune of a checkpoint", ", ".join(map(str, dead)),
                       len(self.streak), self.steps, self.since[dead[0]], iteration, cause)


@contextmanager
def still_working(what: str, every: float = 10.0) -> Iterator[None]:
    """Log ``still <what> (N s)`` every ``every`` seconds while the block runs (a long silent stretch, such as the
    first step's compilation under ``--compile``, says what it is doing)."""
    done = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not done.wait(every):
            logger.info("still %s (%.0f s)", what, time.monotonic() - start)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
