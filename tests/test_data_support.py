"""Shared fixtures and helpers of the tokenizer/data tests (no tests here)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from megamythos.tokenizer import Tokenizer, TokenizerTrainConfig, train_tokenizer

WORDS = ("def class return import from self lambda yield None True False print data value index token model "
         "naïve café über straße ünïcödé 東京 数据 привет мир αβγ λ → ≥ ✓").split()


def synthetic_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` varied multi-line documents: prose, code-like indentation, digits, non-Latin scripts."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = []
        for _ in range(rng.randint(1, 6)):
            indent = " " * (4 * rng.randint(0, 2))
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
            lines.append(f"{indent}{words} = {rng.randint(0, 10**6)}")
        docs.append(f"# doc {i}\n" + "\n".join(lines) + "\n")
    return docs


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A 400-piece BPE model trained on synthetic text (about a second)."""
    prefix = tmp_path_factory.mktemp("tok") / "tiny"
    return train_tokenizer(synthetic_documents(400, seed=1),
                           TokenizerTrainConfig(vocab_size=400, model_prefix=str(prefix), num_threads=1))


def write_jsonl(path: Path, docs: list[str], key: str = "text") -> Path:
    path.write_text("".join(json.dumps({key: d}) + "\n" for d in docs), encoding="utf-8")
    return path
