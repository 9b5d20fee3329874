"""How a trainer process ends once its work is done: exit handlers, then ``os._exit``, no interpreter teardown.

After :func:`megamythos.training.pretrain.main` returns, every file of the run is closed and the process group is
destroyed, yet DeepSpeed and torch still hold gloo objects (module globals, the engine's reference cycles) that
Python's teardown destroys late; now and then, after a complete run, a gloo worker thread then aborts the
process ("terminate called without an active exception", exit -6) and DeepSpeed's launcher reports the run as
failed. Ending the process as a forked ``multiprocessing`` child does (its exit handlers, then ``os._exit``)
leaves nothing for that teardown to do.
"""
from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def end_process(code: int) -> NoReturn:
    """Run the exit handlers (logging's flush and close, torch's compile-worker shutdown), flush stdout and
    stderr, and end the process with ``code``."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
