"""Print statistics of an indexed dataset, validate its files and decode a few documents.

Usage: ``python data_prep/inspect_dataset.py PREFIX [--samples 3] [--tokenizer-model M]``; exits 1 if the
dataset is invalid (``INVALID: ...``), 2 for another bad input (``error: ...``, e.g. a missing tokenizer).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megamythos.data.indexed_dataset import IndexedDatasetError  # noqa: E402
from megamythos.data.inspection import inspect_dataset  # noqa: E402
from megamythos.errors import ArgumentParser, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("prefix", help="dataset prefix (without .bin/.idx)")
    parser.add_argument("--samples", type=int, default=3, help="documents to print")
    parser.add_argument("--tokenizer-model", help="decode with this model instead of the recorded one")
    parser.add_argument("--max-sample-tokens", type=int, default=200, help="tokens printed per document")
    args = parser.parse_args(argv)

    def inspect() -> int:
        try:
            report = inspect_dataset(args.prefix, args.samples, args.tokenizer_model, args.max_sample_tokens)
        except IndexedDatasetError as err:  # the verdict this tool exists for, not a usage error
            print(f"INVALID: {err}", file=sys.stderr)
            sys.exit(1)
        samples = report.pop("samples")
        print(json.dumps(report, indent=2, default=str))
        print("valid: sizes, pointers and document indices agree with the .bin size")
        for index, text in samples.items():
            print(f"--- document {index} (first {args.max_sample_tokens} tokens) ---")
            print(text)
        return 0

    return run_cli(inspect, log_format=None)


if __name__ == "__main__":
    sys.exit(main())
