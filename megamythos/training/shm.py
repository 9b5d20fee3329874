"""DeepSpeed's CPU shared-memory allreduce buffers in ``/dev/shm``: released by their rank at exit, and those of
dead runs removed at the next launch.

DeepSpeed's CPU comm op creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (66 MB per
rank, in memory) and never removes it. A rank unlinks its own after the process group is gone
(:func:`release_own_buffer`); a rank killed with ``kill -9`` cannot, so every launch first removes the buffers
of this user that no live process maps (:func:`remove_stale_buffers`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

SHM = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer_"


def release_own_buffer() -> None:
    """Unlink this rank's buffer (named from ``MASTER_ADDR``, ``MASTER_PORT`` and its rank); other ranks keep
    their own mappings."""
    env = os.environ
    prefix = f"{PREFIX}{os.getuid()}_{env.get('MASTER_ADDR')}_{env.get('MASTER_PORT')}"
    for rank in {env.get("RANK"), env.get("LOCAL_RANK")} - {None}:
        (SHM / f"{prefix}_{rank}").unlink(missing_ok=True)


def mapped_shm_files() -> set[str]:
    """Names of the ``/dev/shm`` files some process of this host maps (from ``/proc/*/maps``; processes whose
    maps cannot be read, other users' without privileges, are skipped: their buffers carry their uid)."""
    names: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        names.update(line.rsplit("/", 1)[1] for line in text.splitlines() if "/dev/shm/" + PREFIX in line)
    return names


def remove_stale_buffers() -> list[str]:
    """Remove this user's buffers that no live process maps (their ranks died); returns the names removed."""
    if not SHM.is_dir():
        return []
    mine = sorted(SHM.glob(f"{PREFIX}{os.getuid()}_*"))
    if not mine:
        return []
    live = mapped_shm_files()
    removed = []
    for path in mine:
        if path.name not in live:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        logger.info("removed %d stale DeepSpeed shm buffer(s) of dead runs from %s", len(removed), SHM)
    return removed
