"""Block checksums of a dataset's ``.bin`` and ``.idx``, recorded at build time and verified when the data is read.

Megatron's ``MMIDIDX`` files carry no checksum: a byte flipped by a bad copy or disk is a valid token id, and a run
would train on it without a word. Preprocessing and merging therefore hash each file in blocks of
``block_bytes`` (:data:`BLOCK_BYTES`, 64 MiB) as they write it, and record the digests in the dataset's record
(``P.json``, :mod:`megamythos.data.metadata`)::

    "checksums": {"algorithm": "sha256", "block_bytes": 67108864, "bin": ["9f2c...", ...], "idx": ["41d0..."]}

Block ``k`` of a file is its bytes ``[k * block_bytes, (k + 1) * block_bytes)`` (the last one shorter; an empty
file has no block). Blocks let a verification name where a file differs, and hash on several cores: sha256 runs
at about 1.8 GB/s per core here, and the blocks of a 2-TB corpus (1T uint16 tokens) are hashed in parallel
(:func:`verify_file`). Megatron ignores the record, so the files stay byte for byte Megatron's.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from megamythos.errors import UserError

ALGORITHM = "sha256"
BLOCK_BYTES = 64 << 20
READ_BYTES = 16 << 20  # what one read() of a file being hashed or copied asks for
MAX_BLOCK_BYTES = 256 << 20  # each hashing thread holds one block: at most 2 GiB for 8 threads
RECORD_KEY = "checksums"
DIGEST = re.compile(r"[0-9a-f]{64}")  # a sha256 as hashlib's hexdigest writes it
T = TypeVar("T")


class DatasetCorruptError(UserError, ValueError):
    """A dataset file's bytes differ from the checksums its record holds, or the recorded checksums are malformed."""


def valid_block_bytes(block_bytes: int) -> bool:
    """Whether blocks of ``block_bytes`` can be recorded: a positive multiple of 8, so that every block but the last
    holds whole tokens of any dtype (a verification reads each block's tokens), of at most :data:`MAX_BLOCK_BYTES`
    (a verification holds one block in memory per thread)."""
    return 0 < block_bytes <= MAX_BLOCK_BYTES and block_bytes % 8 == 0


class BlockHasher:
    """sha256 of every ``block_bytes`` block of a byte stream that arrives in pieces of any size."""

    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        if block_bytes <= 0:  # would hash for ever; memory is one read whatever the size
            raise ValueError(f"block_bytes {block_bytes}: blocks must hold at least one byte")
        self.block_bytes = block_bytes
        self.digests: list[str] = []
        self._block = hashlib.sha256()
        self._filled = 0  # bytes of the current block hashed so far

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            take = min(self.block_bytes - self._filled, view.nbytes)
            self._block.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.block_bytes:
                self._close_block()

    def finish(self) -> list[str]:
        """The digests of every block, the last partial one included; the hasher takes no more bytes after it."""
        if self._filled:
            self._close_block()
        return self.digests

    def _close_block(self) -> None:
        self.digests.append(self._block.hexdigest())
        self._block, self._filled = hashlib.sha256(), 0


@dataclass(frozen=True)
class DatasetChecksums:
    """The recorded block digests of a dataset's two files."""

    block_bytes: int
    bin: tuple[str, ...]
    idx: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        """The value of the record's ``checksums`` field."""
        return {"algorithm": ALGORITHM, "block_bytes": self.block_bytes, "bin": list(self.bin), "idx": list(self.idx)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None, record_path: str) -> DatasetChecksums | None:
        """The checksums ``record`` (read from ``record_path``) holds; None for a record without them (a dataset
        made before they were recorded) or no record (made by Megatron). Malformed ones (a ``block_bytes`` that is
        no whole number of bytes the builder takes, :func:`valid_block_bytes`, included) raise
        :class:`DatasetCorruptError` naming ``record_path`` and ``inspect_dataset.py PREFIX --add-checksums``, which
        records them again once it finds the data valid and matching the digests they still hold
        (:func:`usable_digests`)."""
        if record is None or RECORD_KEY not in record:
            return None
        try:
            sums = record[RECORD_KEY]
            if sums["algorithm"] != ALGORITHM:
                raise ValueError(f"algorithm {sums['algorithm']!r}, expected {ALGORITHM!r}")
            block_bytes = sums["block_bytes"]
            if type(block_bytes) is not int or not valid_block_bytes(block_bytes):  # 1.5e6 or true is no size
                raise ValueError(f"block_bytes {block_bytes!r}, expected a whole number of bytes, a positive "
                                 f"multiple of 8 up to {MAX_BLOCK_BYTES}")
            digests = {name: tuple(sums[name]) for name in ("bin", "idx")}
            if not all(type(d) is str and DIGEST.fullmatch(d) for ds in digests.values() for d in ds):
                raise ValueError("a digest that is not 64 lowercase hex digits")  # else called a corrupt block
        except (KeyError, TypeError, ValueError) as err:
            prefix = record_path.removesuffix(".json")
            raise DatasetCorruptError(f"{record_path}: the recorded checksums are malformed ({err}); if the data is "
                                      f"sound, `python data_prep/inspect_dataset.py {prefix} --add-checksums` checks "
                                      "it and records them again, else rebuild the dataset with "
                                      "data_prep/preprocess_data.py") from err
        return cls(block_bytes, digests["bin"], digests["idx"])


def usable_digests(sums: Any) -> tuple[int, dict[str, list[str | None]]] | None:
    """What a record's ``checksums`` field, malformed or not, still holds that a file can be checked against:
    ``(block_bytes, {"bin"/"idx": its digests, None for an entry that is no sha256 hexdigest})`` for each file whose
    list holds a well-formed one. A ``block_bytes`` :func:`valid_block_bytes` refuses still tells the blocks where it
    is a whole positive number (12, ``1 << 40``, ``67108864.0``); None where none can be read: a field that is no
    object, another algorithm named, a block size that is no whole positive number (``1.5e6``: of which blocks?),
    or no well-formed digest."""
    if not isinstance(sums, Mapping) or sums.get("algorithm", ALGORITHM) != ALGORITHM:
        return None
    block_bytes = sums.get("block_bytes")
    if type(block_bytes) is float and block_bytes.is_integer():
        block_bytes = int(block_bytes)
    if type(block_bytes) is not int or block_bytes <= 0:
        return None
    listed = {name: [d if type(d) is str and DIGEST.fullmatch(d) else None for d in sums[name]]
              for name in ("bin", "idx") if isinstance(sums.get(name), list)}
    kept = {name: digests for name, digests in listed.items() if any(digests)}
    return (block_bytes, kept) if kept else None


def hashing_threads() -> int:
    """Threads :func:`verify_file` hashes on: this process's CPUs, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _unchanged(path: str, before: os.stat_result) -> bool:
    """Whether the file at ``path`` is still the one ``before`` describes: its inode, size, modification and change
    times (False when it is gone)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return all(getattr(now, key) == getattr(before, key) for key in ("st_ino", "st_size", "st_mtime_ns", "st_ctime_ns"))


def verify_file(path: str, digests: tuple[str, ...], block_bytes: int,
                visit: Callable[[memoryview], T] | None = None) -> list[T]:
    """Check that the file at ``path`` is ``len(digests)`` blocks of ``block_bytes`` whose sha256 are ``digests``,
    hashing blocks on up to 8 threads (reads, hashlib and numpy release the GIL), each holding one block in memory
    at a time. ``visit`` (optional) is called on every block's bytes in the same pass, its answers returned in block
    order (a token scan reads each byte once).

    The blocks are read, not mapped: a file truncated while it is hashed (a copy over it: ``cp`` truncates first)
    is a short read here, where a mapping's page past the new end kills the process with SIGBUS.

    Raises :class:`DatasetCorruptError` naming the file, the first block that differs and its byte range, or a size
    the blocks cannot have; or, where the file's inode, size or times differ after the read from before it (a
    writer, not the disk), that it changed while it was read."""
    before = os.stat(path)
    size = before.st_size
    blocks = -(-size // block_bytes)
    if blocks != len(digests):
        raise DatasetCorruptError(f"{path} is {size} bytes, {blocks} blocks of {block_bytes}, but its record holds "
                                  f"checksums of {len(digests)} blocks: the file is truncated or was replaced; copy "
                                  "it again from its source, or rebuild the dataset with data_prep/preprocess_data.py")
    if not size:
        return []
    with open(path, "rb") as handle:

        def check(k: int) -> tuple[bool, T | None]:
            length = min(block_bytes, size - k * block_bytes)
            block = os.pread(handle.fileno(), length, k * block_bytes)
            if len(block) < length:
                raise DatasetCorruptError(f"{path} shrank below {size} bytes while it was read (it is being "
                                          "replaced or copied over): run again once it is in place")
            return hashlib.sha256(block).hexdigest() == digests[k], visit(memoryview(block)) if visit else None

        with ThreadPoolExecutor(min(hashing_threads(), blocks)) as pool:
            results = list(pool.map(check, range(blocks)))
    bad = next((k for k, (same, _) in enumerate(results) if not same), None)
    if bad is not None:
        if not _unchanged(path, before):
            raise DatasetCorruptError(f"{path} changed while it was read (it is being replaced or written): run "
                                      "again when the writer is done")
        end = min((bad + 1) * block_bytes, size)
        raise DatasetCorruptError(f"{path}: bytes {bad * block_bytes}..{end - 1} (block {bad} of {blocks}) differ "
                                  "from the sha256 its record holds: the file is corrupt (a bad copy or disk); copy "
                                  "it again from its source, or rebuild the dataset with "
                                  "data_prep/preprocess_data.py")
    return [answer for _, answer in results]  # type: ignore[misc]


def file_block_digests(path: str, block_bytes: int = BLOCK_BYTES) -> list[str]:
    """The block digests of the file at ``path`` as it is now (read :data:`READ_BYTES` at a time)."""
    hasher = BlockHasher(block_bytes)
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_BYTES):
            hasher.update(chunk)
    return hasher.finish()
