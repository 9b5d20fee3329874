"""`launchers/pretrain.sh` in its three forms: `deepspeed [flags] launchers/pretrain.sh` (the design's),
`bash launchers/pretrain.sh` and `deepspeed --no_python ... launchers/pretrain.sh`.

The launches train the tiny model for two iterations with the launcher's own defaults (checkpoints, logs and
metrics under $RUN_DIR, the CPU debug config); the forms must hand the trainer the same arguments and give the
same losses. One launch per form (module fixtures), one at a time; the two simulated nodes run concurrently.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from megamythos.checkpoint.files import write_atomic
from megamythos.training.launch import (
    LaunchError,
    deepspeed_command,
    failed_run,
    file_identity,
    main,
    rank_environment,
    rank_errors,
    ranks_on_this_node,
    refuse_launcher_flags,
    split_launcher_flags,
    trainer_defaults,
    unfinished_ranks,
    wait_for_runner,
)
from megamythos.training.rendezvous import port_free
from tests.helpers import (
    LAUNCHER,
    REPO,
    dead_pid,
    finish,
    free_port,
    launch_env,
    losses,
    one_error_line,
    spawn,
    tiny_args,
    trains,
)
from tests.helpers import deepspeed_command as design_form

ITERS = 2
LAYOUT = ["--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2"]  # accumulation 2 on 1 rank, dp 2 on 2
TOL = 2e-5  # 1 rank vs 2 ranks: reduction order only (see test_distributed_train.py)


# ------------------------------------------------------------------------------------------- no processes
def test_script_is_valid_bash_and_python():
    assert subprocess.run(["bash", "-n", str(LAUNCHER)], capture_output=True).returncode == 0
    compile(LAUNCHER.read_text(), str(LAUNCHER), "exec")


def test_a_python_without_the_dependencies_is_one_line_naming_what_to_run(tmp_path):
    """bash runs the launcher with the ``python`` first on PATH: outside the environment megamythos is installed
    in (here the same interpreter without its site-packages), ``--help`` and a run each say so in one line, exit 2.
    Before (found 2026-12-06): a ModuleNotFoundError traceback from deep inside the imports."""
    (tmp_path / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    (tmp_path / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    for flags in (["--help"], ["--train-iters", "1"]):
        result = subprocess.run(["bash", str(LAUNCHER), *flags], capture_output=True, text=True, env=env,
                                cwd=tmp_path, timeout=60)
        assert result.returncode == 2 and result.stdout == "", result
        assert result.stderr.startswith(f"error: {sys.executable} cannot import '"), result.stderr
        assert result.stderr.count("\n") == 1 and "source .venv/bin/activate" in result.stderr


def test_a_module_the_training_misses_is_its_traceback_not_the_missing_environment_line(monkeypatch):
    """A rank (``LOCAL_RANK`` set) says that its python lacks megamythos's dependencies only while it starts; a
    ModuleNotFoundError that the trainer meets while it trains (an optional module) is the trainer's traceback.
    Before (found 2026-12-06): the launcher's catch spanned the whole training, so rank 0 said `cannot import
    'flash_attn', which megamythos needs: ... make install` and the other ranks exited 2 without a word."""
    import megamythos.training.pretrain as pretrain

    def trainer(argv: list[str]) -> int:
        raise ModuleNotFoundError("No module named 'flash_attn'", name="flash_attn")

    monkeypatch.setattr(pretrain, "main", trainer)
    monkeypatch.setattr(os, "environ", {**os.environ, "LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2",
                                        "LOCAL_SIZE": "2", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    with pytest.raises(ModuleNotFoundError, match="flash_attn"):
        main(["--train-iters", "1"])


def test_ctrl_c_during_start_up_is_no_traceback_from_the_other_ranks(monkeypatch, capsys):
    """Ctrl-C reaches every rank of ``bash launchers/pretrain.sh``'s process group; before the trainer's signal
    handlers are set (DeepSpeed's start-up, the data scan) Python raises KeyboardInterrupt. Found 2026-12-07: rank
    0 said `error: interrupted` and every other rank printed a KeyboardInterrupt traceback. They now end with 130
    and say nothing, as for a user error that rank 0 reports."""
    import megamythos.training.pretrain as pretrain

    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "train", interrupted)
    monkeypatch.setattr(os, "environ", {**os.environ, "RANK": "1"})
    try:
        code = pretrain._quiet([])
    except KeyboardInterrupt:  # caught here: escaping, it would end the whole pytest session
        pytest.fail("the KeyboardInterrupt escaped rank 1, which prints it as a traceback")
    assert code == 130
    assert capsys.readouterr().err == ""


def test_a_user_error_on_another_rank_leaves_rank_0_time_to_say_it(monkeypatch, capsys):
    """A rank other than 0 that meets a user error says nothing (rank 0 meets it too and reports it) and waits before
    it exits, since DeepSpeed's runner kills every rank once one has exited non-zero. Found 2026-12-07: under load
    rank 1 exited first and the runner killed rank 0 before its line, so ``deepspeed --num_gpus 2
    launchers/pretrain.sh --load typo`` ended with no error line (tests/test_faults.py, in a CI run)."""
    import megamythos.training.pretrain as pretrain
    from megamythos.errors import UserError

    def refused(argv: list[str]) -> int:
        raise UserError("--load typo does not exist")

    waits = []
    monkeypatch.setattr(pretrain, "train", refused)
    monkeypatch.setattr(pretrain.time, "sleep", waits.append)
    monkeypatch.setattr(os, "environ", {**os.environ, "RANK": "1"})
    assert pretrain._quiet([]) == 2
    assert waits == [pretrain.PEER_REPORT_SECONDS] and pretrain.PEER_REPORT_SECONDS >= 5
    assert capsys.readouterr().err == ""


def test_the_first_rank_of_another_node_says_its_user_error(monkeypatch, capsys, tmp_path):
    """Found 2026-12-07 (two nodes on one host, each its own `deepspeed --no_ssh --node_rank R`): rank 1, the first
    rank of node 1, met an error of its own input and ended without a word on any node (no launcher of rank 0's node
    reads its exit record). It says it now, once per node (its node's other ranks stay quiet), and writes no error
    record, which a launcher on its node would say again."""
    import megamythos.training.pretrain as pretrain
    from megamythos.errors import UserError
    from megamythos.training.process_exit import EXIT_RECORDS_ENV

    def refused(argv: list[str]) -> int:
        raise UserError("--data-path x does not exist")

    monkeypatch.setattr(pretrain, "train", refused)
    monkeypatch.setattr(pretrain.time, "sleep", lambda seconds: None)
    for rank, local_rank, said in (("8", "0", "error: rank 8: --data-path x does not exist\n"), ("9", "1", "")):
        monkeypatch.setattr(os, "environ", {**os.environ, "RANK": rank, "LOCAL_RANK": local_rank,
                                            EXIT_RECORDS_ENV: str(tmp_path)})
        assert pretrain._quiet([]) == 2
        assert capsys.readouterr().err == said
    assert [path.suffix for path in tmp_path.iterdir()] == [".error"]  # rank 9's, for its node's launcher


def test_a_launch_without_deepspeed_on_path_is_one_line_naming_the_environment(tmp_path, monkeypatch, capsys):
    """``/ENV/bin/python -m megamythos.training.launch`` without ENV activated: the launcher imports megamythos,
    but the ``deepspeed`` runner it starts is looked up on PATH. Before (found 2026-12-06): a FileNotFoundError
    traceback from subprocess, after the preflight."""
    env = {name: value for name, value in os.environ.items() if name != "LOCAL_RANK"}
    monkeypatch.setattr(os, "environ", {**env, "PATH": str(tmp_path / "bin"), "RUN_DIR": str(tmp_path / "run")})
    assert main(["--train-iters", "1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "`deepspeed` is not on PATH" in line and f"export PATH={Path(sys.executable).parent}:$PATH" in line, line
    assert not (tmp_path / "run").exists()  # said before the preflight makes the run folder


def test_help_into_a_closed_pipe_ends_quietly():
    """``bash launchers/pretrain.sh --help | head -1``: the reader has gone before the text is written; the
    launcher ends quietly with 141 (SIGPIPE's code), as cat does. Before (found 2026-12-06): a BrokenPipeError
    traceback."""
    proc = subprocess.Popen(["bash", str(LAUNCHER), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    proc.stdout.close()  # before the launcher has imported what its help needs
    assert proc.wait(timeout=60) == 141 and proc.stderr.read() == b""


def test_defaults_fill_only_what_is_missing_and_apply_once():
    argv = ["--save", "runs/a/ckpt", "--train-tokens", "1000"]
    defaults = trainer_defaults(argv, gpu=False, env={})
    # --save names the run folder: its logs go inside it, never beside it (two runs side by side share nothing)
    assert defaults[:4] == ["--load=runs/a/ckpt", "--tensorboard-dir=runs/a/ckpt/tensorboard",
                            "--metrics-file=runs/a/ckpt/metrics.jsonl",
                            f"--ds-config={REPO / 'ds_configs' / 'cpu-debug.json'}"]
    assert "--train-iters" not in defaults  # --train-tokens sets the length
    assert trainer_defaults([*defaults, *argv], gpu=False, env={}) == []
    assert trainer_defaults(["--ds-config=x.json", "--seq-length", "64"], gpu=True, env={"RUN_DIR": "/r"}) == [
        "--save=/r/checkpoints", "--load=/r/checkpoints", "--tensorboard-dir=/r/tensorboard",
        "--metrics-file=/r/metrics.jsonl"]
    assert "single-gpu.json" in trainer_defaults([], gpu=True, env={})[-2]
    # on a GPU the model's training length (the planner's), not the trainer's CPU-sized 256 (found 2026-12-06)
    for argv, length in ((["--preset", "small"], "2048"), (["--preset", "1t"], "4096"),
                         (["--preset", "small", "--override", "max_seq_len=1024"], "1024")):
        assert trainer_defaults(argv, gpu=True, env={})[-1] == f"--seq-length={length}"


def test_run_dir_that_is_a_file_is_named(tmp_path):
    """It was reported as a --tensorboard-dir problem, a flag the user never gave (found 2026-12-06)."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LaunchError, match=r"RUN_DIR=.*afile is a file, not a run folder"):
        trainer_defaults([], gpu=False, env={"RUN_DIR": str(tmp_path / "afile")})


@pytest.mark.parametrize("save", ["-1", "afile"])
def test_an_odd_save_is_taken_or_refused_as_save(save: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found 2026-12-07 (bad-input sweep): ``bash launchers/pretrain.sh --save=-1`` was refused as ``argument
    --tensorboard-dir: expected one argument`` (the launcher's ``--tensorboard-dir -1/tensorboard`` read as a flag),
    and a --save that is a file as ``--tensorboard-dir afile/tensorboard: cannot create ...``, flags the user never
    gave."""
    from megamythos.data.atomic import OutputError
    from megamythos.training.arguments import parse_args
    from megamythos.training.launch import preflight

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    argv = ["--save", save, "--train-iters", "1"]
    trainer = [*trainer_defaults(argv, gpu=False, env={}), *argv]
    if save == "afile":
        with pytest.raises(OutputError, match="^--save afile: cannot create afile"):
            preflight(trainer, 1)
        return
    assert parse_args(trainer).tensorboard_dir == "-1/tensorboard"
    preflight(trainer, 1)
    assert (tmp_path / "-1" / "tensorboard").is_dir()


def test_rank_environment_keeps_what_is_set():
    cpu = rank_environment({}, gpu=False, local_processes=10 ** 6)
    assert cpu["DS_ACCELERATOR"] == "cpu" and cpu["OMP_NUM_THREADS"] == "1" and cpu["PYTHONPATH"] == str(REPO)
    assert rank_environment({**cpu, "TORCH_EXTENSIONS_DIR": "/x"}, gpu=False, local_processes=1) == {
        "DS_ACCELERATOR": "cpu"}
    assert rank_environment({}, gpu=True, local_processes=None).keys() == {"PYTHONPATH", "TORCH_EXTENSIONS_DIR"}


def test_gpu_ranks_share_the_node_cores(monkeypatch):
    """Found 2026-12-07 (read: DeepSpeed 0.19.8's launch.py sets OMP_NUM_THREADS only with --bind_cores_to_rank):
    nothing set it on a GPU node, so each of its 8 ranks ran a thread pool of all 64 cores. Now cores / local
    ranks, as on CPU, without the CPU path's spinning; a set value stands, and where the launcher above the ranks
    does not know how many a node starts (None), it leaves it to them."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    env = rank_environment({}, gpu=True, local_processes=8)
    assert env["OMP_NUM_THREADS"] == "8" and "OMP_WAIT_POLICY" not in env
    assert "OMP_NUM_THREADS" not in rank_environment({"OMP_NUM_THREADS": "2"}, gpu=True, local_processes=8)
    assert "OMP_NUM_THREADS" not in rank_environment({}, gpu=True, local_processes=None)
    import torch  # the bash form's ranks on a GPU node: one per visible GPU unless --num-gpus says

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    flags = ({}, {"num_gpus": "2"}, {"include": "localhost:0"}, {"hostfile": "h", "num_nodes": "2"})
    assert [ranks_on_this_node(given, gpu=True) for given in flags] == [4, 2, None, None]
    assert ranks_on_this_node({}, gpu=False) == 1 and ranks_on_this_node({"num_gpus": "3"}, gpu=False) == 3


def test_rank_thread_pools_spin_only_where_the_ranks_own_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    env = rank_environment({}, gpu=False, local_processes=2)
    assert (env["OMP_NUM_THREADS"], env["OMP_WAIT_POLICY"]) == ("4", "ACTIVE")
    assert "OMP_WAIT_POLICY" not in rank_environment({}, gpu=False, local_processes=8)  # one thread: no pool
    for given in ({"OMP_NUM_THREADS": "4"}, {"OMP_WAIT_POLICY": "PASSIVE"}):  # the caller's choice stands
        assert "OMP_WAIT_POLICY" not in rank_environment(given, gpu=False, local_processes=2), given
    assert "OMP_WAIT_POLICY" not in rank_environment({}, gpu=True, local_processes=1)


def test_bash_form_takes_the_launcher_flags_in_either_spelling(tmp_path):
    hostfile = tmp_path / "h"
    hostfile.write_text("localhost slots=2\n")
    launcher, trainer = split_launcher_flags(["--num-gpus", "2", "--lr", "1", "--master_port=7", "--hostfile",
                                              str(hostfile), "--node-rank", "1", "--seed", "3"])
    assert trainer == ["--lr", "1", "--seed", "3"]
    assert deepspeed_command(launcher, trainer, gpu=False, env={}) == [
        "deepspeed", "--master_port", "7", "--num_gpus", "2", "--hostfile", str(hostfile), "--node_rank", "1",
        "--no_ssh",
        "--log_level", "critical", "--module", "megamythos.training.pretrain", "--lr", "1", "--seed", "3"]
    single = deepspeed_command({}, [], gpu=False, env={})  # one node, no port given: a free one, not 29500
    assert single[1] == "--master_port" and port_free(int(single[2]))
    assert deepspeed_command({"hostfile": "h"}, [], gpu=False, env={})[1:3] == ["--master_port", "29500"]
    include = split_launcher_flags(["--include", "localhost:0"])[0]  # deepspeed refuses --num_gpus with it
    assert deepspeed_command(include, [], gpu=False, env={"MASTER_PORT": "9"})[:5] == [
        "deepspeed", "--master_port", "9", "--include", "localhost:0"]
    with pytest.raises(LaunchError, match=r"--num_gpus needs a value \(--num_gpus N\)"):
        split_launcher_flags(["--num_gpus"])


def test_a_single_process_run_is_a_world_of_one_whatever_the_shell_left_over(monkeypatch):
    """Found 2026-12-07: `python -m megamythos.training.pretrain` in a shell holding WORLD_SIZE=2 from another job
    laid out micro 4 x dp 2 = global 8 (logged, recorded, counted by --train-tokens) while DeepSpeed, in the world
    of one it was given, trained 4 samples a step."""
    from megamythos.runtime.device import local_world_size
    from megamythos.training.pretrain import single_process_environment

    left_over = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "12345"}
    for name in ("RANK", "MASTER_ADDR", *left_over):  # each restored (or removed) after the test
        monkeypatch.setenv(name, left_over.get(name, ""))
    monkeypatch.delenv("RANK")
    single_process_environment()
    assert {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")} == {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "12345"}
    assert local_world_size() == 1


def test_a_local_rank_left_in_the_shell_does_not_make_the_bash_form_a_rank(monkeypatch):
    """Found 2026-12-07: `bash launchers/pretrain.sh --num-gpus 2 ...` in a shell holding LOCAL_RANK=0 ran as a rank
    (launchers set RANK too): its --num-gpus was refused as a flag to give `deepspeed`, and without launcher flags
    a GPU node trained one process instead of one per GPU."""
    import megamythos.training.launch as launch_module

    started = []
    monkeypatch.setattr(launch_module, "launch", lambda argv: started.append(argv) or 0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "")
    monkeypatch.delenv("RANK")
    assert main(["--num-gpus", "2", "--train-iters", "1"]) == 0
    assert started == [["--num-gpus", "2", "--train-iters", "1"]]


@pytest.mark.parametrize("port", ["abc", "0", "70000"])
def test_a_master_port_left_in_the_environment_that_is_no_port_is_one_line(port, monkeypatch):
    """Found 2026-12-07: MASTER_PORT=abc was int()'s ValueError traceback from the trainer, and the bash form handed
    it to deepspeed, whose own usage error followed."""
    from megamythos.errors import UserError
    from megamythos.training.pretrain import single_process_environment

    message = f"^MASTER_PORT='{port}' is no port number \\(1-65535\\): unset it"
    with pytest.raises(UserError, match=message):
        deepspeed_command({}, [], gpu=False, env={"MASTER_PORT": port})
    monkeypatch.setenv("RANK", "")
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("MASTER_PORT", port)
    with pytest.raises(UserError, match=message):
        single_process_environment()


def test_a_rank_refuses_launcher_flags_naming_the_form_that_takes_them():
    refuse_launcher_flags(["--local_rank=0", "--lr", "1", "--num-experts", "4"])
    with pytest.raises(LaunchError) as err:
        refuse_launcher_flags(["--lr", "1", "--master-port=29500"])
    assert str(err.value) == ("--master-port is a flag of `bash launchers/pretrain.sh`; under `deepspeed` use "
                              "--master_port before the script: deepspeed --master_port PORT launchers/pretrain.sh ...")
    with pytest.raises(LaunchError, match=r"^--no_ssh is a flag of `deepspeed`, not of the trainer: give it before "
                                          r"the script: deepspeed --no_ssh launchers/pretrain.sh \.\.\.$"):
        refuse_launcher_flags(["--no_ssh"])


def test_a_failed_launch_is_one_line_naming_the_signal_and_the_checkpoint(tmp_path):
    latest = tmp_path / "latest"
    assert failed_run(1, latest) == "deepspeed exited with code 1; no checkpoint was saved"
    latest.write_text("iter_0000004\n")
    assert failed_run(250, latest) == ("deepspeed exited with code 250 (a rank ended by SIGABRT; DeepSpeed stopped the "
                                       "others); the last checkpoint, iter_0000004, resumes with the same command")
    assert "(a rank" not in failed_run(200, latest)  # 256 - 200 = 56 is no signal


def test_exit_records_name_killed_ranks_and_errors_only_another_rank_met(tmp_path):
    """The launcher's reading of the ranks' exit records. Found 2026-12-06: a user error only rank 1 met (its shard
    of a save on a full disk) was never printed: rank 1 stayed quiet, as for errors every rank meets, and rank 0
    only said rank 1 had ended."""
    def ended(pid: int, rank: int, code: int | None, error: str | None = None) -> None:
        (tmp_path / str(pid)).write_text(str(rank))
        if code is not None:
            (tmp_path / f"{pid}.exit").write_text(str(code))
        if error is not None:
            (tmp_path / f"{pid}.error").write_text(error)

    ended(11, 0, 1)
    ended(12, 1, 2, "disk full while saving ckpt/iter_0000004 (...)")
    ended(13, 2, None)
    assert rank_errors(tmp_path) == ["rank 1: disk full while saving ckpt/iter_0000004 (...)"]
    assert unfinished_ranks(tmp_path) == ["rank 0 exited with code 1", "rank 1 exited with code 2",
                                          "rank 2 ended without finishing"]
    ended(11, 0, 2)  # rank 0 printed its own user error: the others met the same one
    assert rank_errors(tmp_path) == []


def test_a_finished_process_runs_its_exit_handlers_and_skips_the_teardown():
    """end_process: exit handlers run and buffered output is flushed, but nothing is destroyed in the teardown
    (where gloo's late destruction can abort a finished rank)."""
    script = ("import atexit, sys\n"
              "from megamythos.training.process_exit import end_process\n"
              "class Torn:\n"
              "    def __del__(self):\n"
              "        sys.__stderr__.write('torn down\\n')\n"
              "kept = Torn()\n"
              "atexit.register(lambda: sys.stderr.write('exit handler\\n'))\n"
              "sys.stdout.write('buffered')\n"
              "end_process(3)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (3, "buffered", "exit handler\n")
    torn = subprocess.run([sys.executable, "-c", script.replace("end_process(3)", "sys.exit(3)")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "torn down" in torn.stderr  # what the same script does on a normal exit


def test_a_save_after_the_signal_is_told_by_latest_being_replaced_not_by_clocks(tmp_path):
    """The supervisor judged "saved after the signal" by latest's mtime against this host's time: a file server
    whose clock lags said no checkpoint was saved (exit 1) after one was. It now compares the file's identity,
    which a save's rename changes."""
    latest = tmp_path / "latest"
    assert file_identity(latest) is None
    write_atomic(latest, "iter_0000002")
    before = file_identity(latest)
    assert file_identity(latest) == before  # nothing saved
    write_atomic(latest, "iter_0000004")
    os.utime(latest, ns=(before[1], before[1]))  # a server clock that stood still: only the new file tells
    assert file_identity(latest) != before


def test_the_job_ends_once_every_rank_finished_cleanly_without_waiting_for_the_runner(tmp_path):
    """DeepSpeed's launch.py noticed a finished rank up to 2 s late and its teardown and the runner's took another
    second: the supervisor now ends the job once every local rank recorded exit code 0 and ended. Stand-in
    runners: one that would sleep for a minute (ended at once, by SIGKILL), and one that exits 0 after half a
    second, which is waited for where a rank is not recorded, failed or still runs, or the job spans nodes."""
    def record(pid: int, code: str | None) -> None:
        for old in tmp_path.iterdir():
            old.unlink()
        (tmp_path / str(pid)).write_text("0")
        if code is not None:
            (tmp_path / f"{pid}.exit").write_text(code)

    def waited(seconds: str, local_ranks: int | None) -> int | None:
        """The stand-in runner's own exit code, or None where the supervisor ended it."""
        runner = subprocess.Popen(["sleep", seconds], start_new_session=True)
        assert wait_for_runner(runner, tmp_path, local_ranks) == 0
        return None if runner.returncode == -9 else runner.returncode

    rank = subprocess.Popen(["true"])
    rank.wait()
    record(rank.pid, "0")
    assert waited("60", local_ranks=1) is None
    assert waited("0.5", local_ranks=2) == 0  # the second rank has not started
    assert waited("0.5", local_ranks=None) == 0  # ranks on other nodes
    record(rank.pid, "1")  # launch.py stops the others and says so
    assert waited("0.5", local_ranks=1) == 0
    record(rank.pid, None)  # killed, or still running
    assert waited("0.5", local_ranks=1) == 0
    with subprocess.Popen(["sleep", "60"]) as running:  # exit record written, process not ended yet
        record(running.pid, "0")
        assert waited("0.5", local_ranks=1) == 0
        running.kill()


# A stand-in for the deepspeed runner and its one rank: it records its start (and, with "saved before", that
# `latest` names its state, as the trainer does before its end-of-run evaluation or after a save it stops with),
# says it is ready, and answers the supervisor's SIGTERM by exiting 0, as a rank does: "saves" first points
# `latest` at a new checkpoint.
STAND_IN_RANK = """
import os, signal, sys, time
from pathlib import Path
from types import SimpleNamespace
stage, ready, latest = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
records, pid = Path(os.environ["MEGAMYTHOS_EXIT_RECORDS"]), os.getpid()
def stop(signum, frame):
    if stage == "saves":
        Path(f"{latest}.new").write_text("iter_0000003")
        os.replace(f"{latest}.new", latest)
    (records / f"{pid}.exit").write_text("0")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(records / str(pid)).write_text("0")
if stage == "saved before":
    (records / f"{pid}.saved").write_text("iter_0000002")
ready.touch()
time.sleep(20)
"""


@pytest.mark.parametrize(("stage", "signum", "code", "said"), [
    ("saved before", signal.SIGTERM, 0, "checkpoint iter_0000002 saved just before the signal; the ranks stopped"),
    ("unsaved", signal.SIGTERM, 1, "no checkpoint was saved after the signal"),
    ("saves", signal.SIGUSR1, 0, "checkpoint iter_0000003 saved")])
def test_the_launcher_tells_a_signal_s_outcome(stage, signum, code, said, tmp_path):
    """A signal to ``bash launchers/pretrain.sh``'s supervisor, forwarded to a stand-in rank. Found 2026-12-07:
    SIGTERM during the end-of-run evaluation (or after it), which the ranks abandon, exiting 0, or just after a
    periodic save (the ranks stop with it) was `no checkpoint was saved after the signal`, exit 1, though `latest`
    named the state they stopped with: ranks that record so are now a saved stop; unsaved ones are still 1. And
    SIGUSR1 (a scheduler's warning, a stop signal for the ranks) ended the supervisor at once (exit 138, no line,
    its exit-record folder left) while the ranks saved on without it; it is now forwarded as SIGTERM is."""
    latest, ready = tmp_path / "latest", tmp_path / "ready"
    write_atomic(latest, "iter_0000002")
    script = ("import logging, sys; from pathlib import Path; from megamythos.training.launch import supervise; "
              "logging.basicConfig(level=logging.INFO); "
              "sys.exit(supervise([sys.executable, '-c', *sys.argv[1:]], Path(sys.argv[4])))")
    proc = subprocess.Popen([sys.executable, "-c", script, STAND_IN_RANK, stage, str(ready), str(latest)], cwd=REPO,
                            env={**os.environ, "TMPDIR": str(tmp_path)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert said in err, err
    assert not list(tmp_path.glob("megamythos-ranks-*")), "the launcher's exit-record folder was left"


def build_lock(root: Path, age_seconds: float) -> Path:
    """``root/deepspeed_shm_comm/lock`` as a build of the op that started ``age_seconds`` ago leaves it."""
    lock = root / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    os.utime(lock, (time.time() - age_seconds,) * 2)
    return lock


def test_a_build_lock_a_killed_build_left_is_refused_before_deepspeed_starts(tmp_path, monkeypatch):
    """Found 2026-12-07: a launch killed while DeepSpeed JIT-built an op left torch's ``<op>/lock`` in the
    extensions dir, and every later launch waited for it forever in ``deepspeed.init_distributed``, without a line.
    One older than a build takes is now one line naming it, before DeepSpeed starts (which here would hang)."""
    import deepspeed

    from megamythos.runtime.build_locks import STALE_AFTER_SECONDS, BuildLockError
    from megamythos.training.pretrain import init_distributed

    lock = build_lock(tmp_path, STALE_AFTER_SECONDS + 60)
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kwargs: pytest.fail("DeepSpeed started"))
    for name, value in {"TORCH_EXTENSIONS_DIR": str(tmp_path), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BuildLockError) as refused:
        init_distributed(1.0)
    assert str(refused.value) == (f"{lock}: the build lock of the op deepspeed_shm_comm, taken 1.0 h ago, longer "
                                  "than a build takes (a launch killed while it built the op left it); every launch "
                                  "would wait for it forever: delete it if no build is running, and run again")


def test_make_prebuild_ops_refuses_a_build_lock_a_killed_build_left(tmp_path):
    """Found 2026-12-07: ``make prebuild-ops`` (the last step of ``make install``) waited forever on a build lock a
    killed build left, where the trainer's ranks refuse it. It now runs the same check first: the one line, exit
    2, nothing built. Its process group is killed if it waits (without the check: forever)."""
    lock = build_lock(tmp_path, 2 * 3600)
    proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), "prebuild-ops", f"VENV={sys.prefix}",
                             f"PY={sys.executable}", f"TORCH_EXTENSIONS_DIR={tmp_path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("make prebuild-ops waited on the stale build lock")
    assert proc.returncode == 2, out + err
    assert f"error: {lock}: the build lock of the op deepspeed_shm_comm, taken 2.0 h ago" in err, err
    assert "building DeepSpeed's CPU comm op" not in out, out


def test_a_young_build_lock_is_named_in_a_warning_in_torch_s_own_cache(tmp_path, monkeypatch, caplog):
    """A build lock younger than a build takes may be another job's build, which the run waits for: a warning
    names it (from one rank per node) unless it goes at once (a load of a built op takes it for milliseconds); an
    old one is the one line. Also in torch's default extensions dir (``~/.cache/torch_extensions/<python>_<accelerator>
    /<op>``), used without ``TORCH_EXTENSIONS_DIR``."""
    from megamythos.runtime import build_locks
    from megamythos.runtime.build_locks import STALE_AFTER_SECONDS, BuildLockError, check_build_locks

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(build_locks, "SETTLE_SECONDS", 0.2)
    env: dict[str, str] = {}  # no TORCH_EXTENSIONS_DIR
    check_build_locks(env)  # no extensions dir yet: nothing to say
    lock = build_lock(tmp_path / "torch_extensions" / "py312_cpu", 120)
    with caplog.at_level(logging.WARNING, logger="megamythos.runtime.build_locks"):
        check_build_locks(env, warn=False)
        assert caplog.messages == []
        check_build_locks(env)
        assert caplog.messages == [f"{lock}: the op deepspeed_shm_comm is being built (for 2 min now), and this run "
                                   "waits until the build is done; if no build is running (a launch killed while it "
                                   "built the op), delete the file, or this run waits forever"]
        caplog.clear()
        monkeypatch.setattr(build_locks, "SETTLE_SECONDS", 600.0)
        threading.Timer(0.2, lock.unlink).start()  # another process's load of the built op, done
        check_build_locks(env)
        assert caplog.messages == []
    build_lock(tmp_path / "torch_extensions" / "py312_cpu", STALE_AFTER_SECONDS + 1)
    with pytest.raises(BuildLockError, match=f"^{lock}: the build lock of the op deepspeed_shm_comm"):
        check_build_locks(env, warn=False)


def test_a_launch_removes_the_exit_records_a_killed_launcher_left(tmp_path):
    """Found 2026-12-06 (long-run audit): each launcher killed with kill -9 (with its job, by the out-of-memory killer
    or a scheduler after its grace period) left its folder of exit records in the temporary directory for good (65
    of them in this machine's /tmp). The next launch on the host removes those whose launcher is gone; a live
    launcher's and another host's stay, and the launch's own goes when it ends."""
    host = socket.gethostname()
    killed = tmp_path / f"megamythos-ranks-{host}.{dead_pid()}-k1lled"
    running = tmp_path / f"megamythos-ranks-{host}.{os.getpid()}-running"
    elsewhere = tmp_path / f"megamythos-ranks-another-host.{dead_pid()}-unknown"
    for folder in (killed, running, elsewhere):
        folder.mkdir()
        (folder / "4242").write_text("0")
    code = ("import sys; from pathlib import Path; from megamythos.training.launch import supervise; "
            "sys.exit(supervise(['true'], Path(sys.argv[1])))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "latest")], cwd=REPO, check=True, timeout=60,
                   env={**os.environ, "TMPDIR": str(tmp_path)})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, elsewhere.name])


# ------------------------------------------------------------------------------------------- real launches
def trainer_args(corpus: Path) -> list[str]:
    return [*tiny_args(corpus, ITERS), *LAYOUT]


def launch(cmd: list[str], run_dir: Path, log_name: str = "log.txt") -> subprocess.Popen:
    """Start ``cmd`` with the launcher's defaults pointing into ``run_dir``."""
    return spawn(cmd, run_dir / log_name, {**launch_env(), "RUN_DIR": str(run_dir)})


def train(cmd: list[str], run_dir: Path) -> Path:
    proc = launch(cmd, run_dir)
    text = finish(proc, run_dir / "log.txt")
    assert proc.returncode == 0, text[-6000:]
    return run_dir


def first_losses(run_dir: Path) -> dict[int, float]:
    got = losses(run_dir / "metrics.jsonl")
    assert sorted(got) == list(range(1, ITERS + 1))
    return got


def trainer_record(run_dir: Path) -> dict:
    """The trainer's arguments as the checkpoint records them, with this run's folder written as RUN_DIR."""
    text = (run_dir / "checkpoints" / f"iter_{ITERS:07d}" / "train_args.json").read_text()
    return json.loads(text.replace(str(run_dir), "RUN_DIR"))["args"]


@pytest.fixture(scope="module")
@trains
def bash1(tmp_path_factory, corpus) -> Path:
    """The bash form without --master-port while another program holds deepspeed's default port 29500 (as
    another job's store would: IPv6, dual stack): a single-node launch picks a free port itself."""
    cmd = ["bash", str(LAUNCHER), "--num-gpus", "1", *trainer_args(corpus)]
    with contextlib.ExitStack() as stack:
        if port_free(29500):
            busy = stack.enter_context(socket.socket(socket.AF_INET6))
            busy.bind(("", 29500))
            busy.listen()
        return train(cmd, tmp_path_factory.mktemp("bash1"))


@pytest.mark.distributed
@pytest.mark.launch
def test_deepspeed_form_is_the_bash_form(bash1, tmp_path, corpus):
    design = train(design_form(["--num_gpus", "1", "--master_port", str(free_port())], trainer_args(corpus)), tmp_path)
    rank = f"spawned with command: ['{sys.executable}', '-u', '{LAUNCHER}'"  # Python runs the script itself
    assert rank in (design / "log.txt").read_text()
    assert trainer_record(design) == trainer_record(bash1)
    assert trainer_record(design)["ds_config"] == str(REPO / "ds_configs" / "cpu-debug.json")  # the CPU default
    assert first_losses(design) == first_losses(bash1)  # same process, same arguments: bitwise


@pytest.mark.distributed
@pytest.mark.launch
def test_a_rank_given_the_cores_by_the_deepspeed_form_spins_its_threads(tmp_path, corpus):
    """Without OMP_NUM_THREADS the rank takes the cores and OMP_WAIT_POLICY=ACTIVE; OpenMP read its settings when
    torch loaded, so the rank starts itself again with them: the policy is in its start-up environment."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: one thread per rank, no pool to spin")
    env = {k: v for k, v in launch_env().items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    cmd = design_form(["--num_gpus", "1", "--master_port", str(free_port())], trainer_args(corpus))
    proc = spawn(cmd, tmp_path / "log.txt", {**env, "RUN_DIR": str(tmp_path)})
    text = finish(proc, tmp_path / "log.txt")
    assert proc.returncode == 0, text[-6000:]
    assert f"CPU threads per rank: {cores} (OMP_WAIT_POLICY ACTIVE); host memory: freed memory kept" in text, \
        text[-6000:]


@pytest.fixture(scope="module")
@trains
def no_python2(tmp_path_factory, corpus) -> Path:
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--no_python", str(LAUNCHER),
           *trainer_args(corpus)]
    return train(cmd, tmp_path_factory.mktemp("no_python2"))


@pytest.mark.distributed
@pytest.mark.launch
def test_no_python_form_on_two_processes_matches(bash1, no_python2):
    assert "world 2" in (no_python2 / "log.txt").read_text()
    assert trainer_record(no_python2) == trainer_record(bash1)
    got, want = first_losses(no_python2), first_losses(bash1)
    assert max(abs(got[i] - want[i]) for i in want) <= TOL, (got, want)


@pytest.mark.distributed
@pytest.mark.launch
def test_deepspeed_form_on_two_nodes_through_a_hostfile(no_python2, tmp_path, corpus):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(free_port())
    procs = [launch(design_form(["--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(r), "--master_addr",
                                 "127.0.0.1", "--master_port", port], trainer_args(corpus)), tmp_path, f"node{r}.txt")
             for r in (0, 1)]
    for r, proc in enumerate(procs):
        text = finish(proc, tmp_path / f"node{r}.txt")
        assert proc.returncode == 0, text[-4000:]
    assert "world 2" in (tmp_path / "node0.txt").read_text()
    got, want = first_losses(tmp_path), first_losses(no_python2)
    assert max(abs(got[i] - want[i]) for i in want) <= 1e-6, (got, want)


@pytest.mark.distributed
@pytest.mark.launch
def test_bash_flag_under_deepspeed_is_refused_in_one_line(tmp_path, corpus):
    cmd = design_form(["--num_gpus", "2", "--master_port", str(free_port())],
                      ["--num-gpus", "2", *trainer_args(corpus)])
    proc = launch(cmd, tmp_path)
    text = finish(proc, tmp_path / "log.txt")
    assert proc.returncode == 2, text[-4000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert errors == ["error: --num-gpus is a flag of `bash launchers/pretrain.sh`; under `deepspeed` use --num_gpus "
                      "before the script: deepspeed --num_gpus N launchers/pretrain.sh ..."]  # rank 0 only
    assert "Traceback" not in text and not (tmp_path / "metrics.jsonl").exists()


def test_a_port_held_in_either_address_family_is_not_free():
    """torch's store listens dual-stack on IPv6: an IPv4-only probe took such a port for free (the EADDRINUSE
    traceback after a minute of start-up)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        with socket.socket(family) as busy:
            busy.bind(("", 0))
            busy.listen()
            assert not port_free(busy.getsockname()[1]), family


def test_help_of_both_launchers_lists_the_launcher_flags_without_starting_deepspeed():
    env = launch_env()
    bash = subprocess.run(["bash", str(LAUNCHER), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert bash.returncode == 0, bash.stderr
    assert "--num-gpus N" in bash.stdout and "--hostfile FILE" in bash.stdout and "--train-iters" in bash.stdout
    assert "deepspeed" not in bash.stderr.lower()  # answered before any runner or rank starts
    big = subprocess.run(["bash", str(LAUNCHER.parent / "pretrain_1t.sh"), "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert big.returncode == 0 and "--dry-run" in big.stdout and "NODES" in big.stdout, big.stderr


def test_heartbeat_speaks_up_in_silence_and_keeps_the_exit_code():
    """make install wraps its long steps in launchers/heartbeat.py: a line after each silent stretch, only the
    chosen lines shown, everything shown when the command fails, and the command's exit code."""
    script = str(LAUNCHER.parent / "heartbeat.py")
    quiet = subprocess.run([sys.executable, script, "--every", "1", "--what", "waiting", "--only", "^keep", "--",
                            "bash", "-c", "echo keep 1; echo drop; sleep 2.5; echo keep 2"],
                           capture_output=True, text=True, timeout=60)
    lines = quiet.stdout.splitlines()
    assert quiet.returncode == 0 and lines[0] == "keep 1" and lines[-1] == "keep 2" and "drop" not in quiet.stdout
    assert any(line.startswith("  ... still waiting (") for line in lines[1:-1]), lines
    failed = subprocess.run([sys.executable, script, "--only", "^keep", "--", "bash", "-c", "echo why; exit 3"],
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 3 and "why" in failed.stdout


def test_heartbeat_help_names_the_command_to_type_and_its_defaults():
    """Found 2026-12-07: its --help began `usage: heartbeat.py`, a file that runs from nowhere the Makefile runs
    it, showed the docstring's ``literals``, and gave no default for --every or --what."""
    out = subprocess.run([sys.executable, str(LAUNCHER.parent / "heartbeat.py"), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: python3 launchers/heartbeat.py [-h]"), out.stdout
    assert "``" not in out.stdout and "(default: 10)" in out.stdout and "(default: working)" in out.stdout
    # a prefix of a flag is refused, as by every other command line (--ever ran as --every)
    prefix = subprocess.run([sys.executable, str(LAUNCHER.parent / "heartbeat.py"), "--ever", "1", "--", "true"],
                            capture_output=True, text=True, timeout=60)
    assert prefix.returncode == 2 and "unrecognized arguments: --ever" in prefix.stderr, prefix.stderr


EVERY_REFUSED = "argument --every: must be a finite number > 0"


@pytest.mark.parametrize("argv, message", [(["--every", "nan", "--", "true"], EVERY_REFUSED),
                                           (["--every=-1", "--", "true"], EVERY_REFUSED),
                                           (["--only", "(", "--", "true"],
                                            "argument --only: '(' is not a regular expression (missing ), "),
                                           (["--", "/no/such/command"],
                                            "cannot run /no/such/command: No such file or directory"),
                                           (["--what"], "argument --what: expected one argument"), ([], "no command")])
def test_heartbeat_refuses_what_it_cannot_use_in_one_error_line(argv: list[str], message: str) -> None:
    """Found 2026-12-07 (bad-input sweep): --every nan never spoke up and -1 spoke every second, both silently; a
    malformed --only and a command that does not exist were tracebacks (re.error, FileNotFoundError); then each
    line came under argparse's usage block, which no other command line prints (found 2026-12-07)."""
    out = subprocess.run([sys.executable, str(LAUNCHER.parent / "heartbeat.py"), *argv], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f"python3 launchers/heartbeat.py: error: {message}"), out.stderr


def run_slurm_script(tmp_path: Path, mode: str, args: list[str]) -> subprocess.CompletedProcess:
    """launchers/slurm.sbatch ``args`` in MODE ``mode``, submitted from ``tmp_path``, for a job of two nodes of 8 GPUs,
    with stand-ins for scontrol, srun and deepspeed that print what they were given (and the environment file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'n1\\nn2\\n'\n")
    for name in ("srun", "deepspeed"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho {name} "$@"\n[ -n "$DS_ENV_FILE" ] && cat "$DS_ENV_FILE"\n'
                                    'echo "threads=$OMP_NUM_THREADS hca=$NCCL_IB_HCA"\nexit 0\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**launch_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "MODE": mode, "SLURM_SUBMIT_DIR": str(tmp_path),
           "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_CPUS_PER_TASK": "64", "SLURM_NTASKS": "2", "RUN_DIR": "/shared/runs/x"}
    env = {key: value for key, value in env.items() if key != "OMP_NUM_THREADS" and "NCCL" not in key}
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".deepspeed_env").write_text("NCCL_IB_HCA=mlx5\nNCCL_DEBUG=INFO\n")
    env["HOME"] = str(tmp_path / "home")
    return subprocess.run(["bash", str(REPO / "launchers" / "slurm.sbatch"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("mode", ["srun", "pdsh"])
def test_the_slurm_script_starts_one_rank_per_gpu_and_exports_its_settings(mode, tmp_path):
    """Found 2026-12-06 (read, no cluster here): MODE=srun inherited the batch step's one task of 64 CPUs per node,
    so srun started one rank per node (or asked for 8 x 64 CPUs); in pdsh mode RUN_DIR and the NCCL settings never
    reached the other nodes; found 2026-12-07 (read: DeepSpeed 0.19.8's runner reads only the file DS_ENV_FILE
    names) the user's ~/.deepspeed_env, where NCCL/InfiniBand settings live, was hidden by ours. The script runs
    here with stand-ins for scontrol, srun and deepspeed that print what they were given."""
    out = run_slurm_script(tmp_path, mode, ["--preset", "10b"])
    assert out.returncode == 0, out.stderr
    if mode == "srun":
        assert out.stdout.startswith("srun --nodes=2 --ntasks=16 --ntasks-per-node=8 --cpus-per-task=8 "), out.stdout
        assert "threads=8 hca=mlx5\n" in out.stdout  # found 2026-12-07: unset, the ranks divided 8 cores by 8 again
    else:
        assert out.stdout.startswith("deepspeed --hostfile logs/hostfile-7 --master_addr n1 "), out.stdout
        assert "RUN_DIR=/shared/runs/x" in out.stdout and "NCCL_SOCKET_IFNAME=^lo,docker" in out.stdout
        assert "NCCL_IB_HCA=mlx5\nNCCL_DEBUG=INFO\n" in out.stdout  # the user's file, over our default WARN
        assert (tmp_path / "logs" / "hostfile-7").read_text() == "n1 slots=8\nn2 slots=8\n"


@pytest.mark.parametrize("mode", ["srun", "pdsh"])
def test_the_slurm_scripts_pdsh_mode_refuses_an_argument_the_nodes_shell_would_change(mode, tmp_path):
    """Found 2026-12-07 (test_an_argument_pdsh_would_change_is_refused_and_every_other_reaches_the_nodes): in pdsh
    mode ``--save "runs/it's"`` reached deepspeed, whose pdsh command ended on every node with an open quote. It is
    one line before deepspeed starts; srun hands the arguments to the ranks as they are, and takes it."""
    out = run_slurm_script(tmp_path, mode, ["--save", "runs/it's", "--data-path", "/data/my corpus"])
    if mode == "srun":
        assert out.returncode == 0 and "--save runs/it's --data-path /data/my corpus" in out.stdout, out.stderr
        return
    assert out.returncode == 2 and "deepspeed" not in out.stdout, out.stdout
    assert one_error_line(out.stderr).startswith("error: \"runs/it's\" would not reach the other nodes as it is")


def test_every_node_gets_the_users_deepspeed_env_then_this_shells_settings_then_defaults(tmp_path, caplog):
    """Found 2026-12-07 (read: DeepSpeed 0.19.8's runner reads the file DS_ENV_FILE names instead of
    ~/.deepspeed_env): our launchers' file hid the user's NCCL/InfiniBand settings. The file we write carries the
    user's lines (home, then working directory, as DeepSpeed reads them); a setting of the launching shell wins
    with a warning naming the key; our NCCL defaults fill what neither sets."""
    from megamythos.errors import UserError
    from megamythos.training import node_env

    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    (home / ".deepspeed_env").write_text("NCCL_IB_HCA=mlx5\nNCCL_DEBUG=INFO\nMY_SETTING=a=b\n\n")
    (cwd / ".deepspeed_env").write_text("MY_SETTING=c\n")
    files = node_env.user_env_files({}, home, cwd)
    assert files == [home / ".deepspeed_env", cwd / ".deepspeed_env"]
    shell = {"NCCL_IB_HCA": "mlx5_0", "RUN_DIR": "/shared/r", "HOME": str(home), "TORCH_NCCL_BLOCKING_WAIT": "1",
             "OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "ACTIVE"}
    with caplog.at_level(logging.WARNING, logger=node_env.__name__):
        env = node_env.node_environment(shell, files)
    assert env == {"NCCL_IB_HCA": "mlx5_0", "NCCL_DEBUG": "INFO", "MY_SETTING": "c", "RUN_DIR": "/shared/r",
                   "TORCH_NCCL_BLOCKING_WAIT": "1", "OMP_NUM_THREADS": "4", "NCCL_SOCKET_IFNAME": "^lo,docker",
                   "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    assert [r.getMessage() for r in caplog.records] == [
        f"NCCL_IB_HCA=mlx5_0 of this shell replaces NCCL_IB_HCA=mlx5 of {home / '.deepspeed_env'} for every node"]
    # a DS_ENV_FILE the user set names their file; once where home is the working directory
    (home / "mine").write_text("A=1\n")
    assert node_env.user_env_files({"DS_ENV_FILE": "mine"}, home, home) == [home / "mine"]
    assert node_env.node_environment({}, []) == node_env.NODE_DEFAULTS
    (cwd / ".deepspeed_env").write_text("MY_SETTING=c\nexport X\n")  # DeepSpeed's runner: a ValueError traceback
    with pytest.raises(UserError, match=rf"^{cwd / '.deepspeed_env'}:2: 'export X' is not KEY=VALUE"):
        node_env.node_environment({}, [cwd / ".deepspeed_env"])
    out = tmp_path / "logs" / "env"
    node_env.write_node_environment(out, {"RUN_DIR": "/r"}, home, cwd / "none")
    assert out.read_text().splitlines()[:4] == ["NCCL_IB_HCA=mlx5", "NCCL_DEBUG=INFO", "MY_SETTING=a=b", "RUN_DIR=/r"]


def nodes_environment(out: Path, env: dict[str, str]) -> dict[str, dict[str, str]]:
    """{mode: the environment a node's rank gets} from the environment file ``out`` in a shell of ``env``: "pdsh",
    as DeepSpeed 0.19.8's runner reads the DS_ENV_FILE (its ``add_export`` quoting) and pdsh runs it in bash, and
    "srun", as launchers/slurm.sbatch's srun mode reads it, under the script's own ``set -euo pipefail``."""
    from deepspeed.launcher.multinode_runner import MultiNodeRunner

    runner = SimpleNamespace(exports={})
    for line in out.read_text().splitlines(keepends=True):  # runner.py's loop over the DS_ENV_FILE
        MultiNodeRunner.add_export(runner, *line.split("=", maxsplit=1))
    pdsh = "".join(f"export {key}={value}; " for key, value in runner.exports.items())  # PDSHRunner.get_cmd's
    script = (REPO / "launchers" / "slurm.sbatch").read_text().splitlines()
    strict = next(line for line in script if line.startswith("set -"))
    srun = f"{strict}; " + next(line for line in script if "read -r line" in line).strip().replace(
        '"$NODE_ENV"', str(out)) + "; "
    show = "python3 -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    return {mode: json.loads(subprocess.run(["bash", "-c", prefix + show], capture_output=True, text=True, check=True,
                                            env={"PATH": os.environ["PATH"], **env}).stdout)
            for mode, prefix in (("pdsh", pdsh), ("srun", srun))}


def test_the_nodes_get_the_users_settings_as_written_whichever_way_the_file_is_read(tmp_path, monkeypatch, capsys):
    """Found 2026-12-07 (review): a ``#`` comment or an ``export KEY=VALUE`` line of ~/.deepspeed_env was copied
    into the file every node reads: DeepSpeed 0.19.8's pdsh command then began ``export # KEY=V; ...``, a comment to
    the end of the line (the node ran nothing), and slurm.sbatch's srun mode stopped on ``export 'export KEY=V'``;
    a quoted value reached the nodes cut at its first space. Found 2026-12-07 (review of the fix): a ``$``,
    backquote or ``\\`` of a value was expanded by the node's shell in pdsh mode (inside the runner's double quotes;
    a backquote ran a command) and kept as written in srun mode. The file we write is read here as the runner reads
    it (its own ``add_export`` quoting, run by bash as pdsh runs it) and by slurm.sbatch's own srun-mode line: both
    give each node the user's values as DeepSpeed gives them (``$BASE`` expanded) and this shell's as they are."""
    from megamythos.training import node_env

    home = tmp_path / "home"
    home.mkdir()
    (home / ".deepspeed_env").write_text("# NCCL_IB_HCA=mlx4 (the old cluster)\nexport NCCL_IB_HCA=mlx5\n"
                                         "  # tuning\nMY_FLAGS = --a=1 --b 2\nNCCL_SOCKET_IFNAME=^lo,docker0\n"
                                         "LD_LIBRARY_PATH=/opt/x:$BASE\n")
    shell = {"RUN_DIR": "/shared/$USER/`hostname` \\ \"run\" 1", "NCCL_DEBUG": "INFO"}
    want = {"NCCL_IB_HCA": "mlx5", "MY_FLAGS": "--a=1 --b 2", "NCCL_SOCKET_IFNAME": "^lo,docker0",
            "LD_LIBRARY_PATH": "/opt/x:/usr/lib/base", **shell}
    out = tmp_path / "node-env"
    node_env.write_node_environment(out, shell, home, tmp_path)
    for mode, got in nodes_environment(out, {"BASE": "/usr/lib/base"}).items():
        assert {key: got.get(key) for key in want} == want, mode
    (home / ".deepspeed_env").write_text('NCCL_IB_HCA=mlx5\nMY_FLAGS="--a 1"\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert node_env.main([str(out)]) == 2
    assert capsys.readouterr().err == (f"error: {home / '.deepspeed_env'}:2: 'MY_FLAGS=\"--a 1\"' has a \" in its "
                                       "value, which DeepSpeed's runner puts inside double quotes of its own (a "
                                       "\"quoted\" value breaks them); write the value without quotes\n")


def test_a_users_value_naming_an_unset_variable_reaches_srun_nodes_as_pdsh_ones(tmp_path):
    """Found 2026-12-07 (review of the escaping): slurm.sbatch runs under ``set -u``, so in srun mode a value of
    ~/.deepspeed_env naming a variable the batch shell lacks (``LD_LIBRARY_PATH=/opt/x:$LD_LIBRARY_PATH``, the
    documented example, with no LD_LIBRARY_PATH set) stopped the batch script with ``unbound variable`` before any
    rank started, where DeepSpeed's pdsh mode gives the nodes ``/opt/x:``."""
    from megamythos.training import node_env

    home = tmp_path / "home"
    home.mkdir()
    (home / ".deepspeed_env").write_text("LD_LIBRARY_PATH=/opt/x:$LD_LIBRARY_PATH\nNCCL_IB_HCA=mlx5\n")
    out = tmp_path / "node-env"
    node_env.write_node_environment(out, {}, home, tmp_path)
    for mode, got in nodes_environment(out, {}).items():
        assert (got.get("LD_LIBRARY_PATH"), got.get("NCCL_IB_HCA")) == ("/opt/x:", "mlx5"), mode


def test_a_users_read_only_bash_variable_is_skipped_in_both_modes(tmp_path, caplog):
    """Found 2026-12-07: a key of ~/.deepspeed_env naming a read-only bash variable (``UID``) stopped
    slurm.sbatch's srun mode (``UID: readonly variable`` under ``set -e``) before any rank started, where DeepSpeed's
    pdsh mode goes on without it. It is left out of the file every node reads, with a warning naming file and line."""
    from megamythos.training import node_env

    home = tmp_path / "home"
    home.mkdir()
    (home / ".deepspeed_env").write_text("NCCL_IB_HCA=mlx5\nUID=1234\nMY_FLAGS=1\n")
    out = tmp_path / "node-env"
    with caplog.at_level(logging.WARNING):
        node_env.write_node_environment(out, {}, home, tmp_path)
    assert f"{home / '.deepspeed_env'}:2: skipping UID" in caplog.text
    for mode, got in nodes_environment(out, {}).items():
        assert (got.get("NCCL_IB_HCA"), got.get("MY_FLAGS"), got.get("UID")) == ("mlx5", "1", None), mode


def test_forwarded_values_reach_the_nodes_as_they_are_and_only_names_a_shell_exports(tmp_path):
    """The escaping of the launching shell's values (``literal``) checked against bash for every printable ASCII
    character, a trailing backslash and spaces inside it, in both modes (DeepSpeed's runner strips a value's outer
    spaces). Found 2026-12-07 (review): a variable of the launching shell named ``NCCL_`` and a non-ASCII letter,
    which no shell exports but another program may set, was forwarded: srun mode's ``export`` of it stopped the batch
    script (``not a valid identifier``, under ``set -e``); such a name is not forwarded."""
    from megamythos.training import node_env

    value = "".join(chr(c) for c in range(33, 127)) + " $(true) ${X:-y} `true` \\"
    out = tmp_path / "node-env"
    node_env.write_node_environment(out, {"RUN_DIR": value, "NCCL_\u00e9": "1"}, tmp_path, tmp_path)
    for mode, got in nodes_environment(out, {}).items():
        assert got["RUN_DIR"] == value, mode


@pytest.mark.parametrize("value", ["/opt/x\\", "a`hostname", "a$(hostname", "a${HOME"])
def test_a_users_value_no_shell_reads_inside_quotes_is_refused_naming_its_line(tmp_path, monkeypatch, capsys, value):
    """Found 2026-12-07 (review of the escaping): a value of ~/.deepspeed_env ending in a lone ``\\`` or leaving a
    backquote, ``$(`` or ``${`` open was written into the file every node reads, where DeepSpeed's double quotes
    made it a syntax error: each node's pdsh command ended before the rank started, and slurm.sbatch's srun mode
    stopped with ``unexpected EOF``. It is one line naming the file and line, exit 2, no file written; a value that
    closes what it opens is read as DeepSpeed reads it."""
    from megamythos.training import node_env

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    env_file = tmp_path / ".deepspeed_env"
    env_file.write_text(f"NCCL_IB_HCA=mlx5\nLD_LIBRARY_PATH={value}\n")
    out = tmp_path / "node-env"
    assert node_env.main([str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {env_file}:2: {'LD_LIBRARY_PATH=' + value!r} ends inside what its value opens (a trailing \\, or a "
        "backquote, $( or ${ left open), a syntax error in DeepSpeed's double quotes on every node; close it, or "
        "escape a trailing \\ as \\\\\n")
    assert not out.exists()
    env_file.write_text("LD_LIBRARY_PATH=/opt/x\\\\:`echo y`:$(echo z):${HOME}\n")
    assert node_env.read_env_file(env_file) == {"LD_LIBRARY_PATH": "/opt/x\\\\:`echo y`:$(echo z):${HOME}"}


def test_a_forwarded_value_with_a_line_break_is_refused_naming_its_variable(tmp_path, monkeypatch, capsys):
    """Found 2026-12-07: a forwarded variable with a line break wrote a second line into the file every node reads
    (``NCCL_SOCKET_IFNAME=$'ib0\\nNCCL_IB_DISABLE=1'`` set NCCL_IB_DISABLE=1 on every node, in both modes). It is
    one line naming the variable, exit 2, and no file is written."""
    from megamythos.training import node_env

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0\nNCCL_IB_DISABLE=1")
    out = tmp_path / "node-env"
    assert node_env.main([str(out)]) == 2
    assert capsys.readouterr().err == (
        "error: NCCL_SOCKET_IFNAME='ib0\\nNCCL_IB_DISABLE=1' of this shell has a line break in its value, which "
        "would end its line of the environment file every node reads (the rest read as a line, or a variable, of its "
        "own); give the value on one line\n")
    assert not out.exists()


def through_pdsh(args: list[str], cwd: Path) -> list[str] | None:
    """The arguments a rank on another node gets for ``args``: DeepSpeed 0.19.8's pdsh command line (its own
    ``PDSHRunner``, launched from ``cwd``), whose remote part is read by bash as pdsh's ssh has each node read it,
    with the rank's Python replaced by ``printf``; None where the node's command fails."""
    from deepspeed.launcher.multinode_runner import PDSHRunner

    options = SimpleNamespace(user_args=args, user_script="launchers/pretrain.sh", launcher_args="", ssh_port=None,
                              master_addr="n1", master_port=29500, venv_script=None, no_python=False, module=False,
                              no_local_rank=False, save_pid=False, enable_each_rank_log=None)
    with contextlib.chdir(cwd):
        cmd, _, _ = PDSHRunner(options, "WORLD").get_cmd({}, {"n1": [8], "n2": [8]})
    remote = cmd[cmd.index("-w") + 2:]
    remote[remote.index(sys.executable)] = "printf '%s\\0'"
    out = subprocess.run(["bash", "-c", " ".join(remote).replace("%n", "1")], capture_output=True, timeout=30,
                         cwd=cwd)
    words = out.stdout.decode().split("\0")[:-1]
    return words[words.index("launchers/pretrain.sh") + 1:] if out.returncode == 0 and out.stderr == b"" else None


def test_an_argument_pdsh_would_change_is_refused_and_every_other_reaches_the_nodes(tmp_path):
    """Found 2026-12-07 (DeepSpeed 0.19.8's runner, read and run here with bash in pdsh's place): a job started
    over ssh (``--hostfile`` without ``--node_rank``; slurm.sbatch's pdsh mode; pretrain_1t.sh) hands its arguments
    to each node's shell, quoting only those with a space: ``--save it's`` ended every node's command (an open
    quote), ``--save '$HOME/x'`` and ``'~/x'`` saved under the node's home, ``'*.json'`` became the files it
    matched, ``a;b`` ran ``b``, an empty value vanished. Every argument our check passes arrives as it is (printable
    ASCII in every position, tab, line break, a non-ASCII letter, beside a space or not), and those that broke are
    refused, as is a working directory the runner's bare ``cd`` would change."""
    from megamythos.runtime.remote_words import RemoteWordError, check_remote_words, remote_change

    for decoy in ("xzy", "x", "y", "za b"):  # what a glob would match
        (tmp_path / decoy).write_text("")
    chars = [chr(c) for c in range(32, 127)] + ["\t", "\n", "é"]
    candidates = [form.format(c) for c in chars for form in ("x{}y", "{}x", "x{}", "a b{}c", "{}a b", "{}")]
    passed = [arg for arg in candidates if remote_change(arg) is None]
    plain = ["/data/my corpus/", "/home/josé/runs/", "runs/exp=1,lr=3e-4/", "--save=-x", "./-x", "my dir's/x",
             'a "b" c', "0.5", "--save=/tmp/a b"]
    assert all(remote_change(arg) is None for arg in plain)
    assert through_pdsh(passed + plain, tmp_path) == passed + plain
    broke = ["it's/", "$HOME/x", "my $HOME/x", "~/x", "*y", "a;b", "a&b", "a|b", "(x)", "a\\b", "#a", "a\tb",
             "x\ny", "a`b c", "a{b,c}", "", "run%n", "x=~/y"]
    for arg in broke:
        assert remote_change(arg) is not None, arg
        assert through_pdsh(["--save", arg], tmp_path) != ["--save", arg], arg
    with pytest.raises(RemoteWordError, match=r"^\"it's/\" would not reach the other nodes as it is: the node's "
                                              r"shell reads \"'\" unquoted \(DeepSpeed's pdsh .*\); rename the path"):
        check_remote_words(["--save", "it's/"], str(tmp_path))
    odd = tmp_path / "my runs"
    odd.mkdir()
    assert through_pdsh(["x"], odd) is None  # `cd .../my runs` fails: the rank would run in the home directory
    with pytest.raises(RemoteWordError, match="^the working directory .*my runs' would not reach the other nodes"):
        check_remote_words(["--save", "/data/my corpus"], str(odd))


def test_a_launch_over_ssh_checks_its_arguments_and_one_without_ssh_does_not(tmp_path):
    """Which launches of ``bash launchers/pretrain.sh`` go through pdsh (:func:`over_ssh`): a hostfile of several
    hosts as --include/--exclude/--num_nodes leave it, without --node_rank."""
    from megamythos.training.launch import over_ssh

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("n1 slots=8\nn2 slots=8\n")
    many = {"hostfile": str(hostfile)}
    assert over_ssh(many) and over_ssh({**many, "exclude": "n1:0"})
    for alone in ({}, {**many, "node_rank": "0"}, {**many, "num_nodes": "1"}, {**many, "include": "n2:0,1"},
                  {**many, "exclude": "n1"}):
        assert not over_ssh(alone), alone


def test_bash_launcher_over_ssh_refuses_an_argument_pdsh_would_change_before_deepspeed_starts(tmp_path, monkeypatch):
    """Found 2026-12-07 (test_an_argument_pdsh_would_change_is_refused_and_every_other_reaches_the_nodes): on a GPU
    node, ``bash launchers/pretrain.sh --hostfile F --save "runs/it's"`` ran deepspeed, whose pdsh command then
    ended on every node. :func:`launch` refuses it first (the GPU is this test's assumption: a CPU node refuses
    --hostfile without --node_rank before that); with --node_rank nothing goes through a shell, and it is no
    refusal of this check."""
    from megamythos.runtime.remote_words import RemoteWordError
    from megamythos.training import launch as launcher

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("n1 slots=8\nn2 slots=8\n")
    monkeypatch.setattr(launcher, "has_gpu", lambda: True)
    for key, value in launch_env().items():
        monkeypatch.setenv(key, value)  # what launch() sets for the ranks, so that it changes nothing here
    monkeypatch.setenv("PATH", launch_env()["PATH"])
    with pytest.raises(RemoteWordError, match="^\"runs/it's\" would not reach the other nodes as it is"):
        launcher.launch(["--hostfile", str(hostfile), "--save", "runs/it's"])
