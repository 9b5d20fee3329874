"""How a trainer process ends once its work is done: exit handlers, then ``os._exit``, no interpreter teardown.

After :func:`megamythos.training.pretrain.main` returns, every file of the run is closed and the process group is
destroyed, yet DeepSpeed and torch still hold gloo objects (module globals, the engine's reference cycles) that
Python's teardown destroys late; now and then, after a complete run, a gloo worker thread then aborts the
process ("terminate called without an active exception", exit -6) and DeepSpeed's launcher reports the run as
failed. Ending the process as a forked ``multiprocessing`` child does (its exit handlers, then ``os._exit``)
leaves nothing for that teardown to do.

Exit records: under ``bash launchers/pretrain.sh`` each local rank writes ``<pid>`` (its rank) into the folder
named by ``EXIT_RECORDS_ENV`` when it starts, ``<pid>.exit`` (its exit code) when it ends here, and a rank other
than 0 ``<pid>.error`` (its one-line user error, which only rank 0 prints). DeepSpeed's
runner exits 0 when its ``launch.py`` dies of a signal, whatever became of the ranks; the records let the
supervisor tell a finished run from ranks that were killed with it (see :mod:`megamythos.training.launch`).
"""
from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import NoReturn

EXIT_RECORDS_ENV = "MEGAMYTHOS_EXIT_RECORDS"  # set for the ranks by megamythos.training.launch.supervise


def write_exit_record(suffix: str, text: str) -> None:
    """Write ``<pid><suffix>`` holding ``text`` into the exit-record folder, if this process has one here (a rank
    on another node has the variable but not the folder)."""
    folder = os.environ.get(EXIT_RECORDS_ENV)
    if folder and os.path.isdir(folder):
        try:
            Path(folder, f"{os.getpid()}{suffix}").write_text(text)
        except OSError:
            pass


def record_start() -> None:
    """Say that this rank started: a start record without an exit record means the rank was killed."""
    write_exit_record("", os.environ.get("RANK", "?"))


def end_process(code: int) -> NoReturn:
    """Run the exit handlers (logging's flush and close, torch's compile-worker shutdown), flush stdout and
    stderr, write this rank's exit record and end the process with ``code``."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    write_exit_record(".exit", str(code))  # last: the supervisor may end the job once every rank has one
    os._exit(code)
