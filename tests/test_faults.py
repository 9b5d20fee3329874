"""Faults and bad input: every case ends in one line ``error: ...`` and exit code 2, or recovers; nothing is lost.

Each test backs one row of the "Faults and recovery" table in README.md. Trainer cases that are refused before
any process group starts run the trainer in one process (seconds); the others use real `deepspeed` launches.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from megamythos.checkpoint.files import WRITER_LOCK, read_latest
from megamythos.data.cli import preprocess_main
from megamythos.data.default_corpus import ensure_source_dataset
from megamythos.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder, dataset_exists
from megamythos.data.merge import merge_datasets
from megamythos.data.metadata import metadata_path, read_dataset_metadata, tokenizer_copy_path
from megamythos.data.tokenizer import Tokenizer
from megamythos.training.checkpointing import CheckpointError, check_run_dirs, writer_lock
from tests.helpers import (
    LAUNCHER,
    REPO,
    VOCAB,
    corpus_prefix,
    corpus_texts,
    dead_pid,
    deepspeed_command,
    finish,
    free_port,
    launch_env,
    make_dataset,
    metrics,
    one_error_line,
    run,
    run_single,
    spawn,
    start,
    synthetic_documents,
    tiny_args,
    trains,
    wait_for,
    write_jsonl,
)

DOCS = synthetic_documents(20, seed=5)


# ------------------------------------------------------------------------------------------------- data
def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


@pytest.mark.parametrize("case", ["missing input", "missing tokenizer", "empty tokenizer", "empty corpus",
                                  "strict", "unwritable output", "other json key"])
def test_preprocess_errors_are_one_line(case: str, tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    write_jsonl(tmp_path / "content.jsonl", DOCS, key="content")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "zero.model").write_bytes(b"")
    tok = tiny_tokenizer.model_path
    args = {"missing input": ["--input", "nothing*.jsonl", "--tokenizer-model", tok],
            "missing tokenizer": ["--input", "a.jsonl", "--tokenizer-model", "missing.model"],
            "empty tokenizer": ["--input", "a.jsonl", "--tokenizer-model", "zero.model"],
            "empty corpus": ["--input", "empty.jsonl", "--tokenizer-model", tok],
            "strict": ["--input", "bad.jsonl", "--tokenizer-model", tok, "--strict"],
            "unwritable output": ["--input", "a.jsonl", "--tokenizer-model", tok, "--output-prefix", "/proc/no/out"],
            "other json key": ["--input", "content.jsonl", "--tokenizer-model", tok]}[case]
    if "--output-prefix" not in args:
        args += ["--output-prefix", "out"]
    result = cli([str(REPO / "data_prep" / "preprocess_data.py"), "--no-progress", *args], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    expected = {"missing input": "nothing*.jsonl", "missing tokenizer": "missing.model",
                "empty tokenizer": "zero.model", "empty corpus": "no documents", "strict": "bad.jsonl:2",
                "unwritable output": "--output-prefix", "other json key": "--json-keys"}[case]
    assert expected in line
    assert not dataset_exists(str(tmp_path / "out_text_document")), "a failed run left a dataset"


@pytest.mark.parametrize("case", ["missing input", "empty corpus", "unwritable output"])
def test_tokenizer_training_errors_are_one_line(case: str, tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    inputs, prefix = {"missing input": ("nothing*", "tok"), "empty corpus": ("empty.jsonl", "tok"),
                      "unwritable output": ("a.jsonl", "/proc/no/tok")}[case]
    result = cli([str(REPO / "tokenizer" / "train_tokenizer.py"), "--input", inputs, "--vocab-size", "300",
                  "--model-prefix", prefix], tmp_path)
    assert result.returncode == 2
    one_error_line(result.stderr)


def test_dataset_is_never_visible_without_its_tokenizer_record(tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """At the moment the ``.idx`` (which makes the dataset exist) is renamed into place, the record is there;
    a run killed at that rename leaves no dataset, and the old dataset being overwritten is hidden first."""
    prefix = str(tmp_path / "out_text_document")
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    assert preprocess_main(["--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "out"),
                            "--tokenizer-model", tiny_tokenizer.model_path, "--no-progress"]) == 0
    real_replace = os.replace
    seen = []

    def killed_at_idx_rename(src: str, dst: str) -> None:
        if str(dst).endswith(".idx"):
            seen.append(os.path.isfile(metadata_path(prefix)) and not os.path.exists(dst))
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_idx_rename)
    assert preprocess_main(["--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "out"),
                            "--tokenizer-model", tiny_tokenizer.model_path, "--no-progress", "--overwrite"]) == 130
    assert seen == [True], "the .idx was renamed before the record was written or the old .idx removed"
    assert not dataset_exists(prefix)


def test_temporary_files_of_killed_runs_are_removed(tmp_path: Path, tiny_tokenizer: Tokenizer) -> None:
    """Only this output's temporaries of a dead process of this host: not a live process's, not another host's
    (a shared filesystem), not those of another output whose name starts with this one's (out, out_2)."""
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    dead, alive = dead_pid(), os.getppid()  # not our own pid: preprocessing runs in this process
    host = socket.gethostname()
    stale = [tmp_path / f"out_text_document.bin.tmp.{host}.{dead}", tmp_path / f"out.skipped.tsv.tmp.{host}.{dead}"]
    stale_dir = tmp_path / f"out.parts.tmp.{host}.{dead}"
    kept = [tmp_path / f"out_text_document.bin.tmp.{host}.{alive}",  # another run still writing
            tmp_path / f"out_text_document.bin.tmp.other-host.{dead}",  # its pid means nothing here
            tmp_path / f"out_2_text_document.bin.tmp.{host}.{dead}"]  # another output's
    for path in stale + kept:
        path.write_bytes(b"x" * 100)
    stale_dir.mkdir()
    assert preprocess_main(["--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "out"),
                            "--tokenizer-model", tiny_tokenizer.model_path, "--no-progress"]) == 0
    assert not any(p.exists() for p in [*stale, stale_dir]) and all(p.exists() for p in kept)
    assert read_dataset_metadata(str(tmp_path / "out_text_document"))["num_documents"] == len(DOCS)


def test_temporary_files_of_a_killed_merge_are_removed(tmp_path: Path) -> None:
    """A merge killed while copying (a corpus of terabytes) left its ``OUT.bin.tmp.<host>.<pid>`` for good: the
    next merge into OUT removed nothing, as preprocessing does. A live process's temporaries stay."""
    inputs = [make_dataset(tmp_path / "a", 5), make_dataset(tmp_path / "b", 7, base=5)]
    dead, alive, host = dead_pid(), os.getppid(), socket.gethostname()
    stale = [tmp_path / f"out.{ext}.tmp.{host}.{dead}" for ext in ("bin", "idx", "json", "tokenizer.model")]
    kept = tmp_path / f"out.bin.tmp.{host}.{alive}"
    for path in [*stale, kept]:
        path.write_bytes(b"x" * 100)
    assert len(merge_datasets(inputs, str(tmp_path / "out"))) == 12
    assert not any(p.exists() for p in stale) and kept.exists()


def test_export_without_a_checkpoint_is_one_line(tmp_path: Path) -> None:
    result = cli(["-m", "megamythos.checkpoint.export", str(tmp_path), str(tmp_path / "out")], tmp_path)
    assert result.returncode == 2
    assert str(tmp_path) in one_error_line(result.stderr)


# ------------------------------------------------------------------------------------------------- training
def reversed_corpus(prefix: str, out: Path) -> str:
    """``prefix``'s documents in reverse order, with its tokenizer record, as ``out/reversed_text_document``: data
    of the same tokenizer whose samples differ."""
    source = IndexedDataset(prefix)
    copy = str(out / "reversed_text_document")
    with IndexedDatasetBuilder(copy, source.dtype) as builder:
        for d in reversed(range(len(source))):
            builder.add_document(source.get(d))
        checksums = builder.checksums()
        builder.finalize()
    shutil.copy(tokenizer_copy_path(prefix), tokenizer_copy_path(copy))
    record = json.loads(Path(metadata_path(prefix)).read_text())  # the same counts, these files' checksums
    Path(metadata_path(copy)).write_text(json.dumps({**record, "checksums": checksums.record()}))
    return copy


@pytest.fixture(scope="module")
@trains
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """A 1-rank run of 2 iterations (global batch 4) with a checkpoint each and a validation of 2 global batches
    at the end, started on a lock left by a killed run. Its data are per split (Megatron's --train-data-path ...):
    it trains and validates on the corpus and is tested, once at the end, on the corpus in reverse document
    order."""
    out = tmp_path_factory.mktemp("trained")
    (out / "ckpt").mkdir()
    (out / "ckpt" / WRITER_LOCK).write_text(f"{socket.gethostname()} {dead_pid()}\n")
    args = tiny_args(corpus, 2)
    at = args.index("--data-path")
    del args[at:at + 4]  # --data-path PREFIX --split 90,10,0: the per-split paths instead
    prefix = corpus_prefix(corpus)
    log = run(1, [*args, "--train-data-path", prefix, "--valid-data-path", prefix, "--test-data-path",
                  reversed_corpus(prefix, out), "--save", str(out / "ckpt"), "--save-interval", "1",
                  "--eval-interval", "2", "--eval-iters", "2", "--metrics-file", str(out / "metrics.jsonl"),
                  "--tensorboard-dir", str(out / "tb")], out / "log.txt")
    assert "which is gone" in log
    return out


@pytest.mark.launch
def test_stale_lock_is_taken_over_and_released(trained: Path) -> None:
    assert read_latest(trained / "ckpt") == "iter_0000002"
    assert not (trained / "ckpt" / WRITER_LOCK).exists()


@pytest.mark.launch
def test_trainer_validation_and_evaluate_agree(trained: Path, tmp_path: Path) -> None:
    """The same checkpoint, samples and loop count give the same loss; both report the tokens they used."""
    val = [m for m in metrics(trained / "metrics.jsonl") if "lm loss validation" in m][-1]
    result = cli(["-m", "megamythos.inference.evaluate", "--load", str(trained / "ckpt"), "--loops", "3",
                  "--micro-batch-size", "4", "--eval-iters", "2", "--out", str(tmp_path / "eval")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.splitlines()[-1])["results"][0]
    assert row["tokens"] == val["validation tokens"] == 2 * 4 * 32
    assert f"= {row['tokens']} tokens" in result.stderr
    assert "host memory: " in result.stderr  # on CPU the command line keeps freed memory, as the trainer does
    assert abs(row["loss"] - val["lm loss validation"]) <= 1e-4, (row["loss"], val["lm loss validation"])


@pytest.mark.launch
def test_a_finished_run_is_tested_once_at_the_end_as_evaluate_test_set_reads(trained: Path, tmp_path: Path) -> None:
    """Megatron's end of pretrain: the last iteration validated already, so only the test data is evaluated, once,
    on --eval-iters global batches, as ``lm loss test`` and ``lm loss test ppl`` (metrics, TensorBoard, console);
    ``evaluate --test-set`` reads the run's recorded --test-data-path and the same batches, to the same loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = metrics(trained / "metrics.jsonl")
    assert [m["iteration"] for m in records if "lm loss validation" in m] == [2]
    tested = [m for m in records if "lm loss test" in m]
    assert [m["iteration"] for m in tested] == [2] and tested[0]["test tokens"] == 2 * 4 * 32
    loss = tested[0]["lm loss test"]
    assert tested[0]["lm loss test ppl"] == pytest.approx(math.exp(loss))
    assert re.search(r"test at iteration 2 \| lm loss: [0-9.]+ \| lm loss PPL: ", (trained / "log.txt").read_text())
    events = EventAccumulator(str(trained / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lm loss test")] == [(2, pytest.approx(loss, rel=1e-6))]
    assert [e.step for e in events.Scalars("lm loss test ppl")] == [2]
    result = cli(["-m", "megamythos.inference.evaluate", "--load", str(trained / "ckpt"), "--test-set", "--loops",
                  "3", "--exit-threshold", "0", "--micro-batch-size", "4", "--eval-iters", "2", "--out",
                  str(tmp_path / "eval")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out data: the test split of " in result.stderr and "reversed_text_document (read whole)" in \
        result.stderr
    row = json.loads(result.stdout.splitlines()[-1])["results"][0]
    assert row["tokens"] == tested[0]["test tokens"]
    assert abs(row["loss"] - loss) <= 1e-4, (row["loss"], loss)
    validation = next(m["lm loss validation"] for m in records if "lm loss validation" in m)
    assert abs(validation - loss) > 1e-3  # the test data is other data


def refused(args: list[str], cwd: Path) -> str:
    """Run the trainer (one process) and return its single error line; it must stop before DeepSpeed starts."""
    result = run_single(args, cwd)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Initializing TorchBackend" not in result.stderr, "refused only after the process group started"
    return one_error_line(result.stderr)


@pytest.mark.launch
def test_load_typo_is_refused(trained: Path, corpus: Path, tmp_path: Path) -> None:
    line = refused([*tiny_args(corpus, 4), "--save", str(tmp_path / "new"), "--load", str(trained / "ckpt-typo")],
                   tmp_path)
    assert "--load" in line and "ckpt-typo" in line and "does not exist" in line


def test_load_of_a_tag_an_export_or_an_empty_directory_is_refused(tmp_path: Path) -> None:
    """Each started from scratch with one INFO line ("no checkpoint in ...; starting from scratch")."""
    run = tmp_path / "run"
    for tag in ("iter_0000002", "iter_0000004"):
        (run / tag).mkdir(parents=True)
        (run / tag / "model_config.json").write_text("{}")
    (run / "latest").write_text("iter_0000004\n")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    cases = {run / "iter_0000004": f"is one checkpoint tag; pass the run directory above it, --load {run}, which "
                                   "resumes from its latest tag, iter_0000004",
             run / "iter_0000002": f"latest tag, iter_0000004; to resume from iter_0000002 instead, write that name "
                                   f"into {run / 'latest'}",
             tmp_path / "export": "is an export (weights only, no optimizer or data position); the trainer resumes "
                                  "from the --save directory of a run, or starts a new run from these weights with "
                                  "--finetune",
             tmp_path / "empty": "holds no checkpoint (no `latest`)"}
    for load, message in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(f"--load {load} ")) as refusal:
            check_run_dirs(str(tmp_path / "new"), str(load), verify=False)
        assert message in str(refusal.value)
    check_run_dirs(str(tmp_path / "empty"), str(tmp_path / "empty"), verify=False)  # --load = --save: a fresh run


def test_save_into_a_tag_or_an_export_is_refused(tmp_path: Path) -> None:
    """``launchers/pretrain.sh --save RUN/iter_N`` (``--load`` = ``--save``: meaning to resume that tag) trained from
    scratch inside the tag, its logs and iter_* folders among the tag's files, with one INFO line ("no checkpoint
    in ...; starting from scratch"), exit 0 (found 2026-12-06); so did a ``--save`` in an export or inside a tag."""
    run, export = tmp_path / "run", tmp_path / "export"
    (run / "iter_0000004").mkdir(parents=True)
    for name in ("model_config.json", "train_args.json"):
        (run / "iter_0000004" / name).write_text("{}")
    (run / "latest").write_text("iter_0000004\n")
    export.mkdir()
    for name in ("config.json", "model.safetensors", "checksums.json"):
        (export / name).write_text("{}")
    cases = {run / "iter_0000004": ("is a checkpoint tag, not a run folder", f"pass that run's folder ({run})"),
             run / "iter_0000004" / "sub": (f"lies inside the checkpoint tag {run / 'iter_0000004'}", "--finetune"),
             export: ("is an export, not a run folder", f"--finetune --load {export} with another --save")}
    for save, (what, remedy) in cases.items():
        for load in (save, None):
            with pytest.raises(CheckpointError, match=re.escape(f"--save {save} {what}")) as refusal:
                check_run_dirs(str(save), str(load) if load else None, verify=False)
            assert "would start from scratch inside it" in str(refusal.value) and remedy in str(refusal.value)
    check_run_dirs(str(tmp_path / "new"), str(run), verify=False)  # a run folder beside them is fine


def test_save_into_a_megatron_run_is_refused(tmp_path: Path) -> None:
    """Megatron-LM names its tags iter_NNNNNNN too: ``--save`` of a Megatron run folder started a fresh run there,
    whose first save removed Megatron's iter_0000002 "left by a save that did not finish" (found 2026-12-06)."""
    (tmp_path / "iter_0000002" / "mp_rank_00").mkdir(parents=True)
    (tmp_path / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2")
    for load in (tmp_path, None):
        with pytest.raises(CheckpointError, match=re.escape(f"--save {tmp_path} holds a Megatron-LM run")):
            check_run_dirs(str(tmp_path), str(load) if load else None, verify=False)


@pytest.mark.launch
def test_a_model_this_host_cannot_build_is_refused_before_start_up(corpus: Path, tmp_path: Path) -> None:
    """Each rank builds the whole model in fp32 before DeepSpeed shards it: experts 400M wide make ~1.4 TiB.
    Before (found 2026-12-06) nothing checked it: the 1t launcher's ranks would each allocate 3.3 TiB."""
    line = refused([*tiny_args(corpus, 4), "--override", "expert_dim=400000000"], tmp_path)
    assert "is built whole in fp32 on every rank before DeepSpeed shards it" in line
    assert "for the 1 rank(s) of this host" in line


@pytest.mark.launch
def test_save_over_another_run_is_refused(trained: Path, corpus: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in (trained / "ckpt").iterdir())
    line = refused([*tiny_args(corpus, 4), "--save", str(trained / "ckpt")], tmp_path)
    assert "already holds checkpoints" in line and f"--load {trained / 'ckpt'}" in line
    assert sorted(p.name for p in (trained / "ckpt").iterdir()) == before


@pytest.mark.launch
def test_a_run_whose_latest_was_lost_is_not_restarted_over_its_checkpoints(trained: Path, corpus: Path,
                                                                            tmp_path: Path) -> None:
    """``latest`` deleted beside complete tags: the launcher's ``--load`` = ``--save`` took it for a fresh run,
    deleted its checkpoints as unfinished saves and dropped its metrics (found 2026-12-06). A killed first save
    (a tag without checksums) still starts fresh."""
    ckpt = Path(shutil.copytree(trained / "ckpt", tmp_path / "ckpt"))
    (ckpt / "latest").unlink()
    before = sorted(p.name for p in ckpt.iterdir())
    line = refused([*tiny_args(corpus, 4), "--save", str(ckpt), "--load", str(ckpt)], tmp_path)
    assert "holds the complete checkpoint iter_0000002 but no `latest`" in line and "write iter_0000002 into" in line
    assert sorted(p.name for p in ckpt.iterdir()) == before
    for tag in ("iter_0000001", "iter_0000002"):
        (ckpt / tag / "checksums.json").unlink()  # as a save killed before its checksums leaves it
    check_run_dirs(str(ckpt), str(ckpt), verify=False)


@pytest.mark.launch
def test_second_writer_is_refused(corpus: Path, tmp_path: Path) -> None:
    save = tmp_path / "ckpt"
    save.mkdir()
    (save / WRITER_LOCK).write_text(f"{socket.gethostname()} {os.getpid()}\n")  # a live run holds it
    line = refused([*tiny_args(corpus, 4), "--save", str(save), "--load", str(save)], tmp_path)
    assert "being written by another run" in line and str(os.getpid()) in line
    assert (save / WRITER_LOCK).exists(), "another run's lock was removed"


def test_writer_lock_is_exclusive_in_process(tmp_path: Path) -> None:
    with writer_lock(str(tmp_path), holder=True):
        assert (tmp_path / WRITER_LOCK).read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]
        with pytest.raises(CheckpointError, match="being written by another run"):
            with writer_lock(str(tmp_path), holder=True):
                pass
    assert not (tmp_path / WRITER_LOCK).exists()


def test_a_copied_writer_lock_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found 2026-12-07: ``cp -a`` of a running run's folder copied its ``writer.lock``, and a resume of the copy
    was refused as "being written by another run" while the original lived. The lock names the folder it was taken
    for: the copy's lock (a live pid, this host, another folder) is taken over with a warning naming the original;
    one taken for the same folder (here through a link), or an old lock without a folder, still refuses."""
    run, copy, link = tmp_path / "run", tmp_path / "copy", tmp_path / "link"
    run.mkdir()
    link.symlink_to(run)
    with writer_lock(str(run), holder=True):
        shutil.copytree(run, copy)  # the run lives: its lock, this process's, is copied
        with caplog.at_level(logging.WARNING), writer_lock(str(copy), holder=True):
            assert f"copied with its folder from {run.resolve()}" in caplog.text
            assert (copy / WRITER_LOCK).read_text() != (run / WRITER_LOCK).read_text()
        with pytest.raises(CheckpointError, match="being written by another run"):
            with writer_lock(str(link), holder=True):
                pass
    (copy / WRITER_LOCK).write_text(f"{socket.gethostname()} {os.getpid()}\n")  # a lock written before the folder
    with pytest.raises(CheckpointError, match="being written by another run"):
        with writer_lock(str(copy), holder=True):
            pass


# Another process taking writer_lock: it says when it starts, holds the lock until told to let go, and exits 2
# with the refusal's line otherwise.
RIVAL = """
import sys, time
from pathlib import Path
from megamythos.training.checkpointing import CheckpointError, writer_lock
save, marks = sys.argv[1], Path(sys.argv[2])
(marks / "started").touch()
try:
    with writer_lock(save, holder=True):
        (marks / "held").touch()
        while not (marks / "release").exists():
            time.sleep(0.05)
except CheckpointError as err:
    print(err)
    sys.exit(2)
"""


def blocked_in_flock(pid: int) -> bool:
    """Whether process ``pid`` waits for a ``flock`` (a ``->`` line of /proc/locks)."""
    return any(line.split()[1] == "->" and line.split()[5] == str(pid)
               for line in Path("/proc/locks").read_text().splitlines() if len(line.split()) > 5)


def test_two_runs_taking_over_a_stale_writer_lock_do_not_both_hold_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07: two relaunches after a killed run both judged its lock stale; the one that judged first
    unlinked it and took its own, and the other then unlinked that one and took its own, both writing --save (3 of
    20 real races). The race made deterministic: right after this process reads the stale lock, another process
    takes the lock over; it now waits for this one's turn and is refused."""
    from megamythos.training import checkpointing

    save, marks = tmp_path / "ckpt", tmp_path / "marks"
    save.mkdir()
    marks.mkdir()
    (save / WRITER_LOCK).write_text(f"{socket.gethostname()} {dead_pid()}\n")
    rival: list[subprocess.Popen] = []
    read_lock = checkpointing.lock_holder

    def read_then_race(path: Path, given: str) -> tuple[str, str, str]:
        holder = read_lock(path, given)
        if not rival:
            rival.append(subprocess.Popen([sys.executable, "-c", RIVAL, str(save), str(marks)], cwd=REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            wait_for(lambda: (marks / "held").exists() or (marks / "started").exists()
                     and blocked_in_flock(rival[0].pid), rival[0], "the rival to take the lock or wait for it", 60)
        return holder

    monkeypatch.setattr(checkpointing, "lock_holder", read_then_race)
    try:
        with writer_lock(str(save), holder=True):
            assert not (marks / "held").exists(), "two processes hold the writer lock"
            assert (save / WRITER_LOCK).read_text().split()[1] == str(os.getpid())
            rival[0].wait(timeout=60)  # its turn comes while this process holds the lock
    finally:
        (marks / "release").touch()
        out, _ = rival[0].communicate(timeout=60)
    assert rival[0].returncode == 2 and "being written by another run" in out and str(os.getpid()) in out


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x17", b"garbage\n", b"host pid 12\n"])
def test_a_corrupt_writer_lock_is_one_line_naming_it(tmp_path: Path, content: bytes) -> None:
    """Found 2026-12-07: a ``writer.lock`` overwritten with binary bytes was a UnicodeDecodeError traceback, and one
    holding other text was "being written by another run (process  on garbage, ...)"; both name the file now, and
    it is left for the user to judge."""
    (tmp_path / WRITER_LOCK).write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(tmp_path / WRITER_LOCK))} is not a writer lock "
                                              r"\(it holds .*, not 'host pid \[folder\]'\); delete it if no run is "
                                              "writing"):
        with writer_lock(str(tmp_path), holder=True):
            pass
    assert (tmp_path / WRITER_LOCK).read_bytes() == content


@pytest.mark.launch
def test_corrupt_checkpoint_file_is_named(trained: Path, corpus: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "ckpt", ckpt)
    shard = sorted((ckpt / "iter_0000002").glob("*optim_states.pt"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    line = refused([*tiny_args(corpus, 4), "--save", str(ckpt), "--load", str(ckpt)], tmp_path)
    assert str(shard) in line and "corrupt" in line


@pytest.mark.launch
def test_user_error_is_printed_once_by_two_ranks(corpus: Path, tmp_path: Path) -> None:
    """``deepspeed --num_gpus 2 launchers/pretrain.sh``: both ranks find the error, rank 0 alone prints it."""
    args = [*tiny_args(corpus, 4), "--save", str(tmp_path / "new"), "--load", str(tmp_path / "typo")]
    log = tmp_path / "log.txt"
    proc = spawn(deepspeed_command(["--num_gpus", "2", "--master_port", str(free_port())], args), log)
    text = finish(proc, log)
    assert proc.returncode == 2, text[-4000:]
    assert [line for line in text.splitlines() if line.startswith("error: ")] == [
        f"error: --load {tmp_path / 'typo'} does not exist; fix the path, or drop --load to start from scratch"]
    assert "Traceback" not in text


def test_the_bash_launcher_refuses_a_bad_command_line_before_deepspeed_starts(corpus: Path, tmp_path: Path) -> None:
    """``bash launchers/pretrain.sh`` checks the trainer's flags, model, checkpoint directories and layout before it
    starts DeepSpeed: one line, exit 2, and none of DeepSpeed's lines (its launcher repeats the whole command
    after a rank's error)."""
    cases = {"--load typo": (["--load", str(tmp_path / "typo")], f"--load {tmp_path / 'typo'} does not exist"),
             "bad flag": (["--adam-beta1", "2.0"], "--adam-beta1 must lie in [0, 1)"),
             "layout": (["--num-gpus", "2", "--tp", "3"], "is not divisible by tensor-parallel size tp=3")}
    for name, (extra, message) in cases.items():
        cmd = ["bash", str(LAUNCHER), *tiny_args(corpus, 2), "--save", str(tmp_path / "run"), *extra]
        result = subprocess.run(cmd, capture_output=True, text=True, env=launch_env(), timeout=300)
        assert result.returncode == 2, (name, result.stderr[-3000:])
        assert message in one_error_line(result.stderr), name
        assert "exits with return code" not in result.stdout + result.stderr, name
        assert "deepspeed --master_port" not in result.stderr, name  # the runner never started


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs (needs root); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_save_warns_when_the_next_one_cannot_fit(tmp_path, monkeypatch, caplog):
    """Found 2026-12-06 (long-run audit): a filling disk was found only when a save failed; each save now says when
    the room left is less than a checkpoint takes."""
    import shutil

    from megamythos.training.checkpointing import warn_if_the_next_save_cannot_fit

    assert not warn_if_the_next_save_cannot_fit(tmp_path, 1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**10, 10**10 - 500, 500))
    assert warn_if_the_next_save_cannot_fit(tmp_path, 1000)
    assert "0.0005 MB free, less than a checkpoint takes (0.001 MB)" in caplog.text


@pytest.mark.launch
def test_disk_full_during_save(small_disk: Path, corpus: Path, tmp_path: Path) -> None:
    """The disk fills up after the first checkpoint: the run stops with one line saying so, the partial tag is
    removed and ``latest`` still names a complete checkpoint."""
    save = small_disk / "ckpt"
    log = tmp_path / "log.txt"
    proc = start(1, [*tiny_args(corpus, 200), "--save", str(save), "--save-interval", "1", "--keep-last", "100",
                     "--eval-interval", "0"], log)
    wait_for(lambda: (save / "latest").is_file(), proc, "the first checkpoint")
    try:  # take every free byte (on a loaded machine the run's own saves may have taken them before the file opens)
        with open(small_disk / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    text = log.read_text()
    assert proc.returncode == 2, text[-4000:]
    line = one_error_line(text)
    assert "disk full" in line and "still names" in line
    latest = read_latest(save)
    tags = sorted(p.name for p in save.iterdir() if p.name.startswith("iter_"))
    assert tags[-1] == latest, f"partial checkpoint left behind: {tags}, latest {latest}"
    assert not (save / WRITER_LOCK).exists()


@pytest.mark.launch
def test_a_resume_without_room_for_its_next_save_stops_before_training(small_disk: Path, corpus: Path,
                                                                       tmp_path: Path) -> None:
    """Found 2026-12-06 (long-run audit): a run restarted on a disk that a failed save had left with less room than a
    checkpoint (a job requeued after `disk full while saving`) trained to its next save and failed there again,
    every restart. It now stops before its first step, naming the room left; nothing is touched."""
    save, logs = small_disk / "ckpt", tmp_path / "logs"
    args = [*tiny_args(corpus, 2), "--save", str(save), "--load", str(save), "--save-interval", "2",
            "--eval-interval", "0", "--metrics-file", str(logs / "metrics.jsonl"), "--tensorboard-dir", str(logs)]
    first = run_single(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    tag = save / read_latest(save)
    size = sum(p.stat().st_size for p in tag.iterdir())
    with open(small_disk / "filler", "wb") as filler:  # leave half a checkpoint free
        filler.write(b"\0" * (shutil.disk_usage(small_disk).free - size // 2))
    before = {p.name: p.read_bytes() for p in tag.iterdir()}
    again = run_single([*args, "--train-iters", "4", "--use-checkpoint-lr-schedule"], tmp_path)
    assert again.returncode == 2, again.stderr[-3000:]
    line = one_error_line(again.stderr)
    assert "less than a checkpoint takes" in line and "nothing was trained" in line, line
    assert [r["iteration"] for r in metrics(logs / "metrics.jsonl")] == [1, 2]  # no step taken
    assert read_latest(save) == tag.name and {p.name: p.read_bytes() for p in tag.iterdir()} == before


@pytest.mark.launch
def test_a_resume_on_another_layout_without_room_for_the_conversion_is_one_line(small_disk: Path, corpus: Path,
                                                                                tmp_path: Path) -> None:
    """Found 2026-12-06 (long-run audit): resuming on another number of ranks converts the checkpoint into a universal
    one beside it; on a disk without room for it the user got `error: ds_to_universal failed on ...:` followed by the
    converter's tracebacks (`basic_ios::clear`), and the other rank's DistNetworkError traceback (167 lines, no word
    of a full disk). Now one line from rank 0 (the others are told its outcome); the temporary folder is removed."""
    save, logs = small_disk / "ckpt", tmp_path / "logs"
    args = [*tiny_args(corpus, 2), "--save", str(save), "--save-interval", "2", "--eval-interval", "0",
            "--metrics-file", str(logs / "metrics.jsonl"), "--tensorboard-dir", str(logs)]
    first = run_single(args, tmp_path)  # the checkpoint to resume from: one process, as the test above
    assert first.returncode == 0, first.stderr[-3000:]
    tag = save / read_latest(save)
    size = sum(p.stat().st_size for p in tag.iterdir())
    with open(small_disk / "filler", "wb") as filler:  # room for half the checkpoint, not for its conversion
        filler.write(b"\0" * (shutil.disk_usage(small_disk).free - size // 2))
    text = run(2, [*args, "--train-iters", "4", "--use-checkpoint-lr-schedule"], tmp_path / "again.txt", expect_rc=2)
    line = one_error_line(text)
    assert f"disk full while converting {tag} to a universal checkpoint in {save}" in line, line
    assert sorted(p.name for p in save.iterdir() if "universal" in p.name) == [], "the conversion's folder stayed"


@pytest.mark.launch
def test_a_file_size_limit_during_save_is_one_line(corpus: Path, tmp_path: Path) -> None:
    """A quota or file-size limit reaches torch's serializer as ``RuntimeError: ... unexpected pos``: found
    2026-12-06 it was a 40-line traceback with exit 1, the partial tag stayed, and the launcher advised the same
    command again."""
    import resource

    save, log = tmp_path / "ckpt", tmp_path / "log.txt"
    proc = start(1, [*tiny_args(corpus, 200), "--save", str(save), "--save-interval", "1", "--keep-last", "100",
                     "--eval-interval", "0"], log)
    wait_for(lambda: (save / "latest").is_file(), proc, "the first checkpoint")
    rank = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                if " -m megamythos.training.pretrain" in " ".join(p.cmdline()))
    resource.prlimit(rank.pid, resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))  # its log and metrics stay below
    text = finish(proc, log)
    assert proc.returncode == 2, text[-4000:]
    line = one_error_line(text)
    assert "write failed (a disk quota or file-size limit?) while saving" in line and "still names" in line, line
    tags = sorted(p.name for p in save.iterdir() if p.name.startswith("iter_"))
    assert tags[-1] == read_latest(save), f"partial checkpoint left behind: {tags}"


@pytest.mark.launch
def test_save_folder_made_read_only_during_the_run(small_disk: Path, corpus: Path, tmp_path: Path) -> None:
    """The checkpoint folder turns read-only after the first checkpoint (a remount after I/O errors): one line
    saying the folder is not writable and which checkpoint ``latest`` still names, exit 2. Found 2026-12-06:
    torch's ``Parent directory ... does not exist`` tracebacks (DeepSpeed only logs its failed makedirs) and an
    OSError traceback from removing the writer lock."""
    save = small_disk / "ckpt"
    log = tmp_path / "log.txt"
    proc = start(1, [*tiny_args(corpus, 200), "--save", str(save), "--save-interval", "2", "--eval-interval", "0",
                     "--tensorboard-dir", str(tmp_path / "tb"), "--metrics-file", str(tmp_path / "metrics.jsonl")], log)
    wait_for(lambda: (save / "latest").is_file(), proc, "the first checkpoint")
    subprocess.run(["mount", "--bind", str(save), str(save)], check=True)  # the open files stay writable
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(save)], check=True)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        subprocess.run(["umount", "-l", str(save)], check=False)
    text = log.read_text()
    assert proc.returncode == 2, text[-4000:]
    line = one_error_line(text)
    assert f"{save} not writable while saving" in line and f"still names {read_latest(save)}" in line, line
    assert "Traceback" not in text, text[-4000:]


@pytest.mark.parametrize("target", ["launcher", "process group", "process group, SIGHUP"])
@pytest.mark.launch
def test_sigterm_to_the_launcher_saves_once_and_exits_zero(target: str, corpus: Path, tmp_path: Path) -> None:
    """``bash launchers/pretrain.sh`` (2 ranks) gets SIGTERM alone or with its whole process group, or the group
    gets SIGHUP (a closed terminal; found 2026-12-06: it killed the ranks unsaved): every rank stops at the same
    iteration, one checkpoint is saved, the launcher waits for it and exits 0, no rank is left. DeepSpeed's
    launch.py is never signalled (it would kill ranks that are still saving 30 s later)."""
    save, log, metrics_file = tmp_path / "ckpt", tmp_path / "log.txt", tmp_path / "metrics.jsonl"
    proc = start(2, [*tiny_args(corpus, 500), "--save", str(save), "--metrics-file", str(metrics_file),
                     "--eval-interval", "0"], log)
    wait_for(lambda: bool(metrics(metrics_file)), proc, "the first iteration")
    if target == "launcher":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGHUP if target.endswith("SIGHUP") else signal.SIGTERM)
    text = finish(proc, log)
    assert proc.returncode == 0, text[-4000:]
    assert text.count("saved checkpoint") == 1 and "stopping at iteration" in text
    assert "deepspeed exited with code 0" in text, "DeepSpeed's launch.py got the signal (it then exits 1)"
    assert read_latest(save) == f"iter_{metrics(metrics_file)[-1]['iteration']:07d}"
    left = [p for p in psutil.process_iter(["cmdline"]) if str(save) in " ".join(p.info["cmdline"] or [])]
    assert not left, f"orphaned processes: {left}"


def ranks_of(save: Path) -> list[psutil.Process]:
    """Live processes (launchers or ranks) of the run that saves to ``save``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if str(save) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


@pytest.mark.parametrize("case", ["SIGTERM to the deepspeed runner", "kill -9 of the bash launcher",
                                  "SIGTERM to the runner under the bash launcher",
                                  "kill -9 of launch.py under the bash launcher"])
@pytest.mark.launch
def test_ranks_that_lose_their_launcher_save_once_and_exit(case: str, corpus: Path, tmp_path: Path) -> None:
    """``deepspeed --num_gpus 2 launchers/pretrain.sh``: DeepSpeed's runner dies of a SIGTERM at once, without
    telling its ranks; ``bash launchers/pretrain.sh`` killed with kill -9 cannot tell them. Either way every rank
    notices that its launcher ended, saves one checkpoint at the same iteration and exits; nothing is left. Under
    ``bash launchers/pretrain.sh``, a SIGTERM to its deepspeed runner alone ends the launcher with exit code 0
    once the ranks saved (it exited 241, the runner's -SIGTERM)."""
    save, log, metrics_file = tmp_path / "ckpt", tmp_path / "log.txt", tmp_path / "metrics.jsonl"
    args = [*tiny_args(corpus, 500), "--save", str(save), "--metrics-file", str(metrics_file), "--eval-interval", "0"]
    if case == "SIGTERM to the deepspeed runner":
        proc = spawn(deepspeed_command(["--num_gpus", "2", "--master_port", str(free_port())], args), log)
    else:
        proc = start(1, args, log)
    wait_for(lambda: bool(metrics(metrics_file)), proc, "the first iteration")
    if case.endswith("under the bash launcher"):
        runner = next(c for c in psutil.Process(proc.pid).children() if "deepspeed" in " ".join(c.cmdline()))
        if case.startswith("SIGTERM"):
            runner.send_signal(signal.SIGTERM)
        else:  # the runner then exits 0 at once; the launcher returned with the ranks still running (2026-12-06)
            next(c for c in runner.children() if "deepspeed.launcher.launch" in " ".join(c.cmdline())).kill()
        assert proc.wait() == 0, log.read_text()[-4000:]
        assert not ranks_of(save), "the launcher returned before its ranks ended"
    else:
        os.kill(proc.pid, signal.SIGTERM if case.startswith("SIGTERM") else signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 300
    while ranks_of(save) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = ranks_of(save)
    for p in left:
        p.kill()
    text = log.read_text()
    assert not left, f"processes left running: {left}\n{text[-4000:]}"
    assert text.count("saved checkpoint") == 1 and "stopping at iteration" in text, text[-4000:]
    if case != "SIGTERM to the runner under the bash launcher":  # there launch.py passes the SIGTERM on
        assert "launcher process" in text and "ended: will save a checkpoint" in text
    assert read_latest(save) == f"iter_{metrics(metrics_file)[-1]['iteration']:07d}"


@pytest.mark.launch
def test_ranks_killed_with_their_launch_py_are_not_a_finished_run(corpus: Path, tmp_path: Path) -> None:
    """``kill -9`` of DeepSpeed's launch.py and its rank together (as the OOM killer or a node agent may do): the
    runner exits 0 for a launch.py killed by a signal, so ``bash launchers/pretrain.sh`` exited 0 without a line.
    The rank's exit record is missing: the launcher says so in one line and exits 1."""
    save, log, metrics_file = tmp_path / "ckpt", tmp_path / "log.txt", tmp_path / "metrics.jsonl"
    args = [*tiny_args(corpus, 500), "--save", str(save), "--metrics-file", str(metrics_file), "--eval-interval", "0",
            "--save-interval", "2"]
    proc = start(1, args, log)
    wait_for(lambda: read_latest(save) is not None if save.is_dir() else False, proc, "the first checkpoint")
    runner = next(c for c in psutil.Process(proc.pid).children() if "deepspeed" in " ".join(c.cmdline()))
    for p in runner.children(recursive=True):  # launch.py and the rank
        p.kill()
    text = finish(proc, log)
    assert proc.returncode == 1, text[-4000:]
    line = next(line for line in text.splitlines() if "deepspeed exited with code 0" in line)
    assert "rank 0 ended without finishing" in line and "resumes with the same command" in line, line


@pytest.mark.launch
def test_master_port_in_use_is_one_line(corpus: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "megamythos.training.pretrain", *tiny_args(corpus, 2)],
                                capture_output=True, text=True, cwd=tmp_path, timeout=600,
                                env={**launch_env(), "MASTER_PORT": str(port)})
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"--master-port {port} is in use" in one_error_line(result.stderr)


@pytest.mark.launch
@pytest.mark.distributed
def test_a_rank_killed_with_sigkill_is_named_by_the_survivor_in_one_line(corpus: Path, tmp_path: Path) -> None:
    """``kill -9`` of rank 1 of 2: rank 0's next collective fails (gloo: connection closed by peer); it prints one
    line naming the dead rank and the checkpoint the job resumes from, not gloo's traceback."""
    save, log, metrics_file = tmp_path / "ckpt", tmp_path / "log.txt", tmp_path / "metrics.jsonl"
    args = [*tiny_args(corpus, 500), "--save", str(save), "--metrics-file", str(metrics_file), "--eval-interval", "0",
            "--save-interval", "2"]
    proc = start(2, args, log)
    wait_for(lambda: read_latest(save) is not None if save.is_dir() else False, proc, "the first checkpoint")
    rank1 = next(p for p in ranks_of(save) if p.environ().get("RANK") == "1" and "pretrain" in " ".join(p.cmdline()))
    latest = read_latest(save)
    rank1.kill()
    text = finish(proc, log)
    assert proc.returncode != 0
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith("error: rank 0: rank 1 ended during a collective"), text[-4000:]
    tag = read_latest(save)
    assert f"--load {save} resumes from " in lines[0] and tag >= latest and tag in lines[0]
    assert "Traceback" not in text, text[-4000:]
    assert "deepspeed exited with code" in text and "exits with return code" not in text, text[-4000:]


@pytest.mark.launch
@pytest.mark.distributed
def test_a_stuck_rank_is_reported_after_the_distributed_timeout(corpus: Path, tmp_path: Path) -> None:
    """Rank 1 of 2 stops (SIGSTOP: a hung rank, as a stuck file system or driver leaves it): rank 0's next
    collective gives up after ``--distributed-timeout-minutes`` (here 0.2) and prints one line saying so and where
    the job resumes, not gloo's traceback; without the flag DeepSpeed's default is 10 minutes."""
    save, log = tmp_path / "ckpt", tmp_path / "log.txt"
    args = [*tiny_args(corpus, 500), "--save", str(save), "--eval-interval", "0", "--save-interval", "2",
            "--distributed-timeout-minutes", "0.2"]
    proc = start(2, args, log)
    wait_for(lambda: read_latest(save) is not None if save.is_dir() else False, proc, "the first checkpoint")
    rank1 = next(p for p in ranks_of(save) if p.environ().get("RANK") == "1" and "pretrain" in " ".join(p.cmdline()))
    rank1.suspend()
    try:  # once rank 0 has said it, the stopped rank goes (DeepSpeed's SIGTERM would wait for it to run again)
        wait_for(lambda: "error: " in log.read_text(), proc, "rank 0's line", timeout=180)
    finally:
        rank1.kill()
    text = finish(proc, log, timeout=180)
    assert proc.returncode not in (0, None, -9), text[-4000:]
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(
        "error: rank 0: a collective waited 0.2 minutes (--distributed-timeout-minutes) for another rank"), text[-4000:]
    assert f"--load {save} resumes from {read_latest(save)}" in lines[0]
    assert "Traceback" not in text, text[-4000:]


LEAVES_AT_START_UP = '''"""Rank 1 ends once the process group is up; rank 0 then makes a group of both, as DeepSpeed."""
import sys
import torch.distributed as dist
from megamythos.training.pretrain import init_distributed
from megamythos.training.signals import collective_failure
rank, world = init_distributed(0.1)
if rank == 1:
    sys.exit(0)
try:
    dist.new_group([0, 1])
except RuntimeError as err:
    print(collective_failure(err, None, None, 0.1), flush=True)
'''


@pytest.mark.distributed
def test_a_rank_that_ends_at_start_up_does_not_leave_the_others_waiting_half_an_hour(tmp_path: Path) -> None:
    """Found 2026-12-07 (two nodes on one host, node 1 given a --data-path it lacks): rank 1 ended at start-up and
    rank 0 waited in DeepSpeed's next new_group for it, 30 minutes (torch's gloo default for a group made without
    a timeout; 10 on NCCL), whatever --distributed-timeout-minutes said, with no line. Now groups take the run's
    timeout (here 0.1 minutes) and rank 0 says in one line what it waited for."""
    script = tmp_path / "leaves.py"
    script.write_text(LEAVES_AT_START_UP)
    env = {**launch_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        out = [rank.communicate(timeout=120)[0] for rank in ranks]  # before: rank 0 was still waiting here
    finally:
        for rank in ranks:
            rank.kill()
    assert [rank.returncode for rank in ranks] == [0, 0], out
    assert out[0].splitlines()[-1] == (
        "rank 0: a process group waited 0.1 minutes (--distributed-timeout-minutes) for a rank that did not join it: "
        "it ended during start-up (its error is in its node's output) or is stuck; the job cannot continue. Run the "
        "same command again (it ran without --save)"), out[0][-3000:]


@pytest.mark.launch
def test_a_default_corpus_run_resumed_after_a_python_upgrade_keeps_its_corpus_and_is_told_it(tmp_path: Path) -> None:
    """A run trained on the default corpus, resumed after a Python upgrade (another standard library: the
    manifest of the corpus differs). Found 2026-12-08: the corpus was built again in place, with another tokenizer,
    so the resume was refused (``trained with tokenizer A but the data uses B``) with its corpus gone. The old
    corpus stays; the resume, which gets the new Python's corpus built beside it, is refused in one line naming the
    data it trained on and the flag that reads it. The old corpus: 20 of the tests' corpus' 30 files (another
    Python's stdlib) under the default corpus' name for 30."""
    (tmp_path / "older_python").mkdir()
    files = [tmp_path / "older_python" / f"{i:02d}.py" for i in range(20)]
    for path, text in zip(files, corpus_texts()):
        path.write_text(text)
    data_dir = tmp_path / "default"
    old, _ = ensure_source_dataset([str(f) for f in files], str(data_dir / f"stdlib_v{VOCAB}_n30"), VOCAB)
    kept = {suffix: Path(old + suffix).read_bytes() for suffix in (".bin", ".idx")}
    run = ["--save", str(tmp_path / "run"), "--save-interval", "2"]
    first = run_single([*tiny_args(data_dir, 2), *run], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    flags = tiny_args(data_dir, 4)
    del flags[flags.index("--data-path"):flags.index("--data-path") + 2]
    resumed = run_single([*flags, *run, "--load", str(tmp_path / "run"), "--use-checkpoint-lr-schedule",
                          "--default-data-dir", str(data_dir), "--default-data-max-files", "30"], tmp_path)
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert one_error_line(resumed.stderr).endswith(f"; it trained on {old}: resume it with --data-path {old}")
    assert {suffix: Path(old + suffix).read_bytes() for suffix in kept} == kept


@pytest.mark.launch
def test_resume_on_a_dataset_rebuilt_under_its_prefix_says_so(corpus: Path, tmp_path: Path) -> None:
    """A dataset rebuilt from other text under the same prefix was resumed on (and evaluated on) without a word,
    the samples after the checkpoint no longer those the run would have read; each tag's train_args.json now
    records every dataset's shape next to its data path."""
    source = corpus_prefix(corpus)
    data = str(tmp_path / "data" / "corpus_text_document")
    documents = len(merge_datasets([source], data).document_indices) - 1  # a copy the test may rebuild
    run = ["--data-path", data, "--save", str(tmp_path / "run"), "--save-interval", "2"]
    first = run_single([*tiny_args(corpus, 2), *run], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    extend = ["--load", str(tmp_path / "run"), "--use-checkpoint-lr-schedule"]  # a longer run, the same LR curve
    again = run_single([*tiny_args(corpus, 3), *run, *extend], tmp_path)
    assert again.returncode == 0 and "the data changed" not in again.stderr, again.stderr[-3000:]
    # the run folder copied to another machine, whose copy of the data lies under another prefix: the same bytes
    # read on in the run's order (found 2026-12-07: "The run reads another sample order ..."); other bytes of the
    # same shape (its documents in another order) are told apart by the tokens of the next samples
    (tmp_path / "elsewhere").mkdir()
    for suffix in (".bin", ".idx", ".json", ".tokenizer.model"):
        shutil.copy2(data + suffix, tmp_path / "elsewhere" / f"corpus_text_document{suffix}")
    reordered = reversed_corpus(data, tmp_path / "elsewhere")
    for name, prefix, other_tokens in (("copy", str(tmp_path / "elsewhere" / "corpus_text_document"), False),
                                       ("reordered", reordered, True)):
        copy = str(shutil.copytree(tmp_path / "run", tmp_path / name))
        resumed = run_single([*tiny_args(corpus, 4), "--data-path", prefix, "--save", copy, "--load", copy,
                              "--save-interval", "2", "--use-checkpoint-lr-schedule"], tmp_path)
        assert resumed.returncode == 0 and read_latest(copy) == "iter_0000004", resumed.stderr[-3000:]
        assert f"the data path changed since {copy} was saved: {data} -> {prefix}, datasets of the sequences, " \
            "documents and tokens it recorded" in resumed.stderr, resumed.stderr[-3000:]
        assert "the data settings differ" not in resumed.stderr and "another sample order" not in resumed.stderr
        assert ("but they hold other tokens: the samples from iteration 3 on" in resumed.stderr) == other_tokens
    assert read_latest(tmp_path / "run") == "iter_0000003"
    merge_datasets([source, source], data, overwrite=True)  # rebuilt under the same prefix: twice the documents
    change = f"{os.path.realpath(data)} (sequences {documents} -> {2 * documents}, documents {documents} -> "
    tag = tmp_path / "run" / "iter_0000003"
    evaluated = cli(["-m", "megamythos.inference.evaluate", "--load", str(tag), "--loops", "1", "--eval-iters", "1",
                     "--micro-batch-size", "1", "--exit-threshold", "0"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"the data changed since {tag} was saved: {change}" in evaluated.stderr
    rebuilt = run_single([*tiny_args(corpus, 4), *run, *extend], tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert f"the data changed since {tmp_path / 'run'} was saved: {change}" in rebuilt.stderr
