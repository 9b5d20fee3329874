"""DeepSpeed's CPU shared-memory allreduce buffers in ``/dev/shm``: unlinked by their rank once every rank has
mapped them, and those of dead runs removed at the next launch.

DeepSpeed's CPU comm op creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (66 MB per
rank, in memory), maps every rank's by its name while torch.distributed starts, and never removes it. A rank
unlinks its own as soon as every rank has mapped it (:func:`release_own_buffer`, after a barrier that follows the
start), so the memory goes when the last rank ends, whatever ends it (DeepSpeed's runner killing a rank while rank 0
reports an error, ``kill -9``, the out-of-memory killer). A rank that fails during the start unlinks its own at
exit; one killed then cannot, so every launch first removes this user's
buffers of dead jobs (:func:`remove_stale_buffers`).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from megamythos.training.rendezvous import port_free

logger = logging.getLogger(__name__)

SHM = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer_"
MIN_AGE_S = 60.0


def release_own_buffer() -> None:
    """Unlink this rank's buffer (named from ``MASTER_ADDR``, ``MASTER_PORT`` and its rank); the ranks that
    mapped it keep their mappings, and the memory is freed when the last of them ends."""
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


def stale(path: Path, mapped: set[str]) -> bool:
    """Whether buffer ``path`` belongs to a dead job: no process maps it, nobody listens on the rendezvous port its
    name carries (a live job's rank 0 holds it from before the buffers exist to the end), and it is older than
    ``MIN_AGE_S`` (a rank writes its 66 MB buffer before it maps it; a peer still waits for it by name)."""
    if path.name in mapped:
        return False
    port = path.name.rsplit("_", 2)[-2]
    if port.isdigit() and not port_free(int(port)):
        return False
    try:
        return time.time() - path.stat().st_mtime > MIN_AGE_S
    except FileNotFoundError:
        return False


def remove_stale_buffers() -> list[str]:
    """Remove this user's buffers of dead jobs (see :func:`stale`); returns the names removed."""
    if not SHM.is_dir():
        return []
    mine = sorted(SHM.glob(f"{PREFIX}{os.getuid()}_*"))
    if not mine:
        return []
    mapped = mapped_shm_files()
    removed = []
    for path in mine:
        if stale(path, mapped):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        logger.info("removed %d stale DeepSpeed shm buffer(s) of dead runs from %s", len(removed), SHM)
    return removed
