"""Integrity: every checkpoint tag and export carries ``checksums.json``; every reader (resume, evaluate, generate,
export, the universal conversion of an elastic resume, ``load_exported``) verifies it and refuses a changed file
in one line naming the file and the newest tag that still verifies (exit code 2). Exports never overwrite.

One launch trains the checkpoint every test copies: 2 iterations with the default ZeRO-3, a tag each, so a tag
holds a model-states file and an optimizer-states file (fp32 master weights and Adam moments). Corruption is 4 KiB
inverted in the middle of a file: its size is unchanged and it stays a complete zip archive for torch.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megamythos.checkpoint.checksums import CHECKSUMMED_KEY, CHECKSUMS_FILE, shares, verify_checksums, write_checksums
from megamythos.checkpoint.export import ExportError, export_model
from megamythos.checkpoint.export import main as export_main
from megamythos.checkpoint.files import CheckpointError, read_latest
from megamythos.checkpoint.reader import load_exported, resolve_tag_dir
from megamythos.inference.evaluate import main as evaluate_main
from megamythos.inference.generate import main as generate_main
from megamythos.inference.loading import load_model
from megamythos.model.config import ModelConfig
from megamythos.model.lm import MythosLM
from megamythos.training.checkpointing import CheckpointManager, check_run_dirs, universal_tag
from tests.helpers import (
    dead_pid,
    free_port,
    launch_env,
    one_error_line,
    run,
    run_single,
    small_config,
    tiny_args,
    trains,
)

GOOD, LATEST_TAG = "iter_0000001", "iter_0000002"
FILES = {"model states": "*model_states.pt", "optimizer states": "*optim_states.pt"}


@pytest.fixture(scope="module")
@trains
def saved(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """The ``--save`` directory of a 1-rank, 2-iteration run (tags iter_0000001 and iter_0000002). Read-only."""
    out = tmp_path_factory.mktemp("integrity")
    run(1, [*tiny_args(corpus, 2), "--save", str(out / "ckpt"), "--save-interval", "1"], out / "log.txt")
    return out / "ckpt"


def copy_of(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "ckpt"))


def corrupt(path: Path) -> Path:
    """Invert 4 KiB in the middle of ``path`` (size unchanged); returns ``path``."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - 2048)
    data[start:start + 4096] = bytes(b ^ 0xFF for b in data[start:start + 4096])
    path.write_bytes(bytes(data))
    return path


def corrupt_one(ckpt: Path, which: str, tag: str = LATEST_TAG) -> Path:
    return corrupt(next((ckpt / tag).glob(FILES[which])))


def error_line(code: int, stderr: str) -> str:
    """The one ``error:`` line of a command that exited 2 without a traceback."""
    assert code == 2, stderr[-3000:]
    return one_error_line(stderr)


@pytest.mark.launch
def test_every_tag_lists_every_file_it_holds(saved: Path) -> None:
    """Each tag's checksums list every file in it, and the save's log line gives its time and size (what
    --exit-duration-in-mins and --save-interval are chosen from)."""
    assert read_latest(saved) == LATEST_TAG
    log = (saved.parent / "log.txt").read_text()
    for tag in (GOOD, LATEST_TAG):
        manifest = json.loads((saved / tag / CHECKSUMS_FILE).read_text())
        on_disk = {p.name: p.stat().st_size for p in (saved / tag).iterdir() if p.name != CHECKSUMS_FILE}
        assert manifest["algorithm"] == "sha256"
        assert {name: entry["size"] for name, entry in manifest["files"].items()} == on_disk
        assert {"model_config.json", "train_args.json", "rng_rank0.pt"} <= set(on_disk)
        assert all(any(Path(name).match(pattern) for name in on_disk) for pattern in FILES.values())
        assert verify_checksums(saved / tag)
        megabytes = sum(on_disk.values()) / 1e6
        assert re.search(rf"saved checkpoint {re.escape(str(saved / tag))} in [0-9.]+ s \({megabytes:.1f} MB; "
                         r"checksums [0-9.]+ s\)", log), log[-2000:]


@pytest.mark.parametrize("which", FILES)
@pytest.mark.parametrize("reader", ["evaluate", "generate", "export"])
@pytest.mark.launch
def test_readers_refuse_a_corrupt_file_naming_it_and_the_last_good_tag(reader: str, which: str, saved: Path,
                                                                        tmp_path: Path, capsys) -> None:
    ckpt = copy_of(saved, tmp_path)
    bad = corrupt_one(ckpt, which)
    argv = {"evaluate": (evaluate_main, ["--load", str(ckpt), "--loops", "1", "--eval-iters", "1"]),
            "generate": (generate_main, ["--load", str(ckpt), "--prompt", "def", "--max-new-tokens", "2"]),
            "export": (export_main, [str(ckpt), str(tmp_path / "out")])}
    main, args = argv[reader]
    code = main(args)
    line = error_line(code, capsys.readouterr().err)
    assert f"{bad} is corrupt" in line and f"newest tag that verifies is {GOOD}" in line, line
    assert not (tmp_path / "out").exists(), "a refused export left its directory"


@pytest.mark.launch
def test_export_says_when_no_tag_verifies(saved: Path, tmp_path: Path, capsys) -> None:
    ckpt = copy_of(saved, tmp_path)
    corrupt_one(ckpt, "optimizer states")
    corrupt_one(ckpt, "model states", tag=GOOD)
    line = error_line(export_main([str(ckpt), str(tmp_path / "out")]), capsys.readouterr().err)
    assert "optim_states.pt is corrupt" in line and f"no other tag of {ckpt} verifies" in line, line


def test_a_checkpoint_file_that_cannot_be_read_is_a_problem_every_rank_refuses_alike(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """Found 2026-12-07 (distributed audit): an OSError while hashing (an I/O error of a failing disk) ended the
    rank hashing that file with a traceback before the ranks compared their findings, so the others failed on the
    lost peer. It is now a problem like a changed file, gathered and refused by every rank in one line."""
    import megamythos.data.manifest as manifest

    for name, data in (("a.pt", b"a" * 10), ("b.pt", b"b" * 20)):
        (tmp_path / name).write_bytes(data)
    write_checksums(tmp_path)
    hash_file = manifest.file_sha256

    def failing(path):
        if Path(path).name == "b.pt":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return hash_file(path)

    monkeypatch.setattr(manifest, "file_sha256", failing)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'b.pt'} cannot be read (Input/output error)")):
        verify_checksums(tmp_path)


def test_shares_give_each_file_to_one_rank_and_balance_the_bytes() -> None:
    sizes = {f"f{i}": size for i, size in enumerate([900, 10, 500, 500, 7, 300, 300, 1, 0])}
    parts = shares(sizes, 3)
    assert sorted(name for part in parts for name in part) == sorted(sizes)
    loads = [sum(sizes[name] for name in part) for part in parts]
    assert max(loads) <= sum(sizes.values()) / 3 + max(sizes.values()) and loads == [900, 810, 808]
    assert shares(sizes, 1) == [sorted(sizes, key=lambda n: (-sizes[n], n))]
    assert shares({"a": 5}, 4) == [["a"], [], [], []]


TEAM_RANK = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from megamythos.checkpoint import checksums
from megamythos.training.checkpointing import team

dist.init_process_group("gloo")
hashed = []
sha256 = checksums.file_sha256
checksums.file_sha256 = lambda path: hashed.append(path.name) or sha256(path)
directory, report = Path(sys.argv[1]), Path(sys.argv[2])
checksums.write_checksums(directory, team())
dist.barrier()
written = list(hashed)
listed = json.loads((directory / checksums.CHECKSUMS_FILE).read_text())["files"]
target = directory / checksums.shares({n: e["size"] for n, e in listed.items()}, 2)[1][0]
if dist.get_rank() == 0:  # flip 4 KiB of the largest file rank 1 hashes: only rank 1 can find it
    data = bytearray(target.read_bytes())
    data[100:4196] = bytes(b ^ 0xFF for b in data[100:4196])
    target.write_bytes(bytes(data))
dist.barrier()
try:
    checksums.verify_checksums(directory, team())
    refusal = None
except checksums.ChecksumError as err:
    refusal = str(err)
report.write_text(json.dumps({"written": written, "refusal": refusal, "target": str(target)}))
dist.barrier()  # without it, torch 2.6's gloo hung in destroy_process_group on both ranks
dist.destroy_process_group()
"""


@pytest.mark.launch
def test_ranks_hash_their_own_share_of_a_checkpoint(saved: Path, tmp_path: Path) -> None:
    """Two ranks (torch.distributed on gloo) write a tag's checksums together: each hashes its share, the
    manifest equals one process's, and a file changed afterwards in rank 1's share is refused on both ranks
    alike."""
    tag = Path(shutil.copytree(saved / LATEST_TAG, tmp_path / "tag"))
    alone = json.loads((tag / CHECKSUMS_FILE).read_text())
    (tag / CHECKSUMS_FILE).unlink()
    script = tmp_path / "rank.py"
    script.write_text(TEAM_RANK)
    env = {**launch_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tag), str(tmp_path / f"rank{r}.json")],
                              env={**env, "RANK": str(r)}) for r in (0, 1)]
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:  # a rank that hangs is not left running after the test
        for p in procs:
            p.kill()
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert json.loads((tag / CHECKSUMS_FILE).read_text()) == alone
    written = [set(r["written"]) for r in reports]
    assert all(written) and not written[0] & written[1]
    assert written[0] | written[1] == set(alone["files"])
    target = Path(reports[0]["target"])
    assert target.name in written[1]
    assert reports[0]["refusal"] == reports[1]["refusal"] == f"{target} is corrupt: its sha256 differs from " \
        f"{tag / CHECKSUMS_FILE}"


@pytest.mark.parametrize("which", FILES)
@pytest.mark.launch
def test_resume_refuses_a_corrupt_file_before_start_up(which: str, saved: Path, corpus: Path,
                                                       tmp_path: Path) -> None:
    """Model states: a 2-rank launch, where the ranks verify the tag together once torch.distributed runs, each
    hashing its share, and rank 0's refusal is the only line the user sees. Optimizer states: the trainer in one
    process, refused before the process group starts."""
    ckpt = copy_of(saved, tmp_path)
    bad = corrupt_one(ckpt, which)
    args = [*tiny_args(corpus, 4), "--save", str(ckpt), "--load", str(ckpt)]
    if which == "model states":
        text = run(2, args, tmp_path / "log.txt", expect_rc=2)
        line = error_line(2, text)
        assert "exits with return code" not in text, "DeepSpeed's line repeating the command follows ours"
    else:
        result = run_single(args, tmp_path)
        line = error_line(result.returncode, result.stderr)
        assert "Initializing TorchBackend" not in result.stderr, "refused only after the process group started"
    assert f"{bad} is corrupt" in line and f"newest tag that verifies is {GOOD}" in line, line
    assert read_latest(ckpt) == LATEST_TAG and not list(ckpt.glob("iter_0000003*"))


def saved_before_checksums(saved: Path, tmp_path: Path) -> Path:
    """A copy of ``saved`` as a run saved before checksums existed: no tag holds a manifest, or a mark of one in
    its train record."""
    ckpt = copy_of(saved, tmp_path)
    for tag in (GOOD, LATEST_TAG):  # every tag of such a run
        (ckpt / tag / CHECKSUMS_FILE).unlink()
        record_file = ckpt / tag / "train_args.json"
        record = json.loads(record_file.read_text())
        del record[CHECKSUMMED_KEY]
        record_file.write_text(json.dumps(record))
    return ckpt


@pytest.mark.launch
def test_a_tag_without_checksums_still_loads_with_a_warning(saved: Path, tmp_path: Path, caplog) -> None:
    """Tags saved before checksums existed (no manifest, and no mark of one in their train record): resume's
    check, evaluate/generate's loading and export accept them."""
    ckpt = saved_before_checksums(saved, tmp_path)
    with caplog.at_level(logging.WARNING):
        check_run_dirs(str(ckpt), str(ckpt))
        assert load_model(ckpt).source == ckpt / LATEST_TAG
        assert export_main([str(ckpt), str(tmp_path / "out")]) == 0
    warnings = [r.getMessage() for r in caplog.records if CHECKSUMS_FILE in r.getMessage()]
    assert len(warnings) == 3 and all("not verified" in w for w in warnings), warnings
    assert verify_checksums(tmp_path / "out")


@pytest.mark.launch
def test_a_tag_without_checksums_missing_its_optimizer_states_is_said_to_miss_them(saved: Path, tmp_path: Path,
                                                                                   capsys) -> None:
    """Found 2026-12-07 (audit): a tag saved before checksums existed (nothing lists its files) whose ZeRO optimizer
    shards are gone was refused by export as ``a ZeRO-0 tensor-parallel checkpoint; train with ZeRO >= 1``, a cause
    it does not have; the stage its train record holds (or its ZeRO-3 model-states files tell) says what is
    missing."""
    ckpt = saved_before_checksums(saved, tmp_path)
    shards = sorted(p.name for p in (ckpt / LATEST_TAG).glob(FILES["optimizer states"]))
    assert shards
    for name in shards:
        (ckpt / LATEST_TAG / name).unlink()
    line = error_line(export_main([str(ckpt), str(tmp_path / "out")]), capsys.readouterr().err)
    assert f"{ckpt / LATEST_TAG} lacks its ZeRO optimizer states" in line and "tensor-parallel" not in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.launch
def test_a_reader_whose_tag_a_running_trainer_prunes_reads_the_newest_again(saved: Path, tmp_path: Path,
                                                                             monkeypatch, caplog, capsys) -> None:
    """evaluate, generate and export of a run that saves with --keep-last: the tag they read can go while they
    read it (found 2026-12-06: a FileNotFoundError traceback from the hashing, or DeepSpeed's ds_to_universal
    traceback). The trainer's side is played here: a newer tag saved, ``latest`` moved, the tag read removed."""
    import megamythos.checkpoint.reader as reader

    ckpt = copy_of(saved, tmp_path)
    verify, prunes = reader.verify_tag, [2]

    def trainer_saves_and_prunes(tag_dir: Path, *args) -> None:
        if prunes[0] and read_latest(tag_dir.parent) == tag_dir.name:
            prunes[0] -= 1
            newer = f"iter_{int(tag_dir.name.split('_')[1]) + 1:07d}"
            shutil.copytree(tag_dir, tag_dir.parent / newer)
            (tag_dir.parent / "latest").write_text(newer)
            shutil.rmtree(tag_dir)
        verify(tag_dir, *args)

    monkeypatch.setattr(reader, "verify_tag", trainer_saves_and_prunes)
    with caplog.at_level(logging.WARNING):
        assert load_model(ckpt).source == ckpt / "iter_0000004"  # iter 2 and then iter 3 were pruned as read
    assert caplog.text.count("was removed while it was read (its run's --keep-last); reading the newest") == 2
    prunes[0] = 1
    with pytest.raises(CheckpointError, match=r"iter_0000004 was removed while it was read .* pass a tag the run "
                                              r"keeps, or the run directory"):
        load_model(ckpt / "iter_0000004")
    prunes[0] = 3
    assert export_main([str(ckpt), str(tmp_path / "out")]) == 2  # pruned at every read: one line
    assert "was removed while it was read, 3 times" in one_error_line(capsys.readouterr().err)


@pytest.mark.launch
def test_a_tag_pruned_after_its_weights_were_read_is_read_again_whole(saved: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """Found 2026-12-06: only the weights were read again; the tokenizer and records, read after them, were gone:
    evaluate said the tag "carries no tokenizer", and export wrote one without it, exit 0."""
    import megamythos.checkpoint.export as export_module
    import megamythos.inference.loading as loading

    ckpt = copy_of(saved, tmp_path)

    def pruned_after(read):  # the trainer saves a newer tag and prunes this one right after its weights are read
        def wrapped(tag_dir: Path, *args):
            result = read(tag_dir, *args)
            if read_latest(tag_dir.parent) == tag_dir.name and tag_dir.name != "iter_0000004":
                newer = f"iter_{int(tag_dir.name.split('_')[1]) + 1:07d}"
                shutil.copytree(tag_dir, tag_dir.parent / newer)
                (tag_dir.parent / "latest").write_text(newer)
                shutil.rmtree(tag_dir)
            return result
        return wrapped

    monkeypatch.setattr(loading, "load_checkpoint_weights", pruned_after(loading.load_checkpoint_weights))
    loaded = load_model(ckpt)
    assert loaded.source == ckpt / "iter_0000004" and loaded.tokenizer.vocab_size > 0
    ckpt = copy_of(saved, tmp_path / "again")
    monkeypatch.setattr(export_module, "checkpoint_model", pruned_after(export_module.checkpoint_model))
    assert export_main([str(ckpt), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tokenizer.model").is_file() and verify_checksums(tmp_path / "out")


def refusal_line(reader: str, ckpt: Path, tmp_path: Path, capsys) -> str:
    """The one line with which ``reader`` (a resume's start-up check, ``evaluate`` or ``export`` into
    ``tmp_path/out``) refuses the run folder ``ckpt``."""
    if reader == "resume":
        with pytest.raises(CheckpointError) as err:
            check_run_dirs(str(ckpt), str(ckpt))
        return str(err.value)
    main, args = {"evaluate": (evaluate_main, ["--load", str(ckpt), "--loops", "1", "--eval-iters", "1"]),
                  "export": (export_main, [str(ckpt), str(tmp_path / "out")])}[reader]
    return error_line(main(args), capsys.readouterr().err)


@pytest.mark.launch
@pytest.mark.parametrize("reader", ["resume", "evaluate", "export"])
def test_a_tag_whose_checksums_were_lost_is_refused(reader: str, saved: Path, tmp_path: Path, capsys) -> None:
    """Found 2026-12-06: a deleted ``checksums.json`` made a tag pass for one saved before checksums existed, so a
    flipped byte beside it loaded with a warning. A tag saved with a manifest says so in its train record."""
    ckpt = copy_of(saved, tmp_path)
    (ckpt / LATEST_TAG / CHECKSUMS_FILE).unlink()
    corrupt_one(ckpt, "optimizer states")
    line = refusal_line(reader, ckpt, tmp_path, capsys)
    assert f"{ckpt / LATEST_TAG / CHECKSUMS_FILE} is missing" in line, line
    assert f"newest tag that verifies is {GOOD}" in line, line


@pytest.mark.launch
@pytest.mark.parametrize("reader", ["resume", "evaluate", "export"])
def test_a_tag_copied_in_part_without_its_manifest_is_refused(reader: str, saved: Path, tmp_path: Path,
                                                               capsys) -> None:
    """A copy of a run cut off inside its newest tag (``tar``, or ``cp -a``, which copy in directory order) after
    ``latest``: the tag lacks ``checksums.json``, ``train_args.json`` and a shard. Found 2026-12-07: it passed for a
    tag saved before checksums existed, was read with a warning that its files are not verified, and failed on the
    missing shard (export and evaluate: ``is a ZeRO-0 tensor-parallel checkpoint; train with ZeRO >= 1``). Its older
    tag holds a manifest, so this one was saved with one too."""
    ckpt = copy_of(saved, tmp_path)
    for name in (CHECKSUMS_FILE, "train_args.json", FILES["optimizer states"]):
        for path in (ckpt / LATEST_TAG).glob(name):
            path.unlink()
    line = refusal_line(reader, ckpt, tmp_path, capsys)
    assert (f"{ckpt / LATEST_TAG / CHECKSUMS_FILE} is missing, though {LATEST_TAG} was saved with it (the older "
            f"{GOOD} of its run holds one: a copy cut off") in line, line
    assert f"newest tag that verifies is {GOOD}" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.launch
def test_a_save_never_keeps_files_of_an_unfinished_save_of_its_tag(saved: Path, corpus: Path, tmp_path: Path) -> None:
    """A killed 2-rank save left iter_N with rank 1's shards; a 1-rank resume saved iter_N into that folder and its
    checksums covered the stale shards, so evaluate, export and a 2-rank resume read mixed weights without a word
    (found 2026-12-06). A stale universal conversion of the tag would have been reused likewise."""
    ckpt = copy_of(saved, tmp_path)
    (ckpt / "latest").write_text(GOOD)  # the save of LATEST_TAG did not finish
    stray = ckpt / LATEST_TAG / "zero_pp_rank_1_mp_rank_00_model_states.pt"
    stray.write_bytes(b"a shard of the killed run")
    (ckpt / f"{LATEST_TAG}_universal_model").mkdir()
    log = run(1, [*tiny_args(corpus, 2), "--save", str(ckpt), "--load", str(ckpt), "--save-interval", "1"],
              tmp_path / "log.txt")
    assert f"removing {ckpt / LATEST_TAG}, left by a save that did not finish" in log
    assert read_latest(ckpt) == LATEST_TAG and not stray.exists()
    assert not (ckpt / f"{LATEST_TAG}_universal_model").exists() and verify_checksums(ckpt / LATEST_TAG)


def test_a_save_of_the_tag_latest_names_keeps_it(tmp_path: Path) -> None:
    """Saving at the iteration a run resumed from keeps that checkpoint; any other folder of the tag goes."""
    manager = CheckpointManager(tmp_path)
    for tag in (GOOD, LATEST_TAG):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "shard.pt").write_bytes(b"x")
    (tmp_path / "latest").write_text(GOOD)
    assert manager._clear_tag(GOOD) == "saved" and (tmp_path / GOOD / "shard.pt").exists()
    assert manager._clear_tag(LATEST_TAG) is None and not (tmp_path / LATEST_TAG).exists()


def test_a_save_whose_latest_cannot_be_written_is_one_line_and_leaves_no_temporary(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """Found 2026-12-06 (long-run audit): ``latest`` was written outside the save's error handling, so a disk that
    filled after the checksums (another job, the TensorBoard writer) was an OSError traceback, and the hidden
    temporary of ``latest`` stayed. Now the save's one line, the new tag removed, ``latest`` as it was."""
    class Engine:  # DeepSpeed's part of a save: the shards
        def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool) -> None:
            (Path(save_dir) / tag).mkdir(parents=True)
            (Path(save_dir) / tag / "shard.pt").write_bytes(b"x")

    (tmp_path / GOOD).mkdir()
    (tmp_path / "latest").write_text(GOOD)
    replace = os.replace

    def full_for_latest(src: str, dst: str) -> None:
        if Path(dst).name == "latest":
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", full_for_latest)
    with pytest.raises(CheckpointError, match=f"disk full while saving .*{LATEST_TAG}.*latest still names {GOOD}"):
        CheckpointManager(tmp_path).save(Engine(), int(LATEST_TAG[5:]), {}, ModelConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == [GOOD, "latest"] and (tmp_path / "latest").read_text() == GOOD


def test_a_latest_that_names_an_older_tag_than_the_newest_complete_one_is_said(tmp_path: Path, caplog) -> None:
    """``latest`` naming an earlier tag than the newest complete one (pointed back on purpose, or one flipped bit:
    iter_0000003 -> iter_0000002): found 2026-12-07, a resume, evaluate, generate and export read the older weights
    with an INFO line only. Now each says which newer tag it leaves, and how to read it."""
    for tag in (GOOD, LATEST_TAG, "iter_0000003"):
        (tmp_path / tag).mkdir()
        write_checksums(tmp_path / tag)
    (tmp_path / "iter_0000004").mkdir()  # a killed save's partial tag is no newer checkpoint
    (tmp_path / "latest").write_text("iter_0000003")
    with caplog.at_level("WARNING"):
        assert resolve_tag_dir(tmp_path) == tmp_path / "iter_0000003"
    assert "newer complete" not in caplog.text
    (tmp_path / "latest").write_text(GOOD)
    said = (f"{tmp_path / 'latest'} names {GOOD}, but {tmp_path} holds 2 newer complete checkpoint(s), the newest "
            f"iter_0000003: reading {GOOD}")
    with caplog.at_level("WARNING"):
        assert resolve_tag_dir(tmp_path) == tmp_path / GOOD
    assert said in caplog.text and "write iter_0000003 into it" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"), pytest.raises(CheckpointError, match="no model_config.json"):
        CheckpointManager.load(None, tmp_path, ModelConfig())  # a resume: said before anything is read
    assert said in caplog.text


def test_going_back_to_an_earlier_tag_keeps_the_newer_complete_ones(tmp_path: Path, caplog) -> None:
    """``latest`` written back to an earlier tag (what the tools advise to go back): found 2026-12-06, each newer
    complete tag the run reached again was removed as "left by a save that did not finish"."""
    manager = CheckpointManager(tmp_path)
    for tag in (GOOD, LATEST_TAG):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "shard.pt").write_bytes(b"x")
        write_checksums(tmp_path / tag)
    (tmp_path / "latest").write_text(GOOD)
    with caplog.at_level("WARNING"):
        assert manager._clear_tag(LATEST_TAG) is None
    assert not (tmp_path / LATEST_TAG).exists()
    assert (tmp_path / f"{LATEST_TAG}.superseded" / "shard.pt").read_bytes() == b"x"
    assert f"kept the complete checkpoint {tmp_path / LATEST_TAG} of a continuation past {GOOD}" in caplog.text
    (tmp_path / LATEST_TAG).mkdir()
    write_checksums(tmp_path / LATEST_TAG)
    manager._clear_tag(LATEST_TAG)
    assert (tmp_path / f"{LATEST_TAG}.superseded1").is_dir()
    (tmp_path / LATEST_TAG).mkdir()  # a killed save: no manifest, or a shard the manifest does not list
    (tmp_path / LATEST_TAG / "shard.pt").write_bytes(b"y")
    manager._clear_tag(LATEST_TAG)
    assert not (tmp_path / LATEST_TAG).exists() and not (tmp_path / f"{LATEST_TAG}.superseded2").exists()


@pytest.mark.launch
def test_export_never_overwrites_unless_asked(saved: Path, tmp_path: Path, capsys) -> None:
    """Without --overwrite nothing is replaced; with it, only an earlier export (before 2026-12-06 any file or
    folder was)."""
    taken, file, earlier = tmp_path / "taken", tmp_path / "file", tmp_path / "earlier"
    taken.mkdir()
    (taken / "keep").write_text("x")
    file.write_text("y")
    assert export_main([str(saved), str(earlier)]) == 0
    for target, what in ((taken, "a directory that is not empty"), (file, "an existing file"),
                         (earlier, "a directory that is not empty")):
        line = error_line(export_main([str(saved), str(target)]), capsys.readouterr().err)
        assert f"{target} is {what}; export into a new directory, or pass --overwrite" in line, line
    for target in (taken, file):
        line = error_line(export_main([str(saved), str(target), "--overwrite"]), capsys.readouterr().err)
        assert "but not an export" in line and "--overwrite replaces only an earlier export" in line, line
    assert (taken / "keep").read_text() == "x" and file.read_text() == "y"
    (tmp_path / "empty").mkdir()
    assert export_main([str(saved), str(tmp_path / "empty")]) == 0  # an empty directory is no loss
    (earlier / "stray").write_text("z")
    assert export_main([str(saved), str(earlier), "--overwrite"]) == 0
    assert not (earlier / "stray").exists() and verify_checksums(earlier)
    load_exported(earlier)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "empty", "file", "taken"], "temporaries left"


@pytest.mark.launch
def test_export_never_replaces_another_checkpoint_or_what_appeared_meanwhile(saved: Path, tmp_path: Path, capsys,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-06: ``--overwrite`` took any folder with checksums.json for an earlier export, so an export
    replaced another run's checkpoint tag (optimizer states and all) or the tag its own run's latest names; and
    an OUT that appeared while an export ran (another export, the user's notes) was replaced without --overwrite."""
    other = copy_of(saved, tmp_path)
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    for target, marker in ((other / LATEST_TAG, "train_args.json"), (other, "latest")):
        line = error_line(export_main([str(saved), str(target), "--overwrite"]), capsys.readouterr().err)
        assert f"{target} is a run folder or one of its checkpoints (it holds {marker}), which an export never" in line
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    import megamythos.checkpoint.export as export_module

    out, write = tmp_path / "out", export_module.write_checksums

    def meanwhile(stage: Path) -> None:  # the user makes OUT while the export writes
        write(stage)
        out.mkdir()
        (out / "NOTES.txt").write_text("mine")

    monkeypatch.setattr(export_module, "write_checksums", meanwhile)
    line = error_line(export_main([str(saved), str(out)]), capsys.readouterr().err)
    assert f"{out} is a directory that is not empty; export into a new directory" in line, line
    assert (out / "NOTES.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["NOTES.txt"]
    assert not list(tmp_path.glob("out.tmp.*")), "the staged export was left behind"


@pytest.mark.launch
def test_export_never_replaces_its_checkpoint_or_the_working_directory(saved: Path, tmp_path: Path, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``export RUN RUN --overwrite`` (or a folder holding RUN) deleted the whole run, optimizer states included,
    and ``export CKPT . --overwrite`` left a complete export beside a traceback (found 2026-12-06)."""
    ckpt = copy_of(saved, tmp_path)
    (ckpt / CHECKSUMS_FILE).write_text("{}")  # even if it looked like an export
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    tag = ckpt / LATEST_TAG
    for source, target in [*((ckpt, t) for t in (ckpt, tmp_path, tag, ckpt / "exported")),
                           *((tag, t) for t in (tag, ckpt, tmp_path, tag / "exported"))]:
        line = error_line(export_main([str(source), str(target), "--overwrite"]), capsys.readouterr().err)
        assert "overlaps the checkpoint" in line, line
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for target in (".", ".."):
        line = error_line(export_main([str(ckpt), target, "--overwrite"]), capsys.readouterr().err)
        assert "overlaps the checkpoint" in line or "is the working directory or holds it" in line, line
    with pytest.raises(SystemExit) as refused:  # '' is no path at all: the parser's line
        export_main([str(ckpt), "", "--overwrite"])
    assert refused.value.code == 2 and "argument out: is empty" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [*before, Path("elsewhere")]


@pytest.mark.launch
def test_failed_overwrite_keeps_the_old_export(saved: Path, tmp_path: Path, capsys) -> None:
    """The new export is staged beside the old one: a failure (here a corrupt checkpoint) leaves the old export
    whole and nothing beside it."""
    out = tmp_path / "out"
    assert export_main([str(saved), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    ckpt = copy_of(saved, tmp_path)
    corrupt_one(ckpt, "model states")
    error_line(export_main([str(ckpt), str(out), "--overwrite"]), capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


@pytest.mark.parametrize("fmt", ["native", "hf"])
@pytest.mark.launch
def test_a_corrupt_export_is_refused(fmt: str, saved: Path, tmp_path: Path, capsys) -> None:
    """Both formats carry checksums; ``load_exported`` (evaluate/generate of an export) verifies them."""
    if fmt == "hf":
        pytest.importorskip("transformers")
    out = tmp_path / "out"
    assert export_main([str(saved), str(out), "--format", fmt]) == 0
    manifest = json.loads((out / CHECKSUMS_FILE).read_text())["files"]
    assert set(manifest) == {p.name for p in out.iterdir()} - {CHECKSUMS_FILE}
    bad = corrupt(out / "model.safetensors")
    if fmt == "hf":
        with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
            verify_checksums(out)
        return
    with pytest.raises(CheckpointError, match=f"{bad} is corrupt.*export the checkpoint again"):
        load_exported(out)
    line = error_line(generate_main(["--load", str(out), "--prompt", "def"]), capsys.readouterr().err)
    assert f"{bad} is corrupt" in line


@pytest.mark.launch
def test_universal_checkpoint_is_checksummed_and_rebuilt_when_it_does_not_verify(saved: Path, tmp_path: Path,
                                                                                   caplog) -> None:
    """Elastic resume: rank 0 converts the tag into ``TAG_universal_model`` with its own checksums; one that no
    longer verifies is derived data and converted again from the (verified) tag."""
    ckpt = copy_of(saved, tmp_path)
    config = ModelConfig.from_json(ckpt / LATEST_TAG / "model_config.json")
    layout = {"world_size": 2, "tp": 1, "ep": 1}
    # what a conversion killed at start-up (before any signal handler) left: removed by the next one (found
    # 2026-12-06: a hidden temporary folder that stayed for good); a live process's is kept
    dead = ckpt / f"{LATEST_TAG}_universal_model.tmp.{socket.gethostname()}.{dead_pid()}"
    live = ckpt / f"{LATEST_TAG}_universal_model.tmp.{socket.gethostname()}.{os.getppid()}"
    for folder in (dead, live):
        (folder / LATEST_TAG).mkdir(parents=True)
    name = universal_tag(ckpt, layout, 3, 0, config)
    assert verify_checksums(ckpt / name)
    assert not dead.exists() and live.exists()
    assert not [p for p in ckpt.iterdir() if ".tmp." in p.name and p != live], "this conversion's temporaries stayed"
    fp32 = sorted((ckpt / name).rglob("fp32.pt"))[0]
    corrupt(fp32)
    with caplog.at_level(logging.WARNING):
        assert universal_tag(ckpt, layout, 3, 0, config) == name
    assert any("converting" in r.getMessage() for r in caplog.records)
    assert verify_checksums(ckpt / name)


@pytest.mark.launch
def test_export_prints_only_its_json_on_stdout_and_files_follow_the_umask(saved: Path, tmp_path: Path) -> None:
    """What scripts parse: stdout is the one JSON line (DeepSpeed's import-time WARNING went there before it);
    the files are readable as a plain ``open`` would make them (safetensors wrote model.safetensors 0600)."""
    for fmt in ("native", "hf"):
        out = tmp_path / fmt
        result = subprocess.run([sys.executable, "-m", "megamythos.checkpoint.export", str(saved), str(out),
                                 "--format", fmt], capture_output=True, text=True, env=launch_env(), timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(result.stdout.splitlines()) == 1 and json.loads(result.stdout), result.stdout
        umask = os.umask(0)
        os.umask(umask)
        assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_model_trained_outside_the_trainer_exports_and_loads(tiny_tokenizer, tmp_path: Path) -> None:
    """A model from a training loop of one's own becomes an export that load_model (and so generate/evaluate
    --load, and transformers for the hf form) reads: the same logits, the selection bias included, its tokenizer
    checked. Before (found 2026-12-06): only the trainer's checkpoints could be exported."""
    model = MythosLM(small_config(vocab_size=tiny_tokenizer.vocab_size)).eval()
    with torch.no_grad():
        model.recurrent.block.moe.gate.e_score_correction_bias.uniform_(-0.5, 0.5)
    out = export_model(model, tmp_path / "mine", tiny_tokenizer)
    loaded = load_model(out)
    ids = torch.tensor([tiny_tokenizer.encode_one("def main(argv):")])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, model(ids).logits)
    assert loaded.tokenizer.fingerprint == tiny_tokenizer.fingerprint and verify_checksums(out)
    with pytest.raises(ExportError, match="not empty; export into a new directory"):
        export_model(model, out, tiny_tokenizer)
    hf = export_model(model, tmp_path / "mine-hf", tiny_tokenizer, hf=True)
    assert "auto_map" in json.loads((hf / "config.json").read_text()) and verify_checksums(hf)


def test_export_model_refuses_what_no_loader_reads_and_exports_a_compiled_model(tiny_tokenizer, tmp_path) -> None:
    """``torch.compile(model)`` (which docs/model.md says runs) exports as the model it compiles: its state dict's
    names carry ``_orig_mod.``, so the export was written, checksummed, and then refused by load_model with a
    RuntimeError listing every weight as missing (found 2026-12-06). Weights ZeRO-3 left partitioned (empty
    ``p.data``) are refused before anything is written, as are a module that is not a MythosLM and a tokenizer of
    more ids than the model's vocabulary (the export was written, and load_model refused it; found 2026-12-06)."""
    model = MythosLM(small_config(vocab_size=tiny_tokenizer.vocab_size)).eval()
    out = export_model(torch.compile(model), tmp_path / "compiled", tiny_tokenizer)
    ids = torch.tensor([tiny_tokenizer.encode_one("def main(argv):")])
    with torch.no_grad():
        assert torch.equal(load_model(out).model(ids).logits, model(ids).logits)
    with pytest.raises(ExportError, match="has 400 ids but the model only 97"):  # load_model refused it after
        export_model(MythosLM(small_config()), tmp_path / "other-vocab", tiny_tokenizer, hf=True)
    assert not (tmp_path / "other-vocab").exists()
    with pytest.raises(ExportError, match="not a Linear"):
        export_model(torch.nn.Linear(2, 2), tmp_path / "linear")
    weight = next(model.parameters())
    weight.ds_numel = weight.numel() + 1  # as ZeRO-3 marks a parameter whose data it partitioned away
    with pytest.raises(ExportError, match="ZeRO-3 partitions"):
        export_model(model, tmp_path / "partitioned", tiny_tokenizer)
    assert not (tmp_path / "partitioned").exists()


def test_an_export_without_checksums_whose_weights_do_not_load_is_one_line(tmp_path: Path, capsys) -> None:
    """An export without ``checksums.json`` (written before exports carried one) is read unverified: weights of
    another model than its ``config.json`` describes, or a ``model.safetensors`` that is no safetensors file,
    were a RuntimeError / SafetensorError traceback in generate and evaluate (found 2026-12-06)."""
    out = export_model(MythosLM(small_config()), tmp_path / "export")
    (out / CHECKSUMS_FILE).unlink()
    (out / "config.json").write_text(small_config(dim=128).to_json())
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not hold the weights of the model .*config\."
                                              r"json describes \(.*size mismatch.*\); export the checkpoint again"):
        load_exported(out)
    (out / "model.safetensors").write_bytes(b"\xff" * 64)
    line = error_line(generate_main(["--load", str(out), "--prompt", "def"]), capsys.readouterr().err)
    assert "model.safetensors does not hold the weights of the model" in line, line



def test_a_file_the_manifest_does_not_list_is_refused(tmp_path: Path, capsys) -> None:
    """Every file of a checked directory's top level must be listed: a manifest that lost an entry left that file
    unchecked, so a changed ``model.safetensors`` loaded without a word (found 2026-12-07), and a file put beside a
    tag (another run's shard) was read unverified. Results in a subdirectory (``eval/``) and files no loader reads
    (a model card, a file manager's) are not checked."""
    out = export_model(MythosLM(small_config()), tmp_path / "export")
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}\n")
    (out / "README.md").write_text("# a model card\n")
    (out / ".DS_Store").write_bytes(b"\0")
    assert verify_checksums(out)
    (out / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"stray")
    with pytest.raises(CheckpointError, match=r"zero_pp_rank_1_mp_rank_00_optim_states\.pt is not listed in"):
        verify_checksums(out)
    (out / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    manifest = json.loads((out / CHECKSUMS_FILE).read_text())
    del manifest["files"]["model.safetensors"]
    (out / CHECKSUMS_FILE).write_text(json.dumps(manifest))
    corrupt(out / "model.safetensors")
    line = error_line(generate_main(["--load", str(out), "--prompt", "def"]), capsys.readouterr().err)
    assert f"{out / 'model.safetensors'} is not listed in {out / CHECKSUMS_FILE}" in line, line


def test_a_zero0_autoep_checkpoint_is_read_with_its_expert_files(tmp_path: Path) -> None:
    """A checkpoint of an AutoEP run (``--ep`` > 1) under ZeRO 0-2 holds DeepSpeed's per-expert files
    ``layer_L_expert_E_mp_rank_00_model_states.pt`` beside ``mp_rank_00_model_states.pt``; under ZeRO-0 its
    optimizer files are ``expp_rank_*`` and its module state leaves the experts out. Found 2026-12-06: export,
    evaluate and generate took an expert file for the client state (they sort first), sent ZeRO-0 through
    ds_to_universal (a multi-line failure), and left the selection bias under AutoEP's name."""
    from megamythos.checkpoint.reader import load_checkpoint_weights

    config = small_config()
    model, tag, moe = MythosLM(config), tmp_path / "iter_0000002", "recurrent.block.moe"
    with torch.no_grad():
        model.recurrent.block.moe.gate.e_score_correction_bias.uniform_(-0.5, 0.5)
    want = model.state_dict()
    tag.mkdir()
    config.to_json(tag / "model_config.json")
    module = {k: v for k, v in want.items() if f"{moe}.experts." not in k and f"{moe}.gate." not in k}
    module |= {f"{moe}.router.gate.weight": want[f"{moe}.gate.weight"],  # as AutoEP names them
               f"{moe}.router.e_score_correction_bias": want[f"{moe}.gate.e_score_correction_bias"]}
    torch.save({"module": module, "expert_bias": {moe: want[f"{moe}.gate.e_score_correction_bias"]}},
               tag / "mp_rank_00_model_states.pt")
    gate_up, down, f = want[f"{moe}.experts.gate_up_proj"], want[f"{moe}.experts.down_proj"], config.expert_dim
    for e in range(config.n_experts):
        torch.save({f"{moe}.experts.w1.{e}": gate_up[e, :f], f"{moe}.experts.w2.{e}": down[e],
                    f"{moe}.experts.w3.{e}": gate_up[e, f:]}, tag / f"layer_0_expert_{e}_mp_rank_00_model_states.pt")
    torch.save({}, tag / "expp_rank_0_mp_rank_00_optim_states.pt")
    write_checksums(tag)
    _, state = load_checkpoint_weights(tag, tmp_path)
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
