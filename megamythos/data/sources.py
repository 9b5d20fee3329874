"""Input documents for preprocessing, read lazily with their provenance (file and line).

Supported inputs: JSON lines (``.jsonl``, ``.json``, ``.ndjson``, ``.jsonlines``: one JSON object per line), the
same compressed as ``.gz`` or ``.zst``, ``.parquet``, text (one document per file, or documents separated by blank
lines; any other suffix), a local HuggingFace ``datasets`` directory (``save_to_disk`` output) and a ``datasets``
hub name or local data directory (``load_dataset``). Suffixes are matched in any case; a file read as text whose
first line is a JSON object is refused (JSON lines under another suffix), as is another compression. Records are
yielded unparsed where possible so that decoding and JSON parsing run in the tokenizer workers; :func:`parse_record`
turns a record into texts or a reason to skip it. Invalid UTF-8 in a text document becomes U+FFFD (the rest of the
document is kept, the bytes replaced are counted: :class:`Replacements`), unless such bytes and control bytes are
too many for text (binary data, UTF-16: :data:`NOT_TEXT_SHARE`); in a JSON line, or a text file read verbatim, it
skips the record. Tokenizer training reads a text file line by line (:func:`iter_training_texts`).
"""
from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import zstandard

from megamythos.errors import UserError

logger = logging.getLogger(__name__)

TEXT, VERBATIM, JSON, ROW = "text", "verbatim", "json", "row"
DEFAULT_JSON_KEY = "text"  # the field of a JSON record (or a dataset column) that holds the text
DEFAULT_HF_SPLIT = "train"  # the split read of a save_to_disk DatasetDict
MISSING_KEY = "missing key"  # the skip reason of an object without the key: the text may be under another one
_ENCODED_REPLACEMENT = "\ufffd".encode()
# A text document whose invalid UTF-8 bytes and CONTROL_BYTES together number at least NOT_TEXT_MIN_BYTES and more
# than NOT_TEXT_SHARE of its bytes is no UTF-8 text (binary data: about half its bytes are invalid; UTF-16 text of
# ASCII characters: half NUL; a .bin of token ids: the high bytes of its ids; Latin-1 prose: a few percent invalid)
# and is skipped; fewer invalid bytes are replaced by U+FFFD.
NOT_TEXT_MIN_BYTES, NOT_TEXT_SHARE = 64, 0.1
# The C0 control bytes (NUL included) that text does not hold: all but tab, the line breaks \n \v \f \r and escape.
# They are valid UTF-8, so decoding alone takes UTF-16 or a file of token ids for text.
CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\v\f\r\x1b")
STREAM_BLOCK_BYTES = 1 << 20  # what iter_training_texts reads of a text file at a time (then up to a line end)


def skip_kind(reason: str) -> str:
    """The kind of a :func:`parse_record` skip reason, what runs count skips by: the reason before its details
    (``malformed JSON (Expecting value)`` -> ``malformed JSON``)."""
    return reason.split(" (")[0]


class InputError(UserError, ValueError):
    """An input path or pattern cannot be read."""


@dataclass(frozen=True)
class RawRecord:
    """One input document before parsing.

    ``kind`` is ``"json"`` (``data`` = the raw bytes of a JSON line), ``"text"`` (``data`` = the raw bytes of a
    text document), ``"verbatim"`` (the same, read byte for byte: no byte may change, so invalid UTF-8 skips it)
    or ``"row"`` (``data`` = an already parsed dict). ``line`` is the 1-based line (or row) where the document
    starts in ``source``.
    """

    source: str
    line: int
    kind: str
    data: Any

    def size(self) -> int:
        """The record's size in bytes: its raw bytes, or for a row the UTF-8 bytes of its string values."""
        if isinstance(self.data, bytes):
            return len(self.data)
        values = self.data.values() if isinstance(self.data, dict) else ()
        return sum(len(v.encode("utf-8", "surrogatepass")) for v in values if isinstance(v, str))


@dataclass(frozen=True)
class ParsedRecord:
    """What :func:`parse_record` made of a record: its ``texts`` (one per key), or ``None`` and the ``reason`` it
    is skipped. ``replaced``: invalid UTF-8 bytes of a text document that became U+FFFD, the first of them on line
    ``replaced_line`` of the source."""

    texts: list[str] | None
    reason: str | None = None
    replaced: int = 0
    replaced_line: int = 0


@dataclass
class Replacements:
    """The invalid UTF-8 bytes replaced by U+FFFD in text documents of a run: ``invalid_bytes`` in ``documents``
    documents, the first at ``first`` (``FILE line L``, in input order)."""

    invalid_bytes: int = 0
    documents: int = 0
    first: str = ""

    def note(self, source: str, parsed: ParsedRecord) -> None:
        """Count the replacements of ``parsed``, a record of ``source``."""
        if parsed.replaced:
            self.add(Replacements(parsed.replaced, 1, f"{source} line {parsed.replaced_line}"))

    def add(self, other: Replacements) -> None:
        """Count ``other``'s replacements after these (its first is the first only if these have none)."""
        self.invalid_bytes += other.invalid_bytes
        self.documents += other.documents
        self.first = self.first or other.first

    def describe(self) -> str:
        """``N invalid UTF-8 bytes replaced by U+FFFD in M text documents (first: FILE line L)``."""
        return (f"{self.invalid_bytes} invalid UTF-8 bytes replaced by U+FFFD in {self.documents} text documents "
                f"(first: {self.first})")


def decode_replacing(data: bytes) -> tuple[str, int, int]:
    """``data`` decoded as UTF-8 with ``errors="replace"`` (each invalid byte sequence becomes U+FFFD, the rest is
    kept), the number of invalid bytes and the offset of the first (-1 if none)."""
    try:
        return data.decode("utf-8"), 0, -1
    except UnicodeDecodeError as err:
        first = err.start
    text = data.decode("utf-8", errors="replace")
    inserted = text.count("\ufffd") - data.count(_ENCODED_REPLACEMENT)  # an encoded U+FFFD in data is valid
    return text, len(data) - (len(text.encode("utf-8")) - 3 * inserted), first


def _control_bytes(data: bytes) -> int:
    """How many of ``data``'s bytes are :data:`CONTROL_BYTES`."""
    return len(data) - len(data.translate(None, CONTROL_BYTES))


def _not_text(invalid: int, controls: int, size: int) -> str | None:
    """The skip reason of a text document of ``size`` bytes, ``invalid`` of them not UTF-8 and ``controls`` of them
    :data:`CONTROL_BYTES`, that is no UTF-8 text (:data:`NOT_TEXT_MIN_BYTES`, :data:`NOT_TEXT_SHARE`); None for
    text."""
    if invalid + controls >= NOT_TEXT_MIN_BYTES and invalid + controls > NOT_TEXT_SHARE * size:
        return (f"non-UTF-8 bytes ({invalid} of {size} invalid, {controls} control bytes: binary, or text in another "
                "encoding such as UTF-16; re-encode it as UTF-8)")
    return None


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files and directories matching each path or glob, in argument order and sorted within a glob; a file that
    two patterns (or a link and its target) both name is read once, with a warning naming it. A path that exists is
    itself, though it holds a glob's characters (``run[1].jsonl``, ``a*b.jsonl``)."""
    paths: list[str] = []
    seen: dict[str, str] = {}
    for pattern in patterns:
        literal = os.path.exists(pattern) or not glob.has_magic(pattern)
        matches = [pattern] if literal else sorted(glob.glob(pattern, recursive=True))
        matches = [m for m in matches if os.path.exists(m)]
        if not matches:
            raise InputError(f"--input {pattern!r} matches no file or directory")
        for match in matches:
            real = os.path.realpath(match)
            if real in seen:
                logger.warning("input %s is %s again: read once", match, seen[real])
                continue
            seen[real] = match
            paths.append(match)
    return paths


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a ``.zst`` file, frame after frame. A file that ends inside a frame (a cut
    download) raises :class:`InputError` naming it, where zstandard's stream reader would end quietly."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path
        self._file = open(path, "rb")
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame: Any = None  # the decompressobj of the frame being read
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._file.read(1 << 20)
            if not chunk:
                if self._frame is not None and not self._frame.eof:
                    raise InputError(f"{self._path} ends inside a zstd frame (a truncated file); re-download or "
                                     "re-compress it")
                return 0
            out = []
            while chunk:
                if self._frame is None or self._frame.eof:
                    self._frame = self._decompressor.decompressobj()
                out.append(self._frame.decompress(chunk))
                chunk = self._frame.unused_data if self._frame.eof else b""
            self._pending = memoryview(b"".join(out))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_binary(path: str) -> BinaryIO:
    """``path`` opened for reading its bytes, decompressed by its suffix (``.gz``, ``.zst``, in any case)."""
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    if path.lower().endswith(".zst"):
        return io.BufferedReader(_ZstdReader(path), 1 << 20)
    return open(path, "rb")


def _json_lines(path: str) -> Iterator[RawRecord]:
    """The non-blank lines of a JSONL file, compressed or not (a UTF-8 byte-order mark before the first is
    dropped); a compressed file that is cut short or not in its suffix's format raises :class:`InputError` naming
    it (the lines before are yielded)."""
    try:
        with _open_binary(path) as handle:
            for number, line in enumerate(handle, start=1):
                if number == 1:
                    line = line.removeprefix(codecs.BOM_UTF8)
                if line.strip():
                    yield RawRecord(path, number, JSON, line)
    except (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError) as err:
        kind = "gzip" if path.lower().endswith(".gz") else "zstd"
        raise InputError(f"{path} is not a complete {kind} file ({err}); re-download or re-compress it, or rename it "
                         "if it holds another format (read by suffix)") from err


def _skip_bom(handle: BinaryIO) -> None:
    """Move ``handle``, a file opened at its start, past a UTF-8 byte-order mark if the file starts with one."""
    if handle.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
        handle.seek(0)


def _unix_line_ends(data: bytes) -> bytes:
    """``data`` with Windows line ends (``\\r\\n``) read as ``\\n``."""
    return data.replace(b"\r\n", b"\n")


def _text_documents(path: str, blank_line_separated: bool, verbatim: bool = False) -> Iterator[RawRecord]:
    """The documents of a text file: the whole file, or its runs of non-blank lines. Windows line ends
    (``\\r\\n``) are read as ``\\n`` and a UTF-8 byte-order mark at the start is dropped, so neither becomes
    tokens; ``verbatim`` keeps every byte (the default corpus: source files as they are; kind ``verbatim``)."""
    kind = VERBATIM if verbatim else TEXT

    def document(data: bytes) -> bytes:
        return data if verbatim else _unix_line_ends(data)

    with open(path, "rb") as handle:
        if not verbatim:
            _skip_bom(handle)
        if not blank_line_separated:
            yield RawRecord(path, 1, kind, document(handle.read()))
            return
        lines: list[bytes] = []
        start = 1
        for number, line in enumerate(handle, start=1):
            if line.strip():
                if not lines:
                    start = number
                lines.append(line)
            elif lines:
                yield RawRecord(path, start, kind, document(b"".join(lines)))
                lines = []
        if lines:
            yield RawRecord(path, start, kind, document(b"".join(lines)))


def _looks_like_json_lines(path: str) -> bool:
    """Whether the first non-blank line of ``path`` (within its first 1 MiB) is a JSON object."""
    with open(path, "rb") as handle:
        for line in handle.read(1 << 20).removeprefix(codecs.BOM_UTF8).splitlines():
            if line.strip():
                try:
                    return isinstance(json.loads(line), dict)
                except (ValueError, UnicodeDecodeError):
                    return False
    return False


def _parquet_rows(path: str, keys: tuple[str, ...]) -> Iterator[RawRecord]:
    """Rows of a Parquet file; a file pyarrow cannot read (not Parquet, truncated, corrupt) raises
    :class:`InputError` naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        parquet = pq.ParquetFile(path)
        columns = [k for k in keys if k in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(columns=columns or None, batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield RawRecord(path, number, ROW, row)
    except pa.ArrowException as err:
        where = f" after row {number}" if number else ""
        raise InputError(f"{path} is not a readable Parquet file{where} ({' '.join(str(err).split())}); re-download "
                         "or re-export it, or rename it if it holds another format (read by suffix)") from err


def _dataset_rows(dataset: Any, source: str) -> Iterator[RawRecord]:
    for number, row in enumerate(dataset, start=1):
        yield RawRecord(source, number, ROW, row)


def _load_from_disk(path: str, split: str) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError as err:  # datasets' word for a folder that save_to_disk did not write
        raise InputError(f"{path} is a folder but not a save_to_disk dataset; to read the files in it, pass a glob "
                         f"such as '{os.path.join(path, '*.jsonl')}'") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InputError(f"{path} has splits {list(loaded)}; choose one with --hf-split")
        others = [name for name in loaded if name != split]
        if others:
            logger.warning("%s: reading its split %r (%d rows) only, not %s; choose another with --hf-split", path,
                           split, len(loaded[split]), ", ".join(f"{n!r} ({len(loaded[n])} rows)" for n in others))
        loaded = loaded[split]
    return loaded


FORMATS = ("txt", "jsonl", "parquet")
JSON_LINES_SUFFIXES = tuple(f"{name}{packed}" for name in (".jsonl", ".json", ".ndjson", ".jsonlines")
                            for packed in ("", ".gz", ".zst"))
COMPRESSED_SUFFIXES = (".gz", ".zst", ".xz", ".bz2", ".lz4", ".zip", ".7z", ".tar")


def input_format(path: str, fmt: str | None = None) -> str:
    """How the input ``path`` is read: ``"dataset"`` (a directory: a ``save_to_disk`` dataset), else ``fmt`` if
    given, else by suffix: ``"jsonl"``, ``"parquet"`` or ``"txt"``. Raises :class:`InputError` for an invalid
    ``fmt``, another compression, JSON lines under a suffix read as text, or a pipe read as anything but JSON
    lines (the only format read once, as a stream)."""
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"input format {fmt!r} is invalid: use one of {FORMATS}")
    name = path.lower()
    if os.path.isdir(path):
        return "dataset"
    if fmt == "jsonl" or (fmt is None and name.endswith(JSON_LINES_SUFFIXES)):
        return "jsonl"
    if not os.path.isfile(path):
        raise InputError(f"--input {path} is a pipe or device, not a file (`<(...)`, /dev/stdin): text and Parquet "
                         "inputs are read more than once (their start, to tell their format), which a stream cannot "
                         "be; write it to a file first, or pass --input-format jsonl if it holds JSON lines (read "
                         "once, as a stream)")
    if fmt == "parquet" or (fmt is None and name.endswith(".parquet")):
        return "parquet"
    if fmt is None and name.endswith(COMPRESSED_SUFFIXES):
        raise InputError(f"{path}: compressed inputs must be JSON lines in .gz or .zst ({name.rsplit('.', 1)[-1]} "
                         "is not read); decompress it, or re-compress it with gzip or zstd and name it .jsonl.gz / "
                         ".jsonl.zst")
    if fmt is None and _looks_like_json_lines(path):
        raise InputError(f"{path} holds JSON lines (its first line is a JSON object) but its suffix reads it as "
                         "text: name it .jsonl, or pass --input-format jsonl (--input-format txt to read it as text)")
    return "txt"


def iter_file_records(path: str, keys: tuple[str, ...], blank_line_separated: bool = False,
                      hf_split: str = DEFAULT_HF_SPLIT, fmt: str | None = None,
                      verbatim: bool = False) -> Iterator[RawRecord]:
    """Records of one input path, read as :func:`input_format` says; ``verbatim``: text files byte for byte
    (:func:`_text_documents`)."""
    read_as = input_format(path, fmt)
    if read_as == "dataset":
        yield from _dataset_rows(_load_from_disk(path, hf_split), path)
    elif read_as == "jsonl":
        yield from _json_lines(path)
    elif read_as == "parquet":
        yield from _parquet_rows(path, keys)
    else:
        yield from _text_documents(path, blank_line_separated, verbatim)


def iter_texts(paths: list[str], key: str = DEFAULT_JSON_KEY, fmt: str | None = None,
               skipped: Counter | None = None, hf_split: str = DEFAULT_HF_SPLIT, verbatim: bool = False,
               replaced: Replacements | None = None) -> Iterator[str]:
    """The text of every well-formed document in ``paths``; bad records are skipped, counted by reason
    (:func:`skip_kind`) in ``skipped`` when given; invalid UTF-8 bytes of text documents replaced by U+FFFD are
    counted in ``replaced`` when given."""
    for path in paths:
        yield from _file_texts(path, key, fmt, skipped, hf_split, verbatim, replaced)


def iter_training_texts(paths: list[str], key: str = DEFAULT_JSON_KEY, fmt: str | None = None,
                        skipped: Counter | None = None, hf_split: str = DEFAULT_HF_SPLIT,
                        replaced: Replacements | None = None) -> Iterator[str | Iterator[str]]:
    """:func:`iter_texts` for tokenizer training, where a document is only ever cut into lines: a text file (one
    document) is given as an iterator of its lines (``str.splitlines(keepends=True)`` of its text), read in blocks
    of whole lines (:data:`STREAM_BLOCK_BYTES`) instead of whole, so a text file of any size takes memory for one
    block. The lines, the skips and the counts are those of the file read whole; the file is read twice: once to
    decide whether it is skipped (:func:`scan_text_file`), once for its lines."""
    for path in paths:
        if input_format(path, fmt) != "txt":
            yield from _file_texts(path, key, fmt, skipped, hf_split, False, replaced)
            continue
        if _tally(scan_text_file(path), path, skipped, replaced):
            yield text_file_lines(path)


def _file_texts(path: str, key: str, fmt: str | None, skipped: Counter | None, hf_split: str, verbatim: bool,
                replaced: Replacements | None) -> Iterator[str]:
    """:func:`iter_texts` of one path."""
    for record in iter_file_records(path, (key,), hf_split=hf_split, fmt=fmt, verbatim=verbatim):
        parsed = parse_record(record, (key,))
        if _tally(parsed, record.source, skipped, replaced):
            yield parsed.texts[0]


def _tally(parsed: ParsedRecord, source: str, skipped: Counter | None, replaced: Replacements | None) -> bool:
    """Whether the document ``parsed`` (of ``source``) is kept; a skipped one is counted in ``skipped`` by
    :func:`skip_kind`, a kept one's U+FFFD replacements in ``replaced`` (each when given)."""
    if parsed.texts is None:
        if skipped is not None:
            skipped[skip_kind(parsed.reason or "")] += 1
        return False
    if replaced is not None:
        replaced.note(source, parsed)
    return True


def _line_blocks(path: str) -> Iterator[tuple[int, bytes]]:
    """The text file ``path`` as consecutive blocks of whole lines, each about :data:`STREAM_BLOCK_BYTES` (a longer
    line is read whole), with the number of its first line; read as :func:`_text_documents` reads a file: a UTF-8
    byte-order mark at the start dropped, ``\\r\\n`` read as ``\\n``. Blocks end after a ``\\n`` (the last at the
    end of the file), so no line break, ``\\r\\n`` or UTF-8 sequence (valid or not) spans two of them."""
    with open(path, "rb") as handle:
        _skip_bom(handle)
        line, pending = 1, []
        while block := handle.read(STREAM_BLOCK_BYTES):
            cut = block.rfind(b"\n") + 1
            if not cut:
                pending.append(block)
                continue
            data = b"".join([*pending, block[:cut]])
            pending = [block[cut:]]
            yield line, _unix_line_ends(data)
            line += data.count(b"\n")
        rest = b"".join(pending)
        if rest:
            yield line, _unix_line_ends(rest)


def scan_text_file(path: str) -> ParsedRecord:
    """What :func:`parse_record` makes of the text file ``path`` as one document, found reading it in blocks:
    the reason it is skipped, or ``texts`` empty (the text itself is :func:`text_file_lines`) with the invalid
    UTF-8 bytes that become U+FFFD and the line of the first."""
    size = replaced = replaced_line = controls = 0
    has_text = False
    for line, data in _line_blocks(path):
        text, invalid, first = decode_replacing(data)
        if invalid and not replaced:
            replaced_line = line + data.count(b"\n", 0, first)
        size, replaced, controls = size + len(data), replaced + invalid, controls + _control_bytes(data)
        has_text = has_text or bool(text.strip())
    if (reason := _not_text(replaced, controls, size)) is not None:
        return ParsedRecord(None, reason)
    if not has_text:
        return ParsedRecord(None, "empty document")
    return ParsedRecord([], None, replaced, replaced_line)


def text_file_lines(path: str) -> Iterator[str]:
    """The lines of the text file ``path`` (``str.splitlines(keepends=True)`` of the text :func:`parse_record`
    makes of it as one document), read in blocks of whole lines."""
    for _, data in _line_blocks(path):
        yield from data.decode("utf-8", errors="replace").splitlines(keepends=True)


def iter_hub_records(name: str, config: str | None, split: str, streaming: bool) -> Iterator[RawRecord]:
    """Rows of a ``datasets.load_dataset`` dataset (a hub name such as ``HuggingFaceFW/fineweb-edu``)."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except OSError:
        raise  # unreachable hub, unreadable file: preprocess names the output and the cause
    except Exception as err:  # whatever datasets raises for a directory or name it cannot read as a dataset
        raise InputError(f"--hf-dataset {name}: datasets.load_dataset cannot read it ({type(err).__name__}: {err}); "
                         "give a hub dataset name or a folder of data files (a save_to_disk directory goes to "
                         "--input)") from err
    yield from _dataset_rows(dataset, f"{name}[{split}]")


def parse_record(record: RawRecord, keys: tuple[str, ...]) -> ParsedRecord:
    """The texts of ``keys`` in ``record``, or no texts and the reason the record must be skipped.

    Reasons: ``non-UTF-8 bytes`` (a JSON line, or a text document read verbatim), ``malformed JSON``, ``missing
    key 'K'`` (the record is an object without ``K``), ``non-string value of key 'K'`` (e.g. ``{"text": 5}``),
    ``empty document``, ``lone surrogate`` (a JSON escape such as ``\\ud800`` that no UTF-8 text can hold). A text
    document keeps its text with invalid UTF-8 replaced by U+FFFD, counted in ``replaced``, unless those bytes,
    with its control bytes, are too many for text (:data:`NOT_TEXT_SHARE`): then it is skipped for ``non-UTF-8 bytes``
    too.
    """
    data = record.data
    replaced = replaced_line = 0
    if record.kind == TEXT:
        data, replaced, first = decode_replacing(data)
        if (reason := _not_text(replaced, _control_bytes(record.data), len(record.data))) is not None:
            return ParsedRecord(None, reason)
        replaced_line = record.line + record.data.count(b"\n", 0, first) if replaced else 0
    elif record.kind in (VERBATIM, JSON):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            return ParsedRecord(None, f"non-UTF-8 bytes ({err.reason} at byte {err.start})")
    escaped_surrogate = record.kind == JSON and (b"\\ud" in record.data or b"\\uD" in record.data)
    if record.kind in (TEXT, VERBATIM):
        if len(keys) != 1:
            raise InputError(f"{record.source}: a text file holds one text per document, so it needs exactly one "
                             f"key (got {keys}); use JSONL or Parquet for several fields")
        texts = [data]
    else:
        if record.kind == JSON:
            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                return ParsedRecord(None, f"malformed JSON ({err.msg})")
            if not isinstance(data, dict):
                return ParsedRecord(None, "malformed JSON (not an object)")
        texts = []
        for key in keys:
            if key not in data:
                return ParsedRecord(None, f"{MISSING_KEY} {key!r}")
            value = data[key]
            if not isinstance(value, str):
                return ParsedRecord(None, f"non-string value of key {key!r} ({type(value).__name__})")
            texts.append(value)
    if any(not t.strip() for t in texts):
        return ParsedRecord(None, "empty document")
    if escaped_surrogate:  # JSON can spell a lone surrogate (\ud800), which no UTF-8 text holds
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                return ParsedRecord(None, f"lone surrogate (\\u{ord(text[err.start]):04x} at character {err.start})")
    return ParsedRecord(texts, None, replaced, replaced_line)
