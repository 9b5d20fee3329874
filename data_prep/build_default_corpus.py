"""Build the default corpus (tokenizer + dataset) from the local Python standard library sources.

Usage: ``python data_prep/build_default_corpus.py --out data/default [--vocab-size 8192] [--max-files N]``
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megamythos.data.default_corpus import ensure_default_dataset  # noqa: E402
from megamythos.errors import TIMED_CLI_LOG_FORMAT, ArgumentParser, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary (the tiny preset: 8192)")
    parser.add_argument("--max-files", type=int, default=None, help="use only the first N files (sorted)")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: min(2, cores))")
    args = parser.parse_args(argv)

    def build() -> int:
        start = time.perf_counter()
        prefix, model = ensure_default_dataset(args.out, args.vocab_size, args.max_files, args.workers)
        print(f"data prefix: {prefix}\ntokenizer:   {model}\nseconds:     {time.perf_counter() - start:.1f}")
        return 0

    return run_cli(build, log_format=TIMED_CLI_LOG_FORMAT)


if __name__ == "__main__":
    sys.exit(main())
