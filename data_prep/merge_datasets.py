"""Concatenate indexed datasets: ``python data_prep/merge_datasets.py --input A B C --output-prefix OUT``."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megamythos.data.merge import merge_datasets  # noqa: E402
from megamythos.errors import ArgumentParser, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="dataset prefixes (without .bin/.idx), in order")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX_text_document.{bin,idx}")
    args = parser.parse_args(argv)

    def merge() -> int:
        merged = merge_datasets(args.input, args.output_prefix)
        print(f"wrote {args.output_prefix}: {len(merged)} sequences, {merged.num_tokens} tokens")
        return 0

    return run_cli(merge)


if __name__ == "__main__":
    sys.exit(main())
