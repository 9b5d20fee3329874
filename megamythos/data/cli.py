"""The command lines of the data layer: tokenizer training, preprocessing, inspection, merging and the default
corpus. ``data_prep/*.py`` and ``tokenizer/train_tokenizer.py`` run these, and so do the console scripts
``megamythos-train-tokenizer``, ``megamythos-preprocess``, ``megamythos-inspect-dataset``,
``megamythos-merge-datasets`` and ``megamythos-build-default-corpus`` (setup.py).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence

from megamythos.data.atomic import writable_directory, writable_parent
from megamythos.data.checksums import DatasetCorruptError
from megamythos.data.default_corpus import DEFAULT_VOCAB_SIZE, ensure_default_dataset
from megamythos.data.indexed_dataset import IndexedDatasetError, bin_path, dataset_not_found, idx_path
from megamythos.data.inspection import (
    MAX_SAMPLE_TOKENS,
    SAMPLES,
    add_checksums,
    inspect_dataset,
    record_without_checksums,
)
from megamythos.data.merge import merge_datasets
from megamythos.data.preprocess import PreprocessConfig, preprocess
from megamythos.data.sources import (
    DEFAULT_HF_SPLIT,
    DEFAULT_JSON_KEY,
    FORMATS,
    MISSING_KEY,
    Replacements,
    expand_inputs,
    iter_training_texts,
)
from megamythos.data.tokenizer import (
    MIN_VOCAB_SIZE,
    MODEL_TYPES,
    NoTextError,
    TokenizerTrainConfig,
    check_model_file,
    train_tokenizer,
)
from megamythos.errors import (
    TIMED_CLI_LOG_FORMAT,
    ArgumentParser,
    checked_by,
    expanded_path,
    given_text,
    number,
    path_text,
    run_cli,
)

# the types of text flags where '' would be read as the flag left out (or as a key no record has)
JSON_KEY = given_text("a JSON key")
SPLIT_NAME = given_text("a split name")


def train_tokenizer_main(argv: Sequence[str] | None = None) -> int:
    """Train a SentencePiece tokenizer (byte fallback, fixed pad/bos/eos/unk ids) on a streamed sample of files.

    Example:
        python tokenizer/train_tokenizer.py --input 'corpus/*.jsonl' --vocab-size 32000 --model-prefix out/tok
    """
    parser = ArgumentParser(prog="python tokenizer/train_tokenizer.py", description=train_tokenizer_main.__doc__)
    parser.add_argument("--input", nargs="+", action="extend", required=True, type=expanded_path,
                        help="files or globs (--input a --input b reads both)")
    parser.add_argument("--vocab-size", type=number(int, MIN_VOCAB_SIZE), required=True,
                        help=f"pieces, >= {MIN_VOCAB_SIZE}")
    parser.add_argument("--model-prefix", required=True, type=expanded_path,
                        help="writes PREFIX.model and PREFIX.vocab (a PREFIX ending in .model is read without it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PREFIX.model")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default=TokenizerTrainConfig.model_type,
                        help="SentencePiece model type")
    parser.add_argument("--input-format", choices=FORMATS, default=None, help="default: by file suffix")
    parser.add_argument("--json-key", type=JSON_KEY, default=DEFAULT_JSON_KEY, help="JSON field holding the text")
    parser.add_argument("--hf-split", type=SPLIT_NAME, default=DEFAULT_HF_SPLIT,
                        help="split of a save_to_disk DatasetDict in --input")
    parser.add_argument("--max-sentences", type=number(int, 1), default=TokenizerTrainConfig.max_sentences,
                        help="size of the uniform sample of line chunks trained on (each at most 2 KiB of whole "
                             "lines: the sample's memory)")
    parser.add_argument("--num-threads", type=number(int, 1), default=len(os.sched_getaffinity(0)),
                        help="trainer threads (default: the CPUs this process may use)")
    args = parser.parse_args(argv)

    def train() -> int:
        config = TokenizerTrainConfig(vocab_size=args.vocab_size, model_prefix=args.model_prefix.removesuffix(".model"),
                                      model_type=args.model_type, max_sentences=args.max_sentences,
                                      num_threads=args.num_threads, overwrite=args.overwrite)
        skipped: Counter = Counter()
        replaced = Replacements()
        try:
            tokenizer = train_tokenizer(iter_training_texts(expand_inputs(args.input), args.json_key,
                                                            args.input_format, skipped, args.hf_split, replaced),
                                        config)
        except NoTextError as err:
            hint = (f"; if the text is under another key, pass --json-key KEY (now {args.json_key!r})"
                    if any(r.startswith(MISSING_KEY) for r in skipped) else "")
            raise NoTextError(f"{' '.join(args.input)} gave no text to train on "
                              f"({_reasons(skipped) or 'no records'}){hint}") from err
        if skipped:
            logging.getLogger(__name__).warning("skipped %d bad records (%s)", sum(skipped.values()),
                                                _reasons(skipped))
        if replaced.invalid_bytes:
            logging.getLogger(__name__).warning("%s: the tokenizer saw U+FFFD in their place", replaced.describe())
        print(f"wrote {tokenizer.model_path}: vocab_size={tokenizer.vocab_size} pad={tokenizer.pad_id} "
              f"bos={tokenizer.bos_id} eos={tokenizer.eos_id} unk={tokenizer.unk_id} sha256={tokenizer.fingerprint}")
        return 0

    return run_cli(train, log_format=TIMED_CLI_LOG_FORMAT)


def _reasons(skipped: Counter) -> str:
    """``N reason, ...`` of the records skipped, by reason."""
    return ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))


def preprocess_main(argv: Sequence[str] | None = None) -> int:
    """Tokenise documents into Megatron-compatible ``{output_prefix}_{key}_document.{bin,idx}`` datasets.

    Example:
        python data_prep/preprocess_data.py --input 'corpus/*.jsonl.zst' --output-prefix data/corpus \\
            --tokenizer-model tok.model --workers 2 --append-eod
    """
    parser = ArgumentParser(prog="python data_prep/preprocess_data.py", description=preprocess_main.__doc__)
    src = parser.add_argument_group("input")
    src.add_argument("--input", nargs="+", action="extend", default=[], type=expanded_path,
                     help=".jsonl (.json .ndjson .jsonlines; .gz .zst), .parquet or text files, globs, or save_to_disk "
                          "directories (--input a --input b reads both)")
    src.add_argument("--input-format", choices=FORMATS, default=None,
                     help="read every --input file as this format (default: by file suffix)")
    src.add_argument("--json-keys", nargs="+", type=JSON_KEY, default=list(PreprocessConfig.json_keys),
                     help="JSON fields holding the text")
    src.add_argument("--txt-blank-line-documents", action="store_true",
                     help="in text inputs (any suffix but JSON lines' and Parquet's), documents are separated by "
                          "blank lines (default: one per file)")
    src.add_argument("--hf-dataset", type=given_text("a dataset name or directory"),
                     help="datasets.load_dataset name or local data directory")
    src.add_argument("--hf-config", type=given_text("a configuration name"), help="configuration name of --hf-dataset")
    src.add_argument("--hf-split", type=SPLIT_NAME, default=PreprocessConfig.hf_split,
                     help="split of --hf-dataset, or of a save_to_disk DatasetDict")
    src.add_argument("--streaming", action="store_true", help="stream --hf-dataset instead of downloading")
    out = parser.add_argument_group("output")
    out.add_argument("--output-prefix", required=True, type=expanded_path,
                     help="writes PREFIX_text_document.{bin,idx} (+ .json record)")
    out.add_argument("--tokenizer-model", type=checked_by(check_model_file, path=True), required=True,
                     help="SentencePiece .model")
    out.add_argument("--append-eod", action="store_true", help="end every document with the eos id")
    out.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --output-prefix")
    run = parser.add_argument_group("run")
    run.add_argument("--workers", type=number(int, 1), default=PreprocessConfig.workers,
                     help="tokenizer processes per partition")
    run.add_argument("--partitions", type=number(int, 1), default=PreprocessConfig.partitions,
                     help="input file groups processed concurrently")
    run.add_argument("--strict", action="store_true",
                     help="stop at the first bad record instead of skipping it, and at invalid UTF-8 in a text file "
                          "instead of replacing it by U+FFFD")
    run.add_argument("--log-interval", type=number(int, 1), default=PreprocessConfig.log_interval,
                     help="documents between rate reports")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def tokenise() -> int:
        stats = preprocess(PreprocessConfig(
            inputs=args.input, output_prefix=args.output_prefix, tokenizer_model=args.tokenizer_model,
            json_keys=tuple(args.json_keys), workers=args.workers, partitions=args.partitions,
            append_eod=args.append_eod, strict=args.strict, blank_line_documents=args.txt_blank_line_documents,
            hf_dataset=args.hf_dataset, hf_config=args.hf_config, hf_split=args.hf_split,
            input_format=args.input_format, streaming=args.streaming,
            log_interval=args.log_interval, overwrite=args.overwrite, progress=not args.no_progress,
        ))
        print(f"wrote {', '.join(stats.outputs)}")
        print(stats.summary())
        return 0

    return run_cli(tokenise, log_format=TIMED_CLI_LOG_FORMAT)


def inspect_main(argv: Sequence[str] | None = None) -> int:
    """Print statistics of an indexed dataset, validate its files and decode a few documents.

    Usage: ``python data_prep/inspect_dataset.py PREFIX [--samples 3] [--tokenizer-model M] [--add-checksums]``;
    exits 1 if the dataset is invalid (``INVALID: ...``), 2 for another bad input (``error: ...``, e.g. a prefix
    with neither file, a missing tokenizer, or ``--add-checksums`` of a dataset that records them already).
    """
    parser = ArgumentParser(prog="python data_prep/inspect_dataset.py", description=inspect_main.__doc__)
    parser.add_argument("prefix", type=expanded_path, help="dataset prefix (without .bin/.idx)")
    parser.add_argument("--samples", type=number(int, 0), default=SAMPLES, help="sequences (documents) to print")
    parser.add_argument("--tokenizer-model", type=checked_by(check_model_file, path=True),
                        help="decode with this model: for a dataset without a record (made by Megatron); with a "
                             "record, it must be the recorded tokenizer (by sha256)")
    parser.add_argument("--max-sample-tokens", type=number(int, 1), default=MAX_SAMPLE_TOKENS,
                        help="tokens printed per document")
    parser.add_argument("--add-checksums", action="store_true",
                        help="a dataset built before checksums were recorded (its report says `none recorded`), or "
                             "whose recorded ones are malformed: once it is found valid (and matching the well-formed "
                             "digests malformed ones still hold), record them in its .json for its files as they are "
                             "now, so that runs and this tool verify every byte from now on")
    args = parser.parse_args(argv)
    if not any(os.path.exists(path) for path in (bin_path(args.prefix), idx_path(args.prefix))):
        parser.error(dataset_not_found(args.prefix))  # bad input; INVALID (exit 1) is for a dataset that exists

    def inspect() -> int:
        if args.add_checksums:
            record_without_checksums(args.prefix)  # refused before the whole dataset is read
        try:
            report = inspect_dataset(args.prefix, args.samples, args.tokenizer_model, args.max_sample_tokens,
                                     ignore_checksums=args.add_checksums)  # none, or malformed ones it replaces
            sums = add_checksums(args.prefix) if args.add_checksums else None  # once the data matches what they hold
        except (IndexedDatasetError, DatasetCorruptError) as err:  # the verdict this tool exists for, not bad usage
            print(f"INVALID: {err}", file=sys.stderr)
            sys.exit(1)
        samples = report.pop("samples")
        print(json.dumps(report, indent=2, default=str))
        print(f"valid: sizes, pointers and document indices agree with the .bin size; checksums {report['checksums']}")
        for index, text in samples.items():
            print(f"--- sequence {index} (first {args.max_sample_tokens} tokens) ---")
            print(text)
        if sums is not None:
            print(f"recorded checksums of {len(sums.bin)} + {len(sums.idx)} blocks in {args.prefix}.json")
        return 0

    return run_cli(inspect, log_format=None)


def merge_main(argv: Sequence[str] | None = None) -> int:
    """Concatenate indexed datasets: ``python data_prep/merge_datasets.py --input A B C --output-prefix OUT``."""
    parser = ArgumentParser(prog="python data_prep/merge_datasets.py", description=merge_main.__doc__)
    parser.add_argument("--input", nargs="+", action="extend", required=True, type=expanded_path,
                        help="dataset prefixes (without .bin/.idx), in order (--input a --input b merges both)")
    parser.add_argument("--output-prefix", required=True, type=expanded_path,
                        help="writes PREFIX.{bin,idx} (+ .json record)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --output-prefix")
    args = parser.parse_args(argv)

    def merge() -> int:
        writable_parent(args.output_prefix, "--output-prefix")
        merged = merge_datasets(args.input, args.output_prefix, args.overwrite)
        print(f"wrote {args.output_prefix}: {len(merged)} sequences, {merged.num_tokens} tokens")
        return 0

    return run_cli(merge)


def default_corpus_main(argv: Sequence[str] | None = None) -> int:
    """Build the default corpus (tokenizer + dataset) from the local Python standard library sources.

    Usage: ``python data_prep/build_default_corpus.py --out data/default [--vocab-size 8192] [--max-files N]``

    A corpus there is reused, never built again in place: one built by another Python (another stdlib) stays for
    the runs trained on it, and this Python's is built beside it (``stdlib_v8192_KEY``); the prefix is printed.
    """
    parser = ArgumentParser(prog="python data_prep/build_default_corpus.py", description=default_corpus_main.__doc__)
    parser.add_argument("--out", type=path_text, required=True, help="output directory")
    parser.add_argument("--vocab-size", type=number(int, MIN_VOCAB_SIZE), default=DEFAULT_VOCAB_SIZE,
                        help=f"tokenizer vocabulary (the tiny preset: {DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--max-files", type=number(int, 1), default=None, help="use only the first N files (sorted)")
    parser.add_argument("--workers", type=number(int, 1), default=None,
                        help="tokenizer processes (default: min(2, cores))")
    args = parser.parse_args(argv)

    def build() -> int:
        start = time.perf_counter()
        writable_directory(args.out, "--out")
        prefix, model = ensure_default_dataset(args.out, args.vocab_size, args.max_files, args.workers)
        print(f"data prefix: {prefix}\ntokenizer:   {model}\nseconds:     {time.perf_counter() - start:.1f}")
        return 0

    return run_cli(build, log_format=TIMED_CLI_LOG_FORMAT)
