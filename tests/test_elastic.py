"""Elastic resume: a checkpoint written on one layout continues on another (world size, data-parallel size, --ep,
--tp) through DeepSpeed's universal checkpoint, converted automatically when the recorded layout differs.
Onto --tp > 1 DeepSpeed 0.19.8 cuts a full universal tensor into the rank's AutoTP slice only when it is stored as
a record ``{"param": tensor}``; ds_to_universal stores a bare tensor for anything saved with --tp 1, which then
failed with "start + length exceeds dimension size" (megamythos.training.checkpointing.as_param_records).

Each saved layout trains a reference 8 iterations without a stop (checkpoint at 4), once; each direction
resumes a copy of its iteration-4 checkpoint on the other layout and compares iterations 5-8. The global batch
(2 samples) is the same on both layouts, so the data position (consumed samples), LR schedule and step count
carry over unchanged.
Tolerance 2e-4, as between layouts in test_distributed_train.py (expert parallelism regroups routed tokens; a
near-tie top-k flip moved a loss by 5e-5); measured: 2e-7 between the two reference layouts, and the resumed
losses equal to the uninterrupted ones. Losing the optimizer state, the schedule, the expert biases or the data
position, or DeepSpeed's universal load sharing one Adam step counter between parameter groups (fixed in
megamythos.training.checkpointing), moved them by 5e-3 to 1e-2 at lr 1e-2.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from megamythos.checkpoint.files import CheckpointError
from megamythos.model.config import ModelConfig
from megamythos.training.checkpointing import universal_tag
from tests.helpers import LaunchPool, losses, metrics, run, tiny_args, trains

pytestmark = pytest.mark.distributed

ITERS, STOP = 8, 4
TOL = 2e-4
ONE_RANK = ("--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2")
TWO_RANKS_EP2 = ("--zero", "3", "--ep", "2", "--micro-batch-size", "1", "--global-batch-size", "2")
TWO_RANKS_TP2 = ("--zero", "3", "--tp", "2", "--micro-batch-size", "2", "--global-batch-size", "2")


def train(run_dir: Path, corpus: Path, nproc: int, layout: tuple[str, ...], *extra: str) -> str:
    return run(nproc, [*tiny_args(corpus, ITERS), *layout, "--save", str(run_dir / "ckpt"), "--metrics-file",
                       str(run_dir / "metrics.jsonl"), "--eval-interval", "0", *extra], run_dir / "log.txt")


def resume_elsewhere(ref: Path, out: Path, corpus: Path, nproc: int, layout: tuple[str, ...]) -> str:
    """Copy ``ref``'s iteration-4 checkpoint to ``out/source`` and finish the run from there on ``layout``, saving
    into ``out/ckpt`` (``--load A --save B``: A is another run's folder, which the resume only reads)."""
    shutil.copytree(ref / "ckpt" / f"iter_{STOP:07d}", out / "source" / f"iter_{STOP:07d}")
    (out / "source" / "latest").write_text(f"iter_{STOP:07d}")
    return train(out, corpus, nproc, layout, "--load", str(out / "source"))


def check_continues(ref: Path, resumed: Path, log: str, saved: dict, now: dict) -> None:
    assert f"written on layout {saved}, this run is {now}" in log
    # found 2026-12-06: the universal conversion (twice the tag's size) went into --load, another run's folder
    # (whose --keep-last would prune it); it is made in --save and removed once every rank has loaded it
    assert sorted(p.name for p in (resumed / "source").iterdir()) == ["iter_0000004", "latest"]
    assert not [p.name for p in (resumed / "ckpt").iterdir() if "universal" in p.name]
    got, want = losses(resumed / "metrics.jsonl"), losses(ref / "metrics.jsonl")
    assert sorted(got) == list(range(STOP + 1, ITERS + 1)), "resumed at the wrong iteration"
    diffs = {i: abs(got[i] - want[i]) for i in got}
    assert max(diffs.values()) <= TOL, f"loss differences after the resume: {diffs}"
    lr = {m["iteration"]: m["learning-rate"] for m in metrics(ref / "metrics.jsonl") if "learning-rate" in m}
    assert [m["learning-rate"] for m in metrics(resumed / "metrics.jsonl") if "learning-rate" in m] == \
        [pytest.approx(lr[i], rel=1e-9) for i in got], "LR schedule not carried over"
    first = json.loads((resumed / "metrics.jsonl").read_text().splitlines()[0])
    assert first["consumed_samples"] == (STOP + 1) * 2, "data position not carried over"
    record = json.loads((resumed / "ckpt" / f"iter_{ITERS:07d}" / "train_args.json").read_text())
    assert record["layout"] == now


# (name, processes and flags that save, processes and flags that resume), with the layout each records
LAYOUTS = {"1 rank": (1, ONE_RANK, {"world_size": 1, "tp": 1, "ep": 1}),
           "2 ranks ep2": (2, TWO_RANKS_EP2, {"world_size": 2, "tp": 1, "ep": 2}),
           "2 ranks tp2": (2, TWO_RANKS_TP2, {"world_size": 2, "tp": 2, "ep": 1})}


# (layout that saves, layout that resumes), one test each
PAIRS = [("2 ranks ep2", "1 rank"), ("1 rank", "2 ranks ep2"), ("2 ranks tp2", "1 rank"), ("1 rank", "2 ranks tp2"),
         ("2 ranks ep2", "2 ranks tp2")]
# a resume without --global-batch-size keeps the checkpoint's (2 samples): the default here would be 1 x 1 x 1
# (found 2026-12-06: a resume on another world size changed the global batch without a word); it also gives other
# AdamW settings, which it keeps from the checkpoint, as a resume on the same layout does (found 2026-12-07: the
# command line's were put on every parameter group after DeepSpeed's universal load, without a word)
KEEPS_THE_BATCH = ("2 ranks tp2", "1 rank")
OTHER_ADAMW = ("--weight-decay", "0.5", "--adam-beta2", "0.99")
KEPT_ADAMW = ("resuming with the checkpoint's optimizer settings, restored with its state: --weight-decay 0.1 "
              "(command line 0.5), --adam-beta2 0.95 (command line 0.99)")


def resume_when_saved(launches: LaunchPool, ref: Path, out: Path, corpus: Path, nproc: int,
                      layout: tuple[str, ...], saved: str) -> str:
    launches.result(f"elastic/{saved}")  # the reference run has written its iteration-4 checkpoint
    return resume_elsewhere(ref, out, corpus, nproc, layout)


@pytest.fixture(scope="module")
@trains
def runs(launches: LaunchPool, tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> dict:
    """Starts, in conftest's ``launches`` (two at a time, in this order), each saved layout's uninterrupted reference
    run (checkpoint at iteration 4), then every resume of ``PAIRS`` (each waits for its reference). Returns
    {layout name: reference run, (saved, resumed): resumed run}; ``launches.result`` of ``elastic/<saved> ->
    <resumed>`` is the resume's log."""
    dirs: dict = {}
    for name in dict.fromkeys(saved for saved, _ in PAIRS):
        procs, flags, _ = LAYOUTS[name]
        dirs[name] = tmp_path_factory.mktemp("ref")
        launches.submit(f"elastic/{name}", train, dirs[name], corpus, procs, flags, "--save-interval", str(STOP))
    for saved, resumed in PAIRS:
        procs, flags, _ = LAYOUTS[resumed]
        if (saved, resumed) == KEEPS_THE_BATCH:
            flags = (*ONE_RANK[:-2], *OTHER_ADAMW)  # without --global-batch-size 2
        out = dirs[saved, resumed] = tmp_path_factory.mktemp("resumed") / "resumed"
        launches.submit(f"elastic/{saved} -> {resumed}", resume_when_saved, launches, dirs[saved], out, corpus, procs,
                        flags, saved)
    return dirs


@pytest.mark.launch
@pytest.mark.parametrize("saved, resumed", PAIRS)
def test_resume_on_another_layout_continues_the_run(saved: str, resumed: str, runs: dict,
                                                    launches: LaunchPool) -> None:
    (_, _, saved_layout), (_, _, layout) = LAYOUTS[saved], LAYOUTS[resumed]
    log = launches.result(f"elastic/{saved} -> {resumed}")
    check_continues(runs[saved], runs[saved, resumed], log, saved_layout, layout)
    if (saved, resumed) == KEEPS_THE_BATCH:
        assert "keeping the global batch of" in log and "x accumulation 2)" in log, log[-3000:]
        assert KEPT_ADAMW in log, log[-3000:]


@pytest.mark.parametrize("saved_stage, stage", [(2, 3), (3, 2), (1, 1)])
def test_resume_on_another_layout_outside_zero3_is_refused_before_start_up(saved_stage: int, stage: int,
                                                                           tmp_path: Path) -> None:
    """From ZeRO-1/2 checkpoints DeepSpeed's universal load loses Adam step counts and fails under AutoTP, so a
    layout change is refused by name unless both runs use ZeRO-3; nothing is converted or written."""
    tag = tmp_path / "ckpt" / f"iter_{STOP:07d}"
    tag.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text(tag.name)
    (tag / "train_args.json").write_text(json.dumps({"layout": LAYOUTS["1 rank"][2], "zero_stage": saved_stage}))
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    other_layout = (f"written with ZeRO-{saved_stage}; this run uses ZeRO-{stage}: resume it with --zero "
                    f"{saved_stage} on its own layout") if saved_stage not in (3, stage) else (
        f"written on layout .* with ZeRO-{saved_stage}; this run is .* with ZeRO-{stage}, and resuming on another "
        f"layout works only between ZeRO-3 runs: resume it on its own layout .* with --zero {saved_stage}")
    with pytest.raises(CheckpointError, match=other_layout):
        universal_tag(tmp_path / "ckpt", LAYOUTS["2 ranks ep2"][2], stage, 0, ModelConfig())
    if saved_stage == stage:
        assert universal_tag(tmp_path / "ckpt", LAYOUTS["1 rank"][2], stage, 0, ModelConfig()) is None  # same layout
    else:  # the same layout under another stage: DeepSpeed's load failed in an assertion (found 2026-12-06)
        with pytest.raises(CheckpointError, match=f"written with ZeRO-{saved_stage}; this run uses ZeRO-{stage}: "
                                                  f"resume it with --zero {saved_stage}$"):
            universal_tag(tmp_path / "ckpt", LAYOUTS["1 rank"][2], stage, 0, ModelConfig())
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before


@contextmanager
def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No new entry in ``folder`` for this process: mode 0o555, and as root (whom file modes do not stop) every
    ``Path.mkdir`` inside it failing as on a read-only file system."""
    if os.geteuid() == 0:
        mkdir = Path.mkdir

        def refused(path: Path, *args, **kwargs) -> None:
            if folder in path.absolute().parents:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            mkdir(path, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", refused)
    folder.chmod(0o555)
    try:
        yield
    finally:
        folder.chmod(0o755)


def test_a_conversion_into_a_read_only_load_without_save_is_one_line(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run without --save converts the checkpoint of another layout into its --load; found 2026-12-07: on a
    read-only --load that was an OSError traceback (and, by reading, the other ranks waited in the collective that
    shares rank 0's outcome). It is one line naming --load and the --save to give, and nothing is written."""
    ckpt = tmp_path / "ckpt"
    tag = ckpt / f"iter_{STOP:07d}"
    tag.mkdir(parents=True)
    (ckpt / "latest").write_text(tag.name)
    (tag / "train_args.json").write_text(json.dumps({"layout": LAYOUTS["1 rank"][2], "zero_stage": 3}))
    refusal = (rf"^--load {ckpt} is not writable \(.*\), and resuming {tag.name} on another layout writes its "
               "universal conversion there; give a writable --save DIR")
    with read_only(ckpt, monkeypatch), pytest.raises(CheckpointError, match=refusal):
        universal_tag(ckpt, LAYOUTS["2 ranks ep2"][2], 3, 0, ModelConfig())
    assert sorted(p.name for p in ckpt.iterdir()) == [tag.name, "latest"]


QUOTA = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "fp32.pt")
TORCH_WRITER = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
QUOTA_LINE = "disk quota exceeded", "free space there or have your quota raised, and run again"
WRITE_LINE = ("write failed (a disk quota or file-size limit?)",
              "free space there, or have your quota or file-size limit raised, and run again")


@pytest.mark.parametrize("error, in_subprocess, line", [
    (QUOTA, False, QUOTA_LINE), (TORCH_WRITER, False, WRITE_LINE), (QUOTA, True, QUOTA_LINE),
    (TORCH_WRITER, True, WRITE_LINE)], ids=["EDQUOT", "torch writer", "ds_to_universal EDQUOT",
                                            "ds_to_universal torch writer"])
def test_a_quota_exceeded_during_the_conversion_is_one_line(error: Exception, in_subprocess: bool,
                                                            line: tuple[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07 (read): a disk quota (EDQUOT) met while converting a checkpoint of another layout was an
    OSError traceback on rank 0 (exit 1), where the other ranks said `rank 0 failed to convert ...` (exit 2); a
    full disk was already one line. A quota is one line too, told to every rank as the full disk's, and the
    conversion's temporary folder is removed. Found 2026-12-07 (audit): torch's writer reports a quota as a
    RuntimeError (``unexpected pos``, ``PytorchStreamWriter failed``), in this process (the expert renaming's
    ``torch.save``) a traceback as before, and in ``ds_to_universal``'s subprocess, as an EDQUOT there, its
    "could not convert ... restore the tag from a copy" line: each is the one line of a failed write now."""
    from megamythos.checkpoint import reader

    ckpt = tmp_path / "ckpt"
    tag = ckpt / f"iter_{STOP:07d}"
    tag.mkdir(parents=True)
    (ckpt / "latest").write_text(tag.name)
    (tag / "train_args.json").write_text(json.dumps({"layout": LAYOUTS["1 rank"][2], "zero_stage": 3}))

    def over_quota(tag_dir: Path, out: Path, where: Path | None = None) -> Path:
        (out / "zero").mkdir(parents=True)  # part of the conversion written before the quota stopped it
        raise error

    def ds_to_universal(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        out = Path(next(a for a in cmd if a.startswith("--output_folder=")).partition("=")[2])
        (out / "zero").mkdir(parents=True)
        return subprocess.CompletedProcess(cmd, 1, "", f"Traceback ...\n{type(error).__name__}: {error}\n")

    if in_subprocess:
        monkeypatch.setattr(reader.subprocess, "run", ds_to_universal)
    else:
        monkeypatch.setattr(reader, "convert_to_universal", over_quota)
    what, remedy = line
    with pytest.raises(CheckpointError, match=rf"^{re.escape(what)} while converting {tag} to a universal "
                                              rf"checkpoint in {ckpt} \(about the size of the checkpoint, .*\); "
                                              f"{re.escape(remedy)}$"):
        universal_tag(ckpt, LAYOUTS["2 ranks ep2"][2], 3, 0, ModelConfig())
    assert sorted(p.name for p in ckpt.iterdir()) == [tag.name, "latest"]


@pytest.mark.parametrize("command", ["export", "evaluate or generate"])
def test_a_full_disk_while_reading_a_sharded_checkpoint_names_a_folder_that_stays(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """export, evaluate and generate convert a ZeRO-sharded checkpoint in a temporary folder of their own; found
    2026-12-07: a full disk or quota there was reported in that folder (``OUT.tmp.<host>.<pid>/tmpXXXX``, or
    ``/tmp/tmpXXXX``), gone once the command had failed. The line names the export's folder, or the system's
    temporary folder with the variable that moves it."""
    import tempfile

    import torch

    from megamythos.checkpoint import reader
    from megamythos.checkpoint.checksums import write_checksums
    from megamythos.checkpoint.export import export
    from megamythos.inference.loading import load_model

    ckpt = tmp_path / "ckpt"
    tag = ckpt / f"iter_{STOP:07d}"
    tag.mkdir(parents=True)
    (ckpt / "latest").write_text(tag.name)
    (tag / "train_args.json").write_text(json.dumps({"layout": LAYOUTS["1 rank"][2], "zero_stage": 3}))
    (tag / "model_config.json").write_text(ModelConfig().to_json())
    torch.save({"module": {}}, tag / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    torch.save({}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    write_checksums(tag)

    def ds_to_universal(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", f"Traceback ...\nOSError: {QUOTA}\n")

    monkeypatch.setattr(reader.subprocess, "run", ds_to_universal)
    what, remedy = QUOTA_LINE
    if command == "export":
        where, read = re.escape(str(tmp_path)), lambda: export(ckpt, tmp_path / "out")
    else:
        where = re.escape(f"{tempfile.gettempdir()} (the system's temporary folder; TMPDIR=DIR puts the conversion "
                          "in DIR)")
        read = lambda: load_model(ckpt)  # noqa: E731
    with pytest.raises(CheckpointError, match=rf"^{re.escape(what)} while converting {tag} to a universal "
                                              rf"checkpoint in {where} \(about the size of the checkpoint, .*\); "
                                              f"{re.escape(remedy)}$"):
        read()


@pytest.mark.parametrize("stage_record", [{"zero_stage": 3}, {}], ids=["recorded", "before zero_stage was recorded"])
def test_a_zero3_checkpoint_of_tp_and_ep_folded_is_refused_where_deepspeed_cannot_convert_it(
        stage_record: dict, tmp_path: Path) -> None:
    """DeepSpeed's ds_to_universal raises NotImplementedError for a ZeRO-3 checkpoint of AutoTP and AutoEP folded
    onto the same ranks; found 2026-12-07: a resume on another layout, export, evaluate and generate printed its
    traceback under one line. Each is now one line saying so, before anything is converted or written; a train
    record written before 2026-12-01 has no ``zero_stage`` (found 2026-12-07: its conversion was still tried), and
    ZeRO-3 is then read from DeepSpeed's per-rank model-states files."""
    import torch

    from megamythos.checkpoint.checksums import write_checksums
    from megamythos.checkpoint.reader import load_checkpoint_weights

    ckpt = tmp_path / "ckpt"
    tag = ckpt / f"iter_{STOP:07d}"
    tag.mkdir(parents=True)
    (ckpt / "latest").write_text(tag.name)
    (tag / "train_args.json").write_text(json.dumps({"layout": {"world_size": 2, "tp": 2, "ep": 2}, **stage_record}))
    (tag / "model_config.json").write_text(ModelConfig().to_json())
    for name in ("zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({}, tag / name)
    write_checksums(tag)
    before = sorted(p.name for p in ckpt.iterdir())
    cannot = "DeepSpeed's ds_to_universal cannot convert a ZeRO-3 checkpoint of --tp 2 with --ep 2"
    with pytest.raises(CheckpointError, match=f"; this run is .*, and {cannot} .*: resume it on its own layout"):
        universal_tag(ckpt, LAYOUTS["1 rank"][2], 3, 0, ModelConfig())
    with pytest.raises(CheckpointError, match=f"cannot be read as a whole model: {cannot} .*; it resumes only on"):
        load_checkpoint_weights(tag, tmp_path / "work")
    with pytest.raises(CheckpointError, match="written with ZeRO-3; this run uses ZeRO-1: resume it with --zero 3$"):
        universal_tag(ckpt, {"world_size": 2, "tp": 2, "ep": 2}, 1, 0, ModelConfig())  # its own layout
    assert sorted(p.name for p in ckpt.iterdir()) == before and not (tmp_path / "work").exists()
