"""Local data of the lm-evaluation-harness tasks in ``lm_eval_tasks/``, from the validation documents of a dataset.

    python -m megamythos.hf.lm_eval_data --data-path data/default/stdlib_v8192_text_document

The validation documents are those of Megatron's document split (``--split``, the trainer's default unless the
run used another), decoded with the dataset's own tokenizer (its ``.tokenizer.model`` copy) and cut to at most
``--max-chars`` characters at a line end. Two JSON-lines files:

* ``heldout.jsonl``: ``{"text", "n_tokens"}`` per document (``n_tokens``: its length in the dataset's tokenizer,
  which the Hugging Face export reproduces id for id) for ``megamythos_heldout`` (rolling log-likelihood;
  ``token_perplexity`` is exp(total NLL / total tokens), what ``megamythos.inference.evaluate`` reports).
* ``continuation.jsonl``: ``{"context", "choices", "gold"}`` for ``megamythos_continuation``: ``--context-lines``
  lines of a document, then its true next ``--choice-lines`` lines among three snippets of the same length from
  other documents (seeded, so the file is reproducible).
"""
from __future__ import annotations

import json
import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from megamythos.data.atomic import writable_directory
from megamythos.data.gpt_dataset import parse_split, split_bounds
from megamythos.data.indexed_dataset import IndexedDataset
from megamythos.data.metadata import read_dataset_metadata
from megamythos.data.pretraining import DEFAULT_SPLIT, DataError, DataSources, resolve_data
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import ArgumentParser, UserError, checked_by, number, path_text, run_cli
from megamythos.runtime.locations import WORKSPACE

logger = logging.getLogger(__name__)

N_CHOICES = 4
# Where lm_eval_tasks/utils.py reads its data by default: next to it in the checkout (relative when the package is
# installed without one).
TASKS_DATA_DIR = WORKSPACE / "lm_eval_tasks" / "data"


def validation_texts(prefix: str, split: str, max_chars: int) -> tuple[list[str], Tokenizer]:
    """The validation documents of dataset ``prefix`` as text (trailing eos dropped, cut at a line end before
    ``max_chars``; empty ones skipped) and the dataset's tokenizer."""
    DataSources([prefix]).check_found()  # not "no metadata record" for a dataset that is not there
    meta = read_dataset_metadata(prefix)
    if meta is None:
        raise DataError(f"dataset {prefix!r} has no metadata record (.json): its tokenizer is unknown")
    resolve_data([prefix], int(meta["vocab_size"]))
    tokenizer = Tokenizer(meta["tokenizer_model"])
    indexed = IndexedDataset(prefix)
    _, start, end, _ = split_bounds(parse_split(split), len(indexed))
    logger.info("validation documents of split %s: %d to %d of %d (the run's own --split gives its held-out ones)",
                split, start, end - 1, len(indexed))
    texts = []
    for i in range(start, end):
        ids = indexed[i].tolist()
        text = tokenizer.decode(ids[:-1] if ids and ids[-1] == tokenizer.eos_id else ids)
        if len(text) > max_chars:
            text = text[: text.rfind("\n", 0, max_chars) + 1 or max_chars]
        if text.strip():
            texts.append(text)
    if not texts:
        raise DataError(f"the {split} split of {prefix!r} has no validation document ({len(indexed)} documents)")
    return texts, tokenizer


class LMEvalDataError(UserError, ValueError):
    """The validation documents cannot give the task files asked for."""


def continuation_items(texts: Sequence[str], context_lines: int, choice_lines: int,
                       seed: int) -> list[dict[str, object]]:
    """One 4-way item per document with enough lines: context, the true continuation and three distinct
    snippets of other documents (several from one when there are few); ``gold`` is the index of the true one."""
    rng = random.Random(seed)
    lines = [t.splitlines(keepends=True) for t in texts]

    def snippet(doc: int, at: int) -> str:
        return "".join(lines[doc][at:at + choice_lines])

    span = context_lines + choice_lines
    sources = [d for d, doc in enumerate(lines) if len(doc) >= choice_lines]
    items = []
    for doc in (d for d in sources if len(lines[d]) >= span):
        at = rng.randrange(len(lines[doc]) - span + 1)
        true = snippet(doc, at + context_lines)
        others = [d for d in sources if d != doc]
        choices = [true]
        for _ in range(16 * N_CHOICES if others else 0):  # distinct snippets, several per document if few
            other = rng.choice(others)
            candidate = snippet(other, rng.randrange(len(lines[other]) - choice_lines + 1))
            if candidate.strip() and candidate not in choices:
                choices.append(candidate)
            if len(choices) == N_CHOICES:
                break
        if len(choices) < N_CHOICES or not true.strip():
            continue
        rng.shuffle(choices)
        items.append({"context": "".join(lines[doc][at:at + context_lines]), "choices": choices,
                      "gold": choices.index(true)})
    return items


def write_jsonl(path: Path, rows: Sequence[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m megamythos.hf.lm_eval_data", description=__doc__)
    p.add_argument("--data-path", type=path_text, required=True,
                   help="dataset prefix (PREFIX_text_document, with its .json record)")
    p.add_argument("--split", default=DEFAULT_SPLIT, type=checked_by(parse_split),
                   help=f"train,valid,test weights: the training run's --split (default {DEFAULT_SPLIT}, the "
                        "trainer's); another split's validation documents may be documents the run trained on")
    p.add_argument("--out", type=path_text, default=str(TASKS_DATA_DIR),
                   help="directory of the two .jsonl files (default: the data directory the tasks in "
                        "lm_eval_tasks/ read)")
    positive_int = number(int, 1)  # an argparse type: a value below 1 is one error line naming the flag
    p.add_argument("--max-docs", type=positive_int, default=64, help="at most this many validation documents")
    p.add_argument("--max-chars", type=positive_int, default=4000, help="cut each document at a line end before this")
    p.add_argument("--context-lines", type=positive_int, default=8, help="lines of context of a multiple-choice item")
    p.add_argument("--choice-lines", type=positive_int, default=2,
                   help="lines of each of the 4 candidate continuations")
    p.add_argument("--seed", type=number(int, 0), default=1234, help="seed of the multiple-choice snippets and order")
    args = p.parse_args(argv)

    def run() -> int:
        out = Path(args.out)
        writable_directory(out, "--out")
        texts, tokenizer = validation_texts(args.data_path, args.split, args.max_chars)
        texts = texts[: args.max_docs]
        items = continuation_items(texts, args.context_lines, args.choice_lines, args.seed)
        if not items:  # lm-eval fails on an empty task file with an IndexError
            raise LMEvalDataError(
                f"none of the {len(texts)} validation documents gives a continuation item (--context-lines "
                f"{args.context_lines} + --choice-lines {args.choice_lines} lines, and 3 other documents to draw "
                "wrong choices from); raise --max-docs or --max-chars, or lower --context-lines/--choice-lines")
        write_jsonl(out / "heldout.jsonl", [{"text": t, "n_tokens": len(ids)}
                                             for t, ids in zip(texts, tokenizer.encode(texts))])
        write_jsonl(out / "continuation.jsonl", items)
        print(json.dumps({"heldout": len(texts), "continuation": len(items), "out": str(out)}))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
