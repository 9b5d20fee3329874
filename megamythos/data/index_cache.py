"""On-disk cache of sample-construction index arrays, built by rank 0 only and memory-mapped by every rank.

A cache entry is ``{dir}/{key}-{name}.npy`` per array plus ``{dir}/{key}-description.json``, where ``key`` is
the sha256 of the JSON description of everything the arrays depend on. The description is written last, so
an entry is complete exactly when it exists; every file is written under a temporary name and renamed. The
description records the sha256 of each array file (``array_sha256``), which the loading rank 0 checks before
the others map them: an entry a disk or a copy damaged (a sample index that reads other samples, or past its
dataset) is built again, with a warning, over its files (never removed first: runs starting together on a
damaged entry may each build it again, and each finds the files it then reads).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from megamythos.data.atomic import atomic_open, remove_stale_temps
from megamythos.data.manifest import file_sha256
from megamythos.errors import UserError

logger = logging.getLogger(__name__)


class IndexCacheError(UserError, RuntimeError):
    """The cache cannot be written, or an entry another rank should have built is missing."""


def description_key(description: dict[str, Any]) -> str:
    """Stable hash of a JSON-serialisable description."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


def _distributed_rank() -> int | None:
    """This process's rank if torch.distributed is initialised, else None (torch is not imported for this)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    return torch.distributed.get_rank()


def _barrier() -> None:
    sys.modules["torch"].distributed.barrier()


def load_or_build(cache_dir: str, description: dict[str, Any],
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays for ``description``: built (rank 0 / single process) and saved on a miss, then mmap-loaded.

    ``build`` returns ``{name: array}``; the names are recorded in the description file. Under
    torch.distributed every rank must call this (it contains a barrier).
    """
    key = description_key(description)
    desc_path = os.path.join(cache_dir, f"{key}-description.json")
    rank = _distributed_rank()
    build_here = rank in (None, 0) and not os.path.isfile(desc_path)
    if rank in (None, 0) and not build_here and (damage := damaged_entry(cache_dir, key)):
        # replaced in place, not removed first: another run may be building it again too
        logger.warning("index cache entry %s-* is damaged (%s): building it again", os.path.join(cache_dir, key),
                       damage)
        build_here = True
    if build_here:
        logger.info("building %s indices (cache key %s) in %s", description.get("class"), key, cache_dir)
        arrays = build()
        paths = [os.path.join(cache_dir, f"{key}-{name}.npy") for name in arrays]
        # a build killed while it wrote (a signal at start-up, before the trainer's handlers) left its temporaries
        remove_stale_temps([*paths, desc_path])
        try:
            for name, array in arrays.items():
                with atomic_open(os.path.join(cache_dir, f"{key}-{name}.npy")) as handle:
                    np.save(handle, array, allow_pickle=False)
            digests = {name: file_sha256(path) for name, path in zip(arrays, paths)}
            with atomic_open(desc_path, "w") as handle:
                json.dump({**description, "arrays": sorted(arrays), "array_sha256": digests}, handle, indent=2,
                          sort_keys=True)
        except OSError as err:
            raise IndexCacheError(f"cannot write the index cache in {cache_dir} ({err}); pass a writable "
                                  "--data-cache-dir that every rank can read") from err
    if rank is not None:
        _barrier()
    if not os.path.isfile(desc_path):
        raise IndexCacheError(
            f"index cache {desc_path} is missing on rank {rank}: rank 0 builds it, so cache_dir must be a directory "
            "every rank can see (a shared filesystem); pass a shared cache_dir or build the cache once beforehand"
        )
    try:
        with open(desc_path) as handle:
            names = json.load(handle)["arrays"]
        return {name: np.load(os.path.join(cache_dir, f"{key}-{name}.npy"), mmap_mode="r") for name in names}
    except (OSError, ValueError, KeyError, TypeError) as err:  # truncated or overwritten after it was written
        raise IndexCacheError(f"index cache entry {os.path.join(cache_dir, key)}-* is damaged ({err}); remove its "
                              "files and run again (they are rebuilt)") from err


def damaged_entry(cache_dir: str, key: str) -> str | None:
    """What is wrong with the cache entry ``key`` of ``cache_dir`` whose description exists: an unreadable
    description, or an array file missing or not the sha256 the description records; None when it is whole (or
    written before the digests were recorded: nothing to check it against)."""
    try:
        with open(os.path.join(cache_dir, f"{key}-description.json")) as handle:
            recorded = json.load(handle).get("array_sha256", {})
        for name, digest in sorted(recorded.items()):
            path = os.path.join(cache_dir, f"{key}-{name}.npy")
            if file_sha256(path) != digest:
                return f"{os.path.basename(path)} differs from its recorded sha256"
    except (OSError, ValueError, AttributeError) as err:
        return str(err)
    return None


class MappedArraysPickle:
    """Mixin: pickle attributes that are memory-mapped ``.npy`` files by file name, and re-map them on load.

    Without it, sending a dataset to a spawned DataLoader worker would copy every index array.
    """

    def __getstate__(self) -> dict[str, Any]:
        return {k: _NpyFile(v.filename) if isinstance(v, np.memmap) and v.filename else v
                for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: np.load(v.path, mmap_mode="r") if isinstance(v, _NpyFile) else v
                              for k, v in state.items()})


@dataclass(frozen=True)
class _NpyFile:
    path: str
