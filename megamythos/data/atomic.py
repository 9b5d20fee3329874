"""Atomic file writes: write to a temporary name in the same directory, then ``os.replace`` into place.

Temporary names end in ``.tmp.<host>.<pid>``; those of a process of this host that is no longer alive (a killed
run) are removed by :func:`remove_stale_temps`. A temporary of another host (a shared filesystem) is never removed:
whether its process lives cannot be known here.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from megamythos.errors import UserError


class OutputError(UserError, OSError):
    """An output cannot be written: its directory cannot be made or written, or the disk is full."""


def describe_os_error(err: OSError) -> str:
    """``FILE: reason`` of a failed read or write, saying so when the disk is full."""
    where = f"{err.filename}: " if err.filename else ""
    reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return f"{where}{reason}"


def writable_directory(directory: str | os.PathLike, flag: str, given: str | os.PathLike | None = None) -> None:
    """Create the output directory ``directory`` or raise :class:`OutputError` naming ``flag`` and its value
    ``given`` (default: ``directory`` itself; an output file's path when ``directory`` is its parent)."""
    given = directory if given is None else given
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as err:  # also a file in its place: FileExistsError
        raise OutputError(f"{flag} {given}: cannot create {directory} ({describe_os_error(err)})") from err
    if not os.access(directory, os.W_OK):
        raise OutputError(f"{flag} {given}: {directory} is not writable; choose another {flag}")


def creatable(directory: str | os.PathLike) -> bool:
    """Whether this process can write into ``directory``, creating it if need be: its nearest existing ancestor is a
    writable folder (``os.access``: a read-only file system says no, to root too)."""
    path = Path(directory).absolute()
    while not path.exists():
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK)


def writable_parent(path: str | os.PathLike, flag: str) -> None:
    """Create the directory of output ``path`` (given as ``flag``) or raise :class:`OutputError` naming it."""
    writable_directory(Path(path).parent, flag, path)


def check_output_prefix(prefix: str, flag: str = "--output-prefix") -> None:
    """Raise :class:`OutputError` when ``prefix`` names no file of its own: empty or ending in a path separator (its
    files would be ``DIR/.bin`` or ``DIR/_text_document.bin``, hidden or nameless). A prefix that is also a directory
    (``data/corpus`` beside ``data/corpus/``) is fine: its files are siblings of it."""
    if not prefix or prefix.endswith(("/", os.sep)):
        raise OutputError(f"{flag} {prefix!r} names a directory, not a file prefix: give one such as data/corpus "
                          "(files data/corpus*.bin, .idx, .json)")


_TEMP_SUFFIX = re.compile(r"(?P<host>.+)\.(?P<pid>\d+)")  # what follows PATH.tmp.


def temp_name(path: str | os.PathLike) -> str:
    """A temporary sibling name unique to this process (``PATH.tmp.<host>.<pid>``)."""
    return f"{os.fspath(path)}.tmp.{socket.gethostname()}.{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Delete the temporaries ``PATH.tmp.<host>.<pid>`` of each of ``paths`` (files or directories) whose process,
    of this host, is gone; returns the paths removed. Only those exact names: the temporaries of another output
    whose name starts with PATH (``shard_1`` and ``shard_10``) are not this run's to judge."""
    removed = []
    host = socket.gethostname()
    for target in paths:
        stem = os.fspath(target) + ".tmp."
        for path in glob.glob(glob.escape(stem) + "*"):
            match = _TEMP_SUFFIX.fullmatch(path[len(stem):])
            if match is None or match["host"] != host or pid_alive(int(match["pid"])):
                continue
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(path)
    return removed


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it to ``path`` only if the block succeeds."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, mode) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def locked_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` for the block (released when the process ends, killed or not):
    writers of one folder's shared files take turns."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)
