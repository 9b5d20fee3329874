"""Local datasets and metrics of the megamythos lm-evaluation-harness tasks (no network: JSON lines on disk).

The data directory is ``data/`` next to this file, written by ``python -m megamythos.hf.lm_eval_data``; another
one is chosen with ``--metadata '{"data_dir": "DIR"}'`` (lm_eval) or ``metadata={"data_dir": DIR}``
(``lm_eval.simple_evaluate``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "data"


def _load(name: str, data_dir: str | None) -> dict[str, datasets.Dataset]:
    path = Path(data_dir or DEFAULT_DATA_DIR) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write it with `python -m megamythos.hf.lm_eval_data "
                                f"--data-path PREFIX --out {path.parent}`")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


def heldout(data_dir: str | None = None, **_: Any) -> dict[str, datasets.Dataset]:
    """Held-out documents: {"text", "n_tokens"}."""
    return _load("heldout.jsonl", data_dir)


def continuation(data_dir: str | None = None, **_: Any) -> dict[str, datasets.Dataset]:
    """4-way continuation items: {"context", "choices", "gold"}."""
    return _load("continuation.jsonl", data_dir)


def process_heldout(doc: dict[str, Any], results: list[float]) -> dict[str, tuple[float, int]]:
    """(log-likelihood, weight) pairs: per token (the model's tokenizer), word and UTF-8 byte."""
    (loglikelihood,) = results
    text = doc["text"]
    words, nbytes = len(re.split(r"\s+", text)), len(text.encode("utf-8"))
    return {"token_perplexity": (loglikelihood, doc["n_tokens"]), "word_perplexity": (loglikelihood, words),
            "byte_perplexity": (loglikelihood, nbytes), "bits_per_byte": (loglikelihood, nbytes)}
