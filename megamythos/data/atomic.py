"""Atomic file writes: write to a temporary name in the same directory, then ``os.replace`` into place."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def temp_name(path: str | os.PathLike) -> str:
    """A temporary sibling name unique to this process (``PATH.tmp.<pid>``)."""
    return f"{os.fspath(path)}.tmp.{os.getpid()}"


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
