"""The build locks of torch's JIT-built extensions (DeepSpeed's ops), which a killed build leaves behind.

DeepSpeed builds an op the first time a process loads it (on CPU its shared-memory comm op, in
``deepspeed.init_distributed``; its CPU Adam) through ``torch.utils.cpp_extension.load``, which creates
``<extensions dir>/<op>/lock`` for the build and removes it afterwards (``torch.utils.file_baton.FileBaton``).
Every other process that loads the op, built or not, finds the file and waits, polling, until it is gone. A launch
killed while it built (``kill -9``, a preemption, Ctrl-C at the wrong moment) leaves the file, and every later
launch then waits for it forever, without a line. :func:`check_build_locks` runs before DeepSpeed starts: a lock
older than :data:`STALE_AFTER_SECONDS` is refused in one line, a younger one (another job building the op now, or
a build just killed) is named in a warning unless it goes within :data:`SETTLE_SECONDS` (a load of an op that is
built already takes the lock too, for milliseconds: another job starting beside this one).

The extensions dir is the one torch uses: ``TORCH_EXTENSIONS_DIR`` (``launchers/pretrain.sh`` sets it to the
checkout's ``.torch_extensions``), else torch's cache folder, where each op has its folder in one per Python
version and accelerator (``py312_cpu/<op>``).

``python -m megamythos.runtime.build_locks`` runs the same check on its environment's extensions dir, as
``make prebuild-ops`` does before it builds DeepSpeed's CPU comm op.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from megamythos.errors import UserError, run_cli

logger = logging.getLogger(__name__)

LOCK_NAME = "lock"  # torch.utils.cpp_extension's FileBaton in each op's build folder
# An hour: above any one op's build. A CPU op takes ~30 s (the comm op), DeepSpeed's CPU Adam 5 min on a loaded
# 2-core machine; CUDA ops take minutes, the largest tens of minutes on a slow host.
STALE_AFTER_SECONDS = 3600.0
# How long a young lock may take to go before it is named: a load of a built op holds it for ~5 ms (measured).
SETTLE_SECONDS = 2.0


class BuildLockError(UserError, RuntimeError):
    """A build lock that no build holds any more: every launch would wait for it forever."""


def extensions_dir(env: Mapping[str, str]) -> Path:
    """Where torch builds JIT extensions: ``TORCH_EXTENSIONS_DIR`` of ``env``, else torch's default root (each op's
    folder then lies one level deeper, under the Python version and accelerator)."""
    if env.get("TORCH_EXTENSIONS_DIR"):
        return Path(env["TORCH_EXTENSIONS_DIR"])
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def build_locks(env: Mapping[str, str]) -> list[Path]:
    """The build locks a load of an op would wait on: ``<op>/lock`` in :func:`extensions_dir` (with torch's default
    root, ``<python>_<accelerator>/<op>/lock``), sorted."""
    root = extensions_dir(env)
    pattern = f"*/{LOCK_NAME}" if env.get("TORCH_EXTENSIONS_DIR") else f"*/*/{LOCK_NAME}"
    return sorted(path for path in root.glob(pattern) if path.is_file())


def duration(seconds: float) -> str:
    """``seconds`` as ``40 s``, ``12 min`` or ``3.5 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def lock_age(lock: Path, now: float) -> float | None:
    """Seconds since ``lock`` was taken (its modification time), None once it is gone."""
    try:
        return now - lock.stat().st_mtime
    except FileNotFoundError:
        return None


def check_build_locks(env: Mapping[str, str], warn: bool = True) -> None:
    """Refuse (:class:`BuildLockError`) the run when a build lock of :func:`build_locks` is older than
    :data:`STALE_AFTER_SECONDS`: no build takes that long, so a build that was killed left it. A younger one that
    is still there after :data:`SETTLE_SECONDS` is a warning naming it, as the run then waits for it (``warn``:
    one rank per node waits and says it; the others return at once)."""
    young = []
    for lock in build_locks(env):
        age = lock_age(lock, time.time())
        if age is not None and age > STALE_AFTER_SECONDS:
            raise BuildLockError(f"{lock}: the build lock of the op {lock.parent.name}, taken {duration(age)} ago, "
                                 "longer than a build takes (a launch killed while it built the op left it); every "
                                 "launch would wait for it forever: delete it if no build is running, and run again")
        if age is not None:
            young.append(lock)
    if not warn:
        return
    deadline = time.monotonic() + SETTLE_SECONDS
    while young and time.monotonic() < deadline:
        time.sleep(0.05)
        young = [lock for lock in young if lock.exists()]
    for lock in young:
        if (age := lock_age(lock, time.time())) is not None:
            logger.warning("%s: the op %s is being built (for %s now), and this run waits until the build is done; "
                           "if no build is running (a launch killed while it built the op), delete the file, or "
                           "this run waits forever", lock, lock.parent.name, duration(age))


def main() -> int:
    """:func:`check_build_locks` of this process's environment: exit 2 with the one line on a stale lock."""
    def run() -> int:
        check_build_locks(os.environ)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
