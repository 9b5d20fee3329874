"""sha256 of files a start checks, each file hashed once and its digest cached beside the scans of the data.

Every rank of a run checks each dataset's tokenizer copy (``P.tokenizer.model``) against the fingerprint its record
holds; a blend of thousands of datasets on thousands of ranks would read every copy on every rank at every start.
:class:`FileDigests` hashes a file once per process (datasets sharing one copy through links: one inode) and keeps
the digest in the index cache as ``{key}-sha256.json``, keyed, as the scans are
(:func:`megamythos.data.pretraining.scan_dataset`), by the file's inode, size, modification and change times: rank 0
hashes, the other ranks and later starts read the digest, and a file replaced or changed since gets a new key and is
hashed again.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from megamythos.data.atomic import atomic_open
from megamythos.data.index_cache import description_key
from megamythos.data.manifest import file_sha256

logger = logging.getLogger(__name__)


class FileDigests:
    """The sha256 of files, each (by inode) hashed at most once by this instance and cached on disk."""

    def __init__(self) -> None:
        self._known: dict[str, str] = {}  # description_key -> hex sha256

    def sha256(self, path: str, cache_dir: str) -> str:
        """Hex sha256 of the file at ``path``: known to this instance, cached in ``cache_dir`` for the file as it is
        now, or read whole (and cached there; a cache that cannot be written costs the next reader a hash)."""
        stat = os.stat(path)
        description: dict[str, Any] = {"class": "FileSha256", "bytes": stat.st_size, "inode": stat.st_ino,
                                       "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}
        key = description_key(description)
        if key in self._known:
            return self._known[key]
        entry = os.path.join(cache_dir, f"{key}-sha256.json")
        try:
            with open(entry) as handle:
                cached = json.load(handle)
            if cached["description"] == description and isinstance(cached["sha256"], str):
                self._known[key] = cached["sha256"]
                return cached["sha256"]
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: hashed again
            pass
        digest = self._known[key] = file_sha256(path)
        try:
            os.makedirs(cache_dir, exist_ok=True)
            with atomic_open(entry, "w") as handle:
                json.dump({"description": description, "sha256": digest}, handle, indent=2)
        except OSError as err:
            logger.info("cannot cache the sha256 of %s in %s (%s); the next start hashes it again", path, cache_dir,
                        err)
        return digest
