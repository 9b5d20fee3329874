"""SentencePiece tokenizer: training with a streaming sentence sample, and a batch encode/decode wrapper.

Every model trained here uses byte fallback (no text is ever mapped to ``unk``), identity normalisation and
no dummy prefix or whitespace folding, so ``decode(encode(text)) == text`` for any valid Unicode text,
including source code whose indentation and newlines matter, except one character: ``▁`` (U+2581), SentencePiece's
own space symbol, which comes back as a space. Special ids are fixed:

    pad = 0, bos = 1, eos = 2, unk = 3

Encoding fast path: for models where no piece contains a non-space symbol followed by the space symbol ``▁``
(true of every BPE model trained here: SentencePiece never merges across the start of a word), BPE merges
never cross the point before a space that follows a non-space character. Texts are therefore cut at those
points and each distinct segment is encoded once and cached; the result equals a whole-text ``Encode``
exactly (tested), while repetitive text such as source code encodes faster (bench/README.md, "Data pipeline").

Training input is streamed: documents are cut into chunks of whole lines (at most ``max_chunk_bytes``) and a
uniform reservoir sample of ``max_sentences`` chunks is kept (at most ``max_sentences x max_chunk_bytes`` bytes of
text), so a corpus of any size trains in bounded memory; ``train_tokenizer.py`` reads a text file line by line.
The ``.model`` written records no path and no thread count (:data:`UNRECORDED_TRAINER_FIELDS`), so the same
documents and options give the same bytes, hence the same fingerprint, wherever and into whatever prefix they
are trained (BPE with any thread count; unigram's scores depend on its thread count in their last digits).
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from megamythos.data.atomic import describe_os_error, remove_stale_temps, temp_name
from megamythos.data.manifest import file_sha256
from megamythos.errors import UserError

logger = logging.getLogger(__name__)

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MODEL_TYPES = ("bpe", "unigram")
SPACE_SYMBOL = "\u2581"
# Segments: a run of spaces and the non-space characters after it. A text containing the space symbol itself is
# kept whole (a boundary between a literal "\u2581" and a space would not be safe).
_SEGMENT = re.compile(r" *[^ ]*")
_BPE = 2  # TrainerSpec.ModelType.BPE
MAX_CACHED_TOKENS = 50_000_000
# SentencePiece's error when the text yields fewer pieces than asked ("... Please set it to a value <= 3731.")
_VOCAB_TOO_HIGH = re.compile(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)")
# ... and when the text has more distinct characters than pieces asked ("... required_chars. 300 vs 350.")
_VOCAB_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)")
MIN_VOCAB_SIZE = 300  # 4 specials + 256 byte-fallback pieces, with room for learned pieces
# TrainerSpec fields SentencePiece copies into the .model that say where and how fast it trained, not what it
# learned: the output prefix (a temporary name with host and process id) and the trainer's thread count.
UNRECORDED_TRAINER_FIELDS = ("model_prefix", "num_threads")


class TokenizerError(UserError, ValueError):
    """The tokenizer model is missing, unreadable, or a training option is invalid."""


class NoTextError(TokenizerError):
    """The documents given to :func:`train_tokenizer` hold no non-empty text."""


class _SegmentCache:
    """Ids of every distinct segment seen, back to back in one growable int32 buffer.

    Emptied after a call that leaves more than ``MAX_CACHED_TOKENS`` tokens cached, so memory stays bounded.
    """

    def __init__(self, sp: spm.SentencePieceProcessor) -> None:
        self._sp = sp
        self._clear()

    def _clear(self) -> None:
        self._index: dict[str, int] = {}
        self._buffer = np.zeros(1 << 16, dtype=np.int32)
        self._used = 0
        self._starts: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []

    def _add(self, segments: list[str]) -> None:
        ids = self._sp.Encode(segments, out_type=int)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        total = int(lengths.sum())
        if self._used + total > self._buffer.size:
            grown = np.zeros(max(2 * self._buffer.size, self._used + total), dtype=np.int32)
            grown[:self._used] = self._buffer[:self._used]
            self._buffer = grown
        self._buffer[self._used:self._used + total] = np.fromiter(chain.from_iterable(ids), np.int32, total)
        self._starts.append(self._used + np.cumsum(lengths) - lengths)
        self._lengths.append(lengths)
        self._used += total
        self._index.update(zip(segments, range(len(self._index), len(self._index) + len(segments))))

    def encode(self, docs: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated ids of every segment of every doc, and the int32 token count of each doc."""
        segments = list(chain.from_iterable(docs))
        if not segments:
            return np.zeros(0, dtype=np.int32), np.zeros(len(docs), dtype=np.int32)
        new = [s for s in set(segments) if s not in self._index]
        if new:
            self._add(new)
            self._starts = [np.concatenate(self._starts)]
            self._lengths = [np.concatenate(self._lengths)]
        seg_ids = np.fromiter(map(self._index.__getitem__, segments), dtype=np.int64, count=len(segments))
        lengths = self._lengths[0][seg_ids]
        ends = np.cumsum(lengths)
        first_token = np.concatenate([[0], ends])
        gather = np.repeat(self._starts[0][seg_ids] - first_token[:-1], lengths) + np.arange(first_token[-1])
        tokens = self._buffer[gather]
        doc_tokens = first_token[np.cumsum([0] + [len(d) for d in docs])]
        if self._used > MAX_CACHED_TOKENS:
            self._clear()
        return tokens, np.diff(doc_tokens).astype(np.int32)


def check_model_file(model_path: str | os.PathLike) -> None:
    """Raise :class:`TokenizerError` unless ``model_path`` is a file (a flag naming a tokenizer checks it with
    ``errors.checked_by``, so that the line names the flag)."""
    if not Path(model_path).is_file():
        raise TokenizerError(f"tokenizer model {str(model_path)!r} does not exist; train one with "
                             "`python tokenizer/train_tokenizer.py --input ... --model-prefix PREFIX` (it writes "
                             "PREFIX.model)")


class Tokenizer:
    """A trained SentencePiece model.

    Attributes:
        model_path: absolute path of the ``.model`` file.
        vocab_size: number of ids; every id is in ``[0, vocab_size)``.
        pad_id, bos_id, eos_id, unk_id: the special ids (0, 1, 2, 3 for models trained here).
        fingerprint: sha256 of the ``.model`` bytes; equal fingerprints mean identical tokenisation (and a model
            trained here again from the same documents and options has the same fingerprint).
        segment_cache_enabled: whether the exact segment-cached fast path is used (see the module docstring).

    Not thread-safe (the segment cache is shared state); give each thread or process its own instance.
    """

    def __init__(self, model_path: str | os.PathLike) -> None:
        check_model_file(model_path)
        self.model_path = str(Path(model_path).resolve())
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(self.model_path)
        except (OSError, RuntimeError) as err:
            raise TokenizerError(f"{self.model_path!r} is not a readable SentencePiece model: {err}") from err
        self.vocab_size: int = self._sp.GetPieceSize()
        self.pad_id: int = self._sp.pad_id()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        self.unk_id: int = self._sp.unk_id()
        self.fingerprint: str = file_sha256(self.model_path)
        self.segment_cache_enabled: bool = self._segments_are_independent()
        self._cache = _SegmentCache(self._sp)

    def _segments_are_independent(self) -> bool:
        """True if encoding segment by segment (see module docstring) provably equals whole-text encoding."""
        proto = sentencepiece_model_pb2.ModelProto()
        with open(self.model_path, "rb") as handle:
            proto.ParseFromString(handle.read())
        norm, trainer = proto.normalizer_spec, proto.trainer_spec
        if (trainer.model_type != _BPE or trainer.treat_whitespace_as_suffix or norm.add_dummy_prefix
                or norm.remove_extra_whitespaces or not norm.escape_whitespaces or norm.precompiled_charsmap
                or norm.name != "identity"):
            return False
        return not any(a != SPACE_SYMBOL and b == SPACE_SYMBOL
                       for piece in proto.pieces for a, b in zip(piece.piece, piece.piece[1:]))

    def encode_flat(self, texts: list[str], append_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated, int32 ``(sum(lengths),)``, and int32 ``lengths`` ``(len(texts),)``.

        ``append_id`` (e.g. ``eos_id``) is appended to every text and counted in its length.
        """
        if self.segment_cache_enabled:
            tokens, lengths = self._cache.encode(
                [[t] if SPACE_SYMBOL in t else _SEGMENT.findall(t) for t in texts])
        else:
            ids = self._sp.Encode(list(texts), out_type=int)
            lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
            tokens = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
        if append_id is not None:
            tokens = np.insert(tokens, np.cumsum(lengths, dtype=np.int64), append_id)
            lengths = lengths + 1
        return tokens, lengths

    def encode(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of each text (no bos/eos added); ``num_threads`` applies when the segment cache is off."""
        if not self.segment_cache_enabled:
            return self._sp.Encode(list(texts), out_type=int, num_threads=num_threads)
        tokens, lengths = self.encode_flat(texts)
        bounds = np.cumsum(lengths, dtype=np.int64)
        return [tokens[end - n:end].tolist() for n, end in zip(lengths, bounds)]

    def encode_one(self, text: str) -> list[int]:
        """Token ids of one text (no bos/eos added)."""
        return self.encode([text])[0]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of one id sequence; the control ids (pad/bos/eos) decode to nothing, unk to " \u2047 "."""
        return self._sp.Decode([int(i) for i in ids])

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        """Text of each id sequence."""
        return [self.decode(ids) for ids in batch]

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


@dataclass
class TokenizerTrainConfig:
    """Options of :func:`train_tokenizer`.

    ``max_sentences`` bounds the reservoir sample of training chunks; ``max_chunk_bytes`` bounds one chunk
    (SentencePiece drops longer sentences). ``num_threads`` is SentencePiece's trainer thread count. An existing
    ``{model_prefix}.model`` is replaced only with ``overwrite``.
    """

    vocab_size: int
    model_prefix: str
    model_type: str = "bpe"
    max_sentences: int = 200_000
    max_chunk_bytes: int = 2048
    character_coverage: float = 0.9995
    num_threads: int = 2
    seed: int = 1234
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise TokenizerError(f"model_type={self.model_type!r} is invalid: use one of {MODEL_TYPES}")
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise TokenizerError(f"vocab_size={self.vocab_size} is invalid: "
                                 f"need >= {MIN_VOCAB_SIZE} (4 specials + 256 bytes + pieces)")
        if not Path(self.model_prefix).name or self.model_prefix.endswith(os.sep):
            raise TokenizerError(f"--model-prefix {self.model_prefix} names a folder; give a file prefix such as "
                                 f"{os.path.join(self.model_prefix, 'tokenizer')}")
        for name in ("max_sentences", "max_chunk_bytes", "num_threads"):
            if getattr(self, name) < 1:
                raise TokenizerError(f"{name}={getattr(self, name)} is invalid: must be >= 1")
        if not 0.0 < self.character_coverage <= 1.0:
            raise TokenizerError(f"character_coverage={self.character_coverage} is invalid: must be in (0, 1]")


def line_chunks(text: str | Iterator[str], max_chunk_bytes: int) -> Iterator[str]:
    """Cut ``text`` into runs of whole lines (newlines kept) of at most ``max_chunk_bytes`` UTF-8 bytes.

    ``text`` is a string, or an iterator of its lines as ``str.splitlines(keepends=True)`` gives them (a file too
    large to hold whole, :func:`megamythos.data.sources.iter_training_texts`): the chunks are the same. A single
    line longer than the limit is cut at the character whose UTF-8 encoding passes the limit.
    """
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True) if isinstance(text, str) else text:
        nbytes = len(line.encode("utf-8"))
        if chunk and size + nbytes > max_chunk_bytes:
            yield "".join(chunk)
            chunk, size = [], 0
        while nbytes > max_chunk_bytes:
            head = line.encode("utf-8")[:max_chunk_bytes].decode("utf-8", errors="ignore")
            yield head
            line = line[len(head):]
            nbytes = len(line.encode("utf-8"))
        chunk.append(line)
        size += nbytes
    if chunk and size:
        yield "".join(chunk)


def reservoir_sample(items: Iterable[str], k: int, seed: int) -> tuple[list[str], int]:
    """Uniform sample of at most ``k`` items from a stream (Algorithm R) and the stream length."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for seen, item in enumerate(items, start=1):
        if len(sample) < k:
            sample.append(item)
        else:
            j = rng.randrange(seen)
            if j < k:
                sample[j] = item
    return sample, seen


def train_tokenizer(documents: Iterable[str | Iterator[str]], config: TokenizerTrainConfig) -> Tokenizer:
    """Train a SentencePiece model on a stream of documents and return it (written to ``PREFIX.model``/``.vocab``).

    A document is a string or an iterator of its lines (:func:`line_chunks`). The documents are consumed once; at
    most ``config.max_sentences`` line chunks are held in memory, besides the document being read. A text that
    yields fewer than ``config.vocab_size`` pieces raises :class:`TokenizerError` naming the size it reached.
    """
    out_dir = Path(config.model_prefix).parent
    model_path = config.model_prefix + ".model"
    folders = [path for path in (model_path, config.model_prefix + ".vocab") if os.path.isdir(path)]
    if folders:  # before reading any input: a folder cannot be replaced by the model, with --overwrite or without
        raise TokenizerError(f"--model-prefix {config.model_prefix}: {folders[0]} is a folder, not a file the "
                             "tokenizer can be written to; choose another --model-prefix")
    if os.path.exists(model_path) and not config.overwrite:
        raise TokenizerError(f"{model_path} exists; pass --overwrite to replace it (datasets tokenised with it keep "
                             "their own copy), or choose another --model-prefix")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TokenizerError(f"--model-prefix {config.model_prefix}: cannot create {out_dir} ({err.strerror})") from err
    if not os.access(out_dir, os.W_OK):
        raise TokenizerError(f"--model-prefix {config.model_prefix}: {out_dir} is not writable")
    chunks = (c for doc in documents for c in line_chunks(doc, config.max_chunk_bytes) if c.strip())
    sample, total = reservoir_sample(chunks, config.max_sentences, config.seed)
    if not sample:
        raise NoTextError("no non-empty text to train the tokenizer on")
    logger.info("training %s tokenizer (vocab %d) on %d of %d chunks", config.model_type, config.vocab_size,
                len(sample), total)
    # SentencePiece writes in place, so it writes into a folder of this process (PREFIX.tmp.<host>.<pid>): a kill
    # leaves no half model at PREFIX, and the next training removes the folder of a process that is gone
    remove_stale_temps([config.model_prefix])
    staging = temp_name(config.model_prefix)
    staged = os.path.join(staging, "tokenizer")
    try:
        os.mkdir(staging)
        with ctrl_c_ends_the_process():
            _train_sentencepiece(sample, config, staged)
        _drop_unrecorded_fields(staged + ".model")
        os.replace(staged + ".vocab", config.model_prefix + ".vocab")
        os.replace(staged + ".model", model_path)
    except RuntimeError as err:  # SentencePiece's own error; its vocabulary checks name the size that would do
        raise _vocabulary_error(err, config.vocab_size) from err
    except OSError as err:  # a read-only file system, a full disk: after the sample was read, maybe for an hour
        raise TokenizerError(f"--model-prefix {config.model_prefix}: the tokenizer cannot be written "
                             f"({describe_os_error(err)}); choose another --model-prefix, or free space") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Tokenizer(model_path)


@contextmanager
def ctrl_c_ends_the_process() -> Iterator[None]:
    """Inside, Ctrl-C (SIGINT) ends the process at once, its default action. SentencePiece's trainer runs in C++
    without returning to Python, so Python's own handler (KeyboardInterrupt) waits until it has finished, up to an
    hour on a large sample; what it staged is removed by the next training of the prefix. Off the main thread,
    where no handler can be set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _drop_unrecorded_fields(model_path: str) -> None:
    """Rewrite the SentencePiece model at ``model_path`` without :data:`UNRECORDED_TRAINER_FIELDS`: its bytes (and
    fingerprint) then depend only on what was learned, not on the prefix, host, process or thread count."""
    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as handle:
        proto.ParseFromString(handle.read())
    for field in UNRECORDED_TRAINER_FIELDS:
        proto.trainer_spec.ClearField(field)
    with open(model_path, "wb") as handle:
        handle.write(proto.SerializeToString())


def _vocabulary_error(err: RuntimeError, vocab_size: int) -> Exception:
    """SentencePiece's error ``err`` as one line naming ``--vocab-size`` and the size to pass, where it is a
    vocabulary size the text cannot give; else ``err`` itself."""
    if (low := _VOCAB_TOO_LOW.search(str(err))) is not None:
        return TokenizerError(f"--vocab-size {vocab_size} is fewer pieces than this text needs: it has characters "
                              f"that need {low.group(1)} pieces with the specials; pass --vocab-size {low.group(1)} "
                              "or more")
    if (high := _VOCAB_TOO_HIGH.search(str(err))) is None:
        return err
    reached = int(high.group(1))
    if reached < MIN_VOCAB_SIZE:
        return TokenizerError(f"--vocab-size {vocab_size}: this text yields only {reached} pieces, fewer than the "
                              f"{MIN_VOCAB_SIZE} a tokenizer needs; train on more text")
    return TokenizerError(f"--vocab-size {vocab_size} is more than this text yields: SentencePiece reached {reached} "
                          f"pieces; pass --vocab-size {reached} or less, or train on more text")


def _train_sentencepiece(sample: list[str], config: TokenizerTrainConfig, model_prefix: str) -> None:
    """SentencePiece's trainer on ``sample`` with this module's fixed options (see the module docstring), writing
    ``model_prefix.{model,vocab}``. The vocabulary limit is hard, as SentencePiece's default: a text too small
    for ``config.vocab_size`` pieces fails instead of writing a smaller model."""
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(sample),
        model_prefix=model_prefix,
        model_type=config.model_type,
        vocab_size=config.vocab_size,
        character_coverage=config.character_coverage,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=config.max_chunk_bytes,
        input_sentence_size=0,
        num_threads=config.num_threads,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        hard_vocab_limit=True,
        minloglevel=2,
    )
