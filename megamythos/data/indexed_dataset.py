"""Megatron-LM ``MMIDIDX`` indexed datasets: a zero-copy memory-mapped reader and an atomic writer.

A dataset ``P`` is two files. ``P.bin`` holds the token ids of every sequence back to back in one dtype.
``P.idx`` is, little-endian and without padding::

    offset  size      field
    0       9         magic b"MMIDIDX\\x00\\x00"
    9       8         version, uint64 = 1
    17      1         dtype code, uint8 (table below)
    18      8         sequence count N, uint64
    26      8         document count M, uint64 (= number of documents + 1)
    34      4 N       sequence lengths, int32 (tokens)
    34+4N   8 N       sequence pointers, int64 (byte offset of each sequence in P.bin)
    34+12N  8 M       document indices, int64: 0 then the end sequence of each document

This is byte for byte the layout of Megatron-LM's ``megatron/core/datasets/indexed_dataset.py`` (non-multimodal),
so files written by either project load in the other. We write one sequence per document, so the document
indices are ``0, 1, ..., N``; Megatron's sentence-level datasets hold several sequences per document. Its multimodal
index, the same followed by an int8 mode per sequence (nothing in the header tells), is refused.
"""
from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import numpy as np

from megamythos.data.atomic import temp_name
from megamythos.data.checksums import (
    BLOCK_BYTES,
    MAX_BLOCK_BYTES,
    READ_BYTES,
    BlockHasher,
    DatasetChecksums,
    valid_block_bytes,
)
from megamythos.errors import UserError

logger = logging.getLogger(__name__)

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = 34
# Megatron's DType enum: code -> numpy dtype.
DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
_CODE_OF_DTYPE = {np.dtype(t): c for c, t in DTYPE_CODES.items()}
TOKEN_SCAN_CHUNK = 1 << 24  # tokens per step of IndexedDataset.token_range (32 MiB of uint16)
INDEX_SCAN_CHUNK = 1 << 22  # sequences per step of IndexedDataset.validate (a few 32 MiB int64 arrays)


class IndexedDatasetError(UserError, RuntimeError):
    """A ``.bin``/``.idx`` pair is missing, truncated, corrupt, or cannot hold the data given to it."""


class DatasetExistsError(UserError, FileExistsError):
    """An output prefix already holds a dataset, and replacing it was not asked for."""


def optimal_dtype(vocab_size: int) -> np.dtype:
    """Megatron's rule: uint16 when the vocabulary has fewer than 65500 ids, else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def dataset_exists(prefix: str) -> bool:
    """True if both ``prefix.bin`` and ``prefix.idx`` exist."""
    return os.path.isfile(bin_path(prefix)) and os.path.isfile(idx_path(prefix))


def _prefixes_in(folder: str) -> list[str] | None:
    """The dataset prefixes in ``folder`` (those of its ``.idx`` files with a ``.bin``), sorted; None where it cannot
    be listed (a folder of another user's: the hint goes without them)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    return sorted(os.path.join(folder, name[:-4]) for name in names
                  if name.endswith(".idx") and os.path.isfile(os.path.join(folder, name[:-4] + ".bin")))


def dataset_not_found(prefix: str) -> str | None:
    """``dataset 'P' not found: missing P.bin, P.idx`` (the files of the two that are missing), with the prefix
    meant where one is plain (``P`` given with its ``.bin``/``.idx``, or ``P`` for preprocessing's
    ``P_text_document``), or a few prefixes found in ``P`` where it is a folder (:func:`_prefixes_in`); None when both
    files exist."""
    missing = [path for path in (bin_path(prefix), idx_path(prefix)) if not os.path.isfile(path)]
    if not missing:
        return None
    stem = prefix.removesuffix(".bin").removesuffix(".idx")
    if stem != prefix and os.path.isfile(bin_path(stem)):
        hint = f"; pass the prefix without .bin/.idx: {stem}"
    elif os.path.isfile(bin_path(f"{prefix}_text_document")):
        hint = (f"; did you mean {prefix}_text_document? (preprocess_data.py --output-prefix {prefix} writes "
                f"{prefix}_text_document.bin/.idx)")
    elif os.path.isdir(prefix):
        found = _prefixes_in(prefix)
        listed = ("" if found is None else f"; none is in {prefix}" if not found else
                  f", e.g. {', '.join(found[:3])}" + (f" ({len(found)} in all)" if len(found) > 3 else ""))
        hint = f"; {prefix} is a folder: pass dataset prefixes (PREFIX, for PREFIX.bin/PREFIX.idx){listed}"
    else:
        hint = ""
    return f"dataset {prefix!r} not found: missing {', '.join(missing)}{hint}"


def id_range(tokens: np.ndarray) -> tuple[int, int] | None:
    """(smallest, largest) id of ``tokens``; None when there is none."""
    return (int(tokens.min()), int(tokens.max())) if tokens.size else None


def merge_ranges(ranges: Iterable[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The range covering every one of ``ranges`` (None entries hold no token)."""
    known = [r for r in ranges if r is not None]
    return (min(r[0] for r in known), max(r[1] for r in known)) if known else None


def encode_index(dtype: np.dtype, sizes: np.ndarray, document_indices: np.ndarray) -> bytes:
    """The full ``.idx`` file contents for sequences of ``sizes`` tokens (pointers derived from the sizes)."""
    dtype = np.dtype(dtype)
    sizes = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    header = INDEX_MAGIC + struct.pack("<Q", INDEX_VERSION) + struct.pack("<B", _CODE_OF_DTYPE[dtype])
    header += struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(document_indices))
    return header + sizes.tobytes() + pointers.tobytes() + np.asarray(document_indices, dtype=np.int64).tobytes()


class IndexedDataset:
    """Read-only, memory-mapped view of ``prefix.bin``/``prefix.idx``.

    ``ds[i]`` is sequence ``i`` as a read-only numpy view into the mapped ``.bin`` (no copy), shape
    ``(sizes[i],)`` and dtype ``ds.dtype``. Opening checks the header, the ``.idx`` size against its counts,
    and the ``.bin`` size against the last pointer; :meth:`validate` checks every pointer.

    Attributes:
        sizes: int32 ``(N,)`` tokens per sequence.
        pointers: int64 ``(N,)`` byte offset of each sequence.
        document_indices: int64 ``(M,)`` sequence boundaries of documents.
        dtype: token dtype.
    """

    def __init__(self, path_prefix: str) -> None:
        self.path_prefix = str(path_prefix)
        ipath, bpath = idx_path(self.path_prefix), bin_path(self.path_prefix)
        for path in (ipath, bpath):
            if not os.path.isfile(path):
                raise IndexedDatasetError(
                    f"{path} does not exist: pass the prefix without .bin/.idx, and build the dataset with "
                    "`python data_prep/preprocess_data.py` if it was never made"
                )
        self._idx = np.memmap(ipath, dtype=np.uint8, mode="r") if os.path.getsize(ipath) else np.zeros(0, np.uint8)
        self.dtype, count, doc_count = self._read_header(ipath)
        expected = HEADER_BYTES + 12 * count + 8 * doc_count
        if count and self._idx.size == expected + count:  # Megatron's multimodal index: int8 modes at the end
            raise IndexedDatasetError(
                f"{ipath} holds one byte per sequence after its document indices: it is a Megatron-LM multimodal "
                "index (sequence_modes), which megamythos does not read; give a text dataset (preprocess_data.py)"
            )
        if self._idx.size != expected:
            raise IndexedDatasetError(
                f"{ipath} is {self._idx.size} bytes but its header announces {count} sequences and {doc_count} "
                f"document indices ({expected} bytes): the file is truncated or corrupt; rebuild it"
            )
        buf = self._idx
        self.sizes = np.frombuffer(buf, np.int32, count, HEADER_BYTES)
        self.pointers = np.frombuffer(buf, np.int64, count, HEADER_BYTES + 4 * count)
        self.document_indices = np.frombuffer(buf, np.int64, doc_count, HEADER_BYTES + 12 * count)
        bin_size = os.path.getsize(bpath)
        data_end = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize if count else 0
        if bin_size != data_end or (count and self.pointers[0] != 0):
            raise IndexedDatasetError(
                f"{bpath} is {bin_size} bytes but {ipath} points to {data_end} bytes of tokens: the .bin is "
                "truncated or belongs to another .idx; rebuild the dataset"
            )
        if doc_count and (self.document_indices[0] != 0 or self.document_indices[-1] != count):
            raise IndexedDatasetError(
                f"{ipath}: document indices must run from 0 to {count}, found {self.document_indices[0]}.."
                f"{self.document_indices[-1]}; the index is corrupt"
            )
        self._bin = np.memmap(bpath, dtype=self.dtype, mode="r") if bin_size else np.zeros(0, self.dtype)

    def __getstate__(self) -> dict[str, str]:
        """Pickle by prefix: a DataLoader worker re-maps the files instead of receiving a copy of them."""
        return {"path_prefix": self.path_prefix}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["path_prefix"])  # type: ignore[misc]

    def _read_header(self, ipath: str) -> tuple[np.dtype, int, int]:
        head = bytes(self._idx[:HEADER_BYTES])
        if len(head) < HEADER_BYTES or head[:9] != INDEX_MAGIC:
            raise IndexedDatasetError(
                f"{ipath} is not an MMIDIDX index (bad or short header, {len(head)} bytes read); rebuild it"
            )
        version, code, count, doc_count = struct.unpack("<QBQQ", head[9:])
        if version != INDEX_VERSION:
            raise IndexedDatasetError(f"{ipath} has index version {version}; only version 1 is supported")
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(f"{ipath} has unknown dtype code {code}; known codes: {sorted(DTYPE_CODES)}")
        return np.dtype(DTYPE_CODES[code]), count, doc_count

    def validate(self) -> None:
        """Check every pointer against the sizes and every document index (O(N), ``INDEX_SCAN_CHUNK`` sequences
        at a time, so memory stays bounded whatever the corpus); raise on the first problem."""
        offset = 0  # bytes before the chunk's first sequence
        for start in range(0, len(self.sizes), INDEX_SCAN_CHUNK):
            sizes = self.sizes[start:start + INDEX_SCAN_CHUNK].astype(np.int64)
            if (sizes < 0).any():
                raise IndexedDatasetError(f"{idx_path(self.path_prefix)}: negative sequence length; the index is "
                                          "corrupt")
            ends = offset + np.cumsum(sizes * self.dtype.itemsize)
            expected = np.concatenate(([offset], ends[:-1]))
            bad = np.flatnonzero(expected != self.pointers[start:start + INDEX_SCAN_CHUNK])
            if bad.size:
                i = start + int(bad[0])
                raise IndexedDatasetError(
                    f"{idx_path(self.path_prefix)}: pointer of sequence {i} is {self.pointers[i]}, expected "
                    f"{expected[bad[0]]} from the sizes; the index is corrupt"
                )
            offset = int(ends[-1])
        docs = self.document_indices
        for start in range(0, max(len(docs) - 1, 0), INDEX_SCAN_CHUNK):
            stop = min(start + INDEX_SCAN_CHUNK, len(docs) - 1)
            if np.any(docs[start + 1:stop + 1] < docs[start:stop]):
                raise IndexedDatasetError(f"{idx_path(self.path_prefix)}: document indices decrease; the index is "
                                          "corrupt")

    def token_range(self) -> tuple[int, int] | None:
        """(smallest, largest) token id in the ``.bin`` (None when it holds no token): one vectorised pass over the
        mapped tokens, ``TOKEN_SCAN_CHUNK`` at a time, so memory stays bounded whatever the dataset's size."""
        return merge_ranges(id_range(self._bin[start:start + TOKEN_SCAN_CHUNK])
                            for start in range(0, self._bin.size, TOKEN_SCAN_CHUNK))

    def check_token_ids(self, vocab_size: int, remedy: str, token_range: tuple[int, int] | None = None) -> None:
        """Raise :class:`IndexedDatasetError` naming the ``.bin``, the offending id and ``remedy`` if a token id
        lies outside ``[0, vocab_size)`` (an embedding lookup of it would fail mid-run). ``token_range`` is
        :meth:`token_range`'s answer when the caller has it (a cached scan); otherwise the ``.bin`` is scanned."""
        token_range = self.token_range() if token_range is None else token_range
        if token_range is None:
            return
        bad = token_range[1] if token_range[1] >= vocab_size else token_range[0]
        if bad >= vocab_size or bad < 0:
            raise IndexedDatasetError(
                f"{bin_path(self.path_prefix)} holds token id {bad} but the vocabulary has {vocab_size} "
                f"ids (0..{vocab_size - 1}); {remedy}"
            )

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i`` (to its end when ``length`` is None), zero-copy."""
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"tokens [{offset}, {offset + length}) out of range for sequence {i} of {size} tokens")
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start:start + length]

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def no_token(self) -> str | None:
        """``holds no token (N documents): its .bin is empty, which Megatron's reader cannot map`` where this
        dataset holds no token (no document, or empty ones alone), else None: why the trainer's data resolution and
        ``inspect_dataset.py`` refuse it, and a merge refuses inputs that all hold none."""
        if self.num_tokens:
            return None
        documents = self.shape()["documents"]
        return (f"holds no token ({documents} document{'' if documents == 1 else 's'}): its .bin is empty, which "
                "Megatron's reader cannot map")

    def shape(self) -> dict[str, int]:
        """{sequences, documents, tokens}: what a run records of its data to tell, on resume, that a dataset
        was rebuilt from other text under the same prefix."""
        return {"sequences": len(self), "documents": max(len(self.document_indices) - 1, 0),
                "tokens": self.num_tokens}


class IndexedDatasetBuilder:
    """Writes ``prefix.bin``/``prefix.idx`` under temporary names; :meth:`finalize` renames them into place.

    Until ``finalize`` returns, only ``prefix.bin.tmp.<host>.<pid>``/``prefix.idx.tmp.<host>.<pid>`` exist, so an
    interrupted run never leaves a valid-looking ``.idx``. The ``.idx`` is renamed last. Used as a context manager, an
    exception discards the temporary files. Both files are hashed in blocks of ``block_bytes`` as they are written
    (:meth:`checksums`, for the dataset's record).
    """

    def __init__(self, path_prefix: str, dtype: np.dtype | type, block_bytes: int = BLOCK_BYTES) -> None:
        self.path_prefix = str(path_prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF_DTYPE:
            raise IndexedDatasetError(f"dtype {self.dtype} has no MMIDIDX code; use one of {list(_CODE_OF_DTYPE)}")
        Path(self.path_prefix).parent.mkdir(parents=True, exist_ok=True)
        self._tmp_bin = temp_name(bin_path(self.path_prefix))
        self._tmp_idx = temp_name(idx_path(self.path_prefix))
        if not valid_block_bytes(block_bytes):  # blocks no reader takes, refused before a file is made
            raise ValueError(f"block_bytes {block_bytes}: blocks must be a positive multiple of 8 bytes, at most "
                             f"{MAX_BLOCK_BYTES}")
        self._bin_hasher = BlockHasher(block_bytes)
        self._bin = open(self._tmp_bin, "wb")
        self._index: bytes | None = None  # the .idx's bytes, once :meth:`checksums` or :meth:`finalize` made them
        self._sizes: list[np.ndarray] = []
        self._doc_ends: list[np.ndarray] = []  # end sequence of each document, as in the .idx
        self._num_sequences = 0
        self._max = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None
        self.num_tokens = 0

    def add_document(self, tokens: Iterable[int] | np.ndarray) -> None:
        """Append one document (one sequence)."""
        arr = np.asarray(tokens)
        self.add_documents(arr, np.array([arr.size], dtype=np.int32))

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append ``len(lengths)`` documents whose tokens are concatenated in ``tokens`` (shape ``(sum(lengths),)``)."""
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths, dtype=np.int32)
        if int(lengths.sum(dtype=np.int64)) != tokens.size:
            raise IndexedDatasetError(f"lengths sum to {int(lengths.sum())} but {tokens.size} tokens were given")
        if tokens.size and self._max is not None:
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi > self._max:
                bad = hi if hi > self._max else lo
                raise IndexedDatasetError(
                    f"token id {bad} does not fit {self.path_prefix}'s dtype {self.dtype} (range 0..{self._max}); "
                    "the tokenizer's vocabulary is too large for this dtype"
                )
        self._write(tokens.astype(self.dtype, copy=False).tobytes())
        self._append_index(lengths, np.arange(1, len(lengths) + 1, dtype=np.int64), tokens.size)

    def add_index(self, other_prefix: str) -> None:
        """Append every document of the dataset at ``other_prefix`` (its ``.bin`` is copied, not re-tokenised)."""
        other = IndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(
                f"{other_prefix} stores {other.dtype} tokens but {self.path_prefix} stores {self.dtype}"
            )
        with open(bin_path(other_prefix), "rb") as src:
            while chunk := src.read(READ_BYTES):
                self._write(chunk)
        self._append_index(np.array(other.sizes, dtype=np.int32), other.document_indices[1:], other.num_tokens)

    def _write(self, data: bytes) -> None:
        if self._index is not None:
            raise IndexedDatasetError(f"{self.path_prefix}: documents added after its checksums were taken")
        self._bin.write(data)
        self._bin_hasher.update(data)

    def _index_bytes(self) -> bytes:
        if self._index is None:
            sizes = np.concatenate([np.zeros(0, np.int32), *self._sizes])
            self._index = encode_index(self.dtype, sizes, np.concatenate([np.zeros(1, np.int64), *self._doc_ends]))
        return self._index

    def checksums(self) -> DatasetChecksums:
        """The block digests of the ``.bin`` written and of the ``.idx`` :meth:`finalize` will write (no document
        may be added after this)."""
        index = BlockHasher(self._bin_hasher.block_bytes)
        index.update(self._index_bytes())
        return DatasetChecksums(self._bin_hasher.block_bytes, tuple(self._bin_hasher.finish()), tuple(index.finish()))

    def _append_index(self, sizes: np.ndarray, doc_ends: np.ndarray, num_tokens: int) -> None:
        self._sizes.append(sizes)
        self._doc_ends.append(np.asarray(doc_ends, dtype=np.int64) + self._num_sequences)
        self._num_sequences += len(sizes)
        self.num_tokens += num_tokens

    def finalize(self) -> None:
        """Write the ``.idx`` and rename both files into place (``.bin`` first, ``.idx`` last)."""
        self._bin.close()
        with open(self._tmp_idx, "wb") as handle:
            handle.write(self._index_bytes())
        os.replace(self._tmp_bin, bin_path(self.path_prefix))
        os.replace(self._tmp_idx, idx_path(self.path_prefix))
        logger.info("wrote %s.{bin,idx}: %d documents, %d tokens", self.path_prefix,
                    sum(len(ends) for ends in self._doc_ends), self.num_tokens)

    def abort(self) -> None:
        """Close and delete the temporary files (no-op for files already renamed)."""
        self._bin.close()
        for path in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> IndexedDatasetBuilder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
