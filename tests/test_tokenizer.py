"""Tokenizer training and the batch encode/decode wrapper."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from megamythos.data.cli import train_tokenizer_main as train_main
from megamythos.data.tokenizer import (
    Tokenizer,
    TokenizerError,
    TokenizerTrainConfig,
    line_chunks,
    reservoir_sample,
    train_tokenizer,
)
from tests.helpers import synthetic_documents


def test_special_ids_and_vocab(tiny_tokenizer: Tokenizer) -> None:
    tok = tiny_tokenizer
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 400


def test_round_trip_keeps_whitespace_and_unseen_characters(tiny_tokenizer: Tokenizer) -> None:
    texts = ["    def f(x):\n\treturn  x\r\n\n", " leading space", "emoji 😀 and 漢字 never seen", "\x00ctrl"]
    ids = tiny_tokenizer.encode(texts)
    assert tiny_tokenizer.decode_batch(ids) == texts
    assert all(0 <= i < tiny_tokenizer.vocab_size for doc in ids for i in doc)
    assert tiny_tokenizer.unk_id not in {i for doc in ids for i in doc}  # byte fallback, never unk


def test_batch_encode_equals_single(tiny_tokenizer: Tokenizer) -> None:
    docs = synthetic_documents(20, seed=7)
    assert tiny_tokenizer.encode(docs) == [tiny_tokenizer.encode_one(d) for d in docs]
    assert tiny_tokenizer.encode(docs, num_threads=2) == tiny_tokenizer.encode(docs)


def test_fingerprint_is_sha256_of_model(tiny_tokenizer: Tokenizer) -> None:
    with open(tiny_tokenizer.model_path, "rb") as handle:
        assert tiny_tokenizer.fingerprint == hashlib.sha256(handle.read()).hexdigest()
    assert Tokenizer(tiny_tokenizer.model_path).fingerprint == tiny_tokenizer.fingerprint


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(TokenizerError, match="does not exist.*train_tokenizer.py"):
        Tokenizer(tmp_path / "nope.model")


@pytest.mark.parametrize("field,value", [("model_type", "wordpiece"), ("vocab_size", 100), ("max_sentences", 0)])
def test_invalid_train_config(field: str, value, tmp_path) -> None:
    kwargs = {"vocab_size": 400, "model_prefix": str(tmp_path / "m"), field: value}
    with pytest.raises(TokenizerError, match=field):
        TokenizerTrainConfig(**kwargs)


def test_line_chunks_respect_byte_limit_and_lose_nothing() -> None:
    text = "short\n" + "é" * 50 + "\n" + "x\n" * 30
    chunks = list(line_chunks(text, 16))
    assert "".join(chunks) == text
    assert all(len(c.encode()) <= 16 for c in chunks)


def test_reservoir_sample_is_bounded_and_uniformish() -> None:
    sample, seen = reservoir_sample((str(i) for i in range(10_000)), 100, seed=0)
    assert seen == 10_000 and len(sample) == 100 and len(set(sample)) == 100
    assert 2_000 < sum(int(s) for s in sample) / 100 < 8_000  # not just the head of the stream


def test_cli_trains_from_jsonl_with_sentence_cap(tmp_path, capsys, caplog) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"body": d}) + "\n" for d in synthetic_documents(200)))
    with caplog.at_level("INFO", logger="megamythos.data.tokenizer"):
        assert train_main(["--input", str(tmp_path / "*.jsonl"), "--vocab-size", "320", "--model-prefix",
                           str(tmp_path / "cli.model"), "--json-key", "body", "--max-sentences", "150",
                           "--num-threads", "1"]) == 0
    tok = Tokenizer(tmp_path / "cli.model")  # a prefix ending in .model is read without it (not cli.model.model)
    assert tok.vocab_size == 320 and not (tmp_path / "cli.model.model").exists()
    assert "vocab_size=320" in capsys.readouterr().out
    # a sample of 150 of the 200 documents (each short enough to be one chunk), not all of them
    assert "training bpe tokenizer (vocab 320) on 150 of 200 chunks" in caplog.text


TRICKY = ["", " ", "   ", "a", " a", "a ", "a  b   c", "\tx = 1\n    return  y\n\n  ", "x\u2581 y", "\u2581\u2581 a",
          "caf\u00e9  \u6f22\u5b57 \U0001F600  ok", "line\n \n  \n", "  leading and trailing  "]


def test_segment_cache_equals_whole_text_encoding(tiny_tokenizer: Tokenizer) -> None:
    assert tiny_tokenizer.segment_cache_enabled
    fresh = Tokenizer(tiny_tokenizer.model_path)
    assert fresh.encode([]) == [] and [a.tolist() for a in fresh.encode_flat([])] == [[], []]
    texts = TRICKY + synthetic_documents(50, seed=11)
    expected = tiny_tokenizer._sp.Encode(texts, out_type=int)
    assert tiny_tokenizer.encode(texts) == expected
    assert tiny_tokenizer.encode(list(reversed(texts))) == list(reversed(expected))  # warm cache
    tokens, lengths = tiny_tokenizer.encode_flat(texts, append_id=tiny_tokenizer.eos_id)
    assert lengths.tolist() == [len(e) + 1 for e in expected]
    assert tokens.tolist() == [i for e in expected for i in e + [tiny_tokenizer.eos_id]]


def test_segment_cache_is_off_for_models_that_merge_across_spaces(tmp_path) -> None:
    spm.SentencePieceTrainer.Train(sentence_iterator=iter(synthetic_documents(200)), model_prefix=str(tmp_path / "d"),
                                   vocab_size=300, split_by_whitespace=False, minloglevel=2)
    tok = Tokenizer(tmp_path / "d.model")  # default normalisation, dummy prefix, unigram: not provably local
    assert not tok.segment_cache_enabled
    assert tok.encode(TRICKY) == tok._sp.Encode(TRICKY, out_type=int)


@pytest.mark.parametrize("model_type,threads", [("bpe", (1, 2)), ("unigram", (1, 1))])
def test_retraining_gives_the_same_model_bytes_in_any_prefix(tmp_path, model_type: str,
                                                              threads: tuple[int, int]) -> None:
    """Same documents and options, another prefix (and for BPE another thread count): the same fingerprint, so
    data tokenised with a rebuilt tokenizer (the default corpus on another machine) still matches checkpoints."""
    docs = synthetic_documents(150, seed=3)
    first, second = (train_tokenizer(docs, TokenizerTrainConfig(vocab_size=330, model_prefix=str(tmp_path / name),
                                                                 model_type=model_type, num_threads=n))
                     for name, n in (("a/tok", threads[0]), ("elsewhere/other", threads[1])))
    assert first.fingerprint == second.fingerprint
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((tmp_path / "a" / "tok.model").read_bytes())
    assert str(tmp_path) not in str(proto) and "tmp" not in proto.trainer_spec.model_prefix


def test_a_killed_training_leaves_no_model_and_the_next_one_removes_its_files(tmp_path, monkeypatch) -> None:
    """SentencePiece writes PREFIX.tmp.<host>.<pid>.model in place, so a SIGKILL during its write left that file
    for good (found 2026-12-06: the stale-temporary cleanup matches PREFIX.tmp.<host>.<pid> only). It now writes
    into a folder of that name, which the next training of the prefix removes once its process is gone."""
    import socket

    import megamythos.data.tokenizer as tokenizer_module

    prefix = tmp_path / "tok"
    stale = tmp_path / f"tok.tmp.{socket.gethostname()}.{2**22 + 1}"  # above pid_max: a process that is gone
    stale.mkdir()
    (stale / "tokenizer.model").write_bytes(b"half a model")
    written = []
    train = tokenizer_module._train_sentencepiece

    def watched(sample, config, model_prefix):
        written.append(model_prefix)
        train(sample, config, model_prefix)

    monkeypatch.setattr(tokenizer_module, "_train_sentencepiece", watched)
    train_tokenizer(synthetic_documents(150, seed=3), TokenizerTrainConfig(vocab_size=330, model_prefix=str(prefix)))
    assert written == [f"{prefix}.tmp.{socket.gethostname()}.{os.getpid()}/tokenizer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.model", "tok.vocab"]


def test_ctrl_c_ends_a_training_at_once(tmp_path, monkeypatch) -> None:
    """SentencePiece trains in C++ without returning to Python, so Ctrl-C (Python's KeyboardInterrupt) waited for
    it: a 7-s training on 28 MB went on and wrote its model, exit 0 (found 2026-12-06). While it trains, SIGINT has
    its default action (the process ends at once: 16 ms measured); Python's handler is back afterwards."""
    import signal

    import megamythos.data.tokenizer as tokenizer_module

    handlers = []
    train = tokenizer_module._train_sentencepiece

    def watched(sample, config, model_prefix):
        handlers.append(signal.getsignal(signal.SIGINT))
        train(sample, config, model_prefix)

    monkeypatch.setattr(tokenizer_module, "_train_sentencepiece", watched)
    before = signal.getsignal(signal.SIGINT)
    train_tokenizer(synthetic_documents(150, seed=3), TokenizerTrainConfig(vocab_size=330,
                                                                          model_prefix=str(tmp_path / "tok")))
    assert handlers == [signal.SIG_DFL] and signal.getsignal(signal.SIGINT) is before
