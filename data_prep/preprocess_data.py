"""Tokenise documents into Megatron-compatible ``{output_prefix}_{key}_document.{bin,idx}`` datasets.

Example:
    python data_prep/preprocess_data.py --input 'corpus/*.jsonl.zst' --output-prefix data/corpus \\
        --tokenizer-model tok.model --workers 2 --append-eod
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megamythos.data.preprocess import PreprocessConfig, preprocess  # noqa: E402
from megamythos.errors import TIMED_CLI_LOG_FORMAT, ArgumentParser, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_argument_group("input")
    src.add_argument("--input", nargs="+", default=[],
                     help=".txt .jsonl .jsonl.gz .jsonl.zst .parquet files, globs, or save_to_disk directories")
    src.add_argument("--json-keys", nargs="+", default=["text"], help="JSON fields holding the text")
    src.add_argument("--txt-blank-line-documents", action="store_true",
                     help="in .txt inputs, documents are separated by blank lines (default: one per file)")
    src.add_argument("--hf-dataset", help="datasets.load_dataset name or local data directory")
    src.add_argument("--hf-config", help="configuration name of --hf-dataset")
    src.add_argument("--hf-split", default="train", help="split of --hf-dataset")
    src.add_argument("--streaming", action="store_true", help="stream --hf-dataset instead of downloading")
    out = parser.add_argument_group("output")
    out.add_argument("--output-prefix", required=True, help="writes PREFIX_text_document.{bin,idx} (+ .json record)")
    out.add_argument("--tokenizer-model", required=True, help="SentencePiece .model")
    out.add_argument("--append-eod", action="store_true", help="end every document with the eos id")
    out.add_argument("--overwrite", action="store_true", help="replace an existing dataset made by another tokenizer")
    run = parser.add_argument_group("run")
    run.add_argument("--workers", type=int, default=1, help="tokenizer processes per partition")
    run.add_argument("--partitions", type=int, default=1, help="input file groups processed concurrently")
    run.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    run.add_argument("--log-interval", type=int, default=10_000, help="documents between rate reports")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def run() -> int:
        stats = preprocess(PreprocessConfig(
            inputs=args.input, output_prefix=args.output_prefix, tokenizer_model=args.tokenizer_model,
            json_keys=tuple(args.json_keys), workers=args.workers, partitions=args.partitions,
            append_eod=args.append_eod, strict=args.strict, blank_line_documents=args.txt_blank_line_documents,
            hf_dataset=args.hf_dataset, hf_config=args.hf_config, hf_split=args.hf_split, streaming=args.streaming,
            log_interval=args.log_interval, overwrite=args.overwrite, progress=not args.no_progress,
        ))
        print(f"wrote {', '.join(stats.outputs)}")
        print(stats.summary())
        return 0

    return run_cli(run, log_format=TIMED_CLI_LOG_FORMAT)


if __name__ == "__main__":
    sys.exit(main())
